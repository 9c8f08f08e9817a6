"""The portable SQL both store backends share: statements, migrations, row shaping.

Statements are written once with ``$n`` placeholders (PostgreSQL's spelling);
SQLite accepts the same numbered parameters spelled ``?n`` and :func:`sqlite_sql`
converts. The migration loader reads ``migrations/NNN_name.sql``; the row
helpers turn rows into the dicts the admin API returns; :func:`merge_lead` is
the one lead-merge rule. Pure functions and constants: no connection, no state,
so ``engine.store.sqlite`` and ``engine.store.postgres`` both import it and
neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3  # complete_statement: the statement splitter (stdlib, no connection)
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.messages import RecordLead

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "load_migrations",
    "split_statements",
    "Sql",
    "sqlite_sql",
    "dumps",
    "profile_json",
    "check_limit",
    "call_dict",
    "turn_dict",
    "lead_dict",
    "message_dict",
    "chat_dict",
    "business_dict",
    "merge_lead",
    "new_lead_id",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# ------------------------------------------------------------ migrations


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


_MIGRATION_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The numbered ``NNN_name.sql`` files of ``directory``, in version order.

    Raises ``ValueError`` on a misnamed ``.sql`` file or a repeated number, so a
    typo fails at start-up rather than silently skipping a migration.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file {path} must be named NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"migration number {version} used twice: {found[version].name} and {path.name}")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements (``;`` inside strings and comments is safe)."""
    statements: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            text = "\n".join(line for line in buf.splitlines() if not line.strip().startswith("--")).strip()
            if text.strip(";").strip():
                statements.append(text)
            buf = ""
    return statements


# ------------------------------------------------------------ portable SQL


class Sql:
    """Statements that run unchanged on PostgreSQL and (through :func:`sqlite_sql`) SQLite."""

    MIGRATIONS_TABLE = (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
    )
    APPLIED = "SELECT version FROM schema_migrations ORDER BY version"
    MARK_APPLIED = "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)"

    # A call row may be created by whichever of start/end arrives first; each
    # fills its own columns once, so a replay of either is a no-op (0 rows).
    CALL_STARTED = """
        INSERT INTO calls (call_sid, stream_sid, business_id, from_number, to_number, started_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (call_sid) DO UPDATE SET
            stream_sid = excluded.stream_sid, business_id = excluded.business_id,
            from_number = excluded.from_number, to_number = excluded.to_number,
            started_at = excluded.started_at
        WHERE calls.started_at IS NULL"""
    # The first end wins, except that a real end replaces 'lost' (written by
    # crash repair, engine.repair, for a process it took for dead).
    CALL_ENDED = """
        INSERT INTO calls (call_sid, ended_at, end_reason, summary)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (call_sid) DO UPDATE SET
            ended_at = CASE WHEN calls.ended_at IS NULL
                              OR (calls.end_reason = 'lost' AND excluded.end_reason NOT IN ('', 'lost'))
                            THEN excluded.ended_at ELSE calls.ended_at END,
            end_reason = CASE WHEN calls.ended_at IS NULL
                                OR (calls.end_reason = 'lost' AND excluded.end_reason NOT IN ('', 'lost'))
                              THEN excluded.end_reason ELSE calls.end_reason END,
            summary = CASE WHEN excluded.summary <> '' THEN excluded.summary ELSE calls.summary END
        WHERE calls.ended_at IS NULL
           OR (calls.end_reason = 'lost' AND excluded.end_reason NOT IN ('', 'lost'))
           OR (excluded.summary <> '' AND COALESCE(calls.summary, '') <> excluded.summary)"""
    TURN = """
        INSERT INTO turns (call_sid, turn_index, transcript, reply, interrupted, stamps, dtmf)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (call_sid, turn_index) DO NOTHING"""
    LEAD_INSERT = """
        INSERT INTO leads (id, business_id, source, ref, fields, complete, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
        ON CONFLICT (source, ref) DO NOTHING"""
    LEAD_SELECT = "SELECT business_id, fields, complete FROM leads WHERE source = $1 AND ref = $2"
    LEAD_UPDATE = """
        UPDATE leads SET business_id = $3, fields = $4, complete = $5, updated_at = $6
        WHERE source = $1 AND ref = $2"""
    MESSAGE = """
        INSERT INTO whatsapp_messages (message_id, chat_id, business_id, direction, text, at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (message_id) DO NOTHING"""
    CHAT = """
        INSERT INTO chats (chat_id, business_id, last_at) VALUES ($1, $2, $3)
        ON CONFLICT (chat_id) DO UPDATE SET
            business_id = excluded.business_id,
            last_at = CASE WHEN excluded.last_at > chats.last_at THEN excluded.last_at ELSE chats.last_at END"""
    BUSINESS = """
        INSERT INTO businesses (id, name, profile, updated_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (id) DO UPDATE SET
            name = excluded.name, profile = excluded.profile, updated_at = excluded.updated_at"""

    CALL_COLUMNS = (
        "call_sid, stream_sid, business_id, from_number, to_number, started_at, ended_at, end_reason, summary"
    )
    LEAD_COLUMNS = "id, business_id, source, ref, fields, complete, created_at, updated_at"
    MESSAGE_COLUMNS = "message_id, chat_id, business_id, direction, text, at"

    LIST_CALLS = f"SELECT {CALL_COLUMNS} FROM calls ORDER BY COALESCE(started_at, ended_at, 0) DESC, call_sid LIMIT $1"
    GET_CALL = f"SELECT {CALL_COLUMNS} FROM calls WHERE call_sid = $1"
    GET_TURNS = (
        "SELECT turn_index, transcript, reply, interrupted, stamps, dtmf FROM turns"
        " WHERE call_sid = $1 ORDER BY turn_index"
    )
    CALL_LEADS = f"SELECT {LEAD_COLUMNS} FROM leads WHERE source = 'call' AND ref = $1 ORDER BY created_at, id"
    LIST_LEADS = f"SELECT {LEAD_COLUMNS} FROM leads ORDER BY updated_at DESC, id LIMIT $1"
    CHAT_HISTORY = f"""
        SELECT {MESSAGE_COLUMNS} FROM (
            SELECT {MESSAGE_COLUMNS} FROM whatsapp_messages WHERE chat_id = $1
            ORDER BY at DESC, message_id DESC LIMIT $2
        ) AS recent ORDER BY at, message_id"""
    HAS_MESSAGE = "SELECT 1 FROM whatsapp_messages WHERE message_id = $1"
    LIST_CHATS = "SELECT chat_id, business_id, last_at FROM chats ORDER BY last_at DESC, chat_id LIMIT $1"
    GET_BUSINESS = "SELECT id, name, profile, updated_at FROM businesses WHERE id = $1"


_DOLLAR_PARAM = re.compile(r"\$(\d+)")


def sqlite_sql(statement: str) -> str:
    """``$1`` -> ``?1`` (SQLite's numbered parameter); nothing else changes."""
    return _DOLLAR_PARAM.sub(r"?\1", statement)


# ------------------------------------------------------ shared row helpers


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def profile_json(business_id: Any, name: Any, profile: Any) -> str:
    """Validate ``upsert_business`` arguments and return the profile as JSON text."""
    if not isinstance(business_id, str) or not business_id:
        raise ValueError("business_id must be a non-empty str")
    if not isinstance(name, str):
        raise ValueError("business name must be a str")
    if not isinstance(profile, Mapping):
        raise ValueError(f"business profile must be a mapping, got {type(profile).__name__}")
    try:
        return json.dumps(dict(profile), ensure_ascii=False, default=_jsonable, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"business profile is not serializable: {exc}") from None


def check_limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    return limit


def call_dict(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in Sql.CALL_COLUMNS.split(", ")}


def turn_dict(row: Any) -> dict[str, Any]:
    return {
        "turn_index": row["turn_index"],
        "transcript": row["transcript"],
        "reply": row["reply"],
        "interrupted": bool(row["interrupted"]),
        "stamps": json.loads(row["stamps"]),
        "dtmf": row["dtmf"],
    }


def lead_dict(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in Sql.LEAD_COLUMNS.split(", ")}
    out["fields"] = json.loads(out["fields"])
    out["complete"] = bool(out["complete"])
    return out


def message_dict(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in Sql.MESSAGE_COLUMNS.split(", ")}


def chat_dict(row: Any) -> dict[str, Any]:
    return {"chat_id": row["chat_id"], "business_id": row["business_id"], "last_at": row["last_at"]}


def business_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "profile": json.loads(row["profile"]),
        "updated_at": row["updated_at"],
    }


def merge_lead(old_fields: str, old_complete: Any, record: RecordLead) -> tuple[str, bool, bool]:
    """A later ``RecordLead`` for the same (source, ref) refines the earlier one.

    Field values from the new record replace old ones key by key; keys it does
    not mention are kept. ``complete`` is sticky: once a lead is complete, a
    later partial update does not reopen it. Returns (fields JSON, complete,
    changed); ``changed`` is False for a replay, which ``apply`` reports as a
    duplicate.
    """
    fields = json.loads(old_fields) if old_fields else {}
    merged = {**fields, **dict(record.fields)}
    complete = bool(old_complete) or record.complete
    changed = merged != fields or complete != bool(old_complete)
    return dumps(merged), complete, changed


def new_lead_id() -> str:
    return uuid.uuid4().hex
