"""The SQLite store (the embedded default), and the portable SQL both backends share.

One file, ``var/callengine.db`` by default, in WAL mode so readers never block
the writer. One connection guarded by one lock serves every thread: the store's
traffic is a few writes per call turn and the odd admin read, far below what a
single connection handles, and one connection makes each ``apply`` a plain
``BEGIN IMMEDIATE ... COMMIT`` with no cross-connection surprises. (Rejected: a
connection per thread — more file handles and WAL readers for no measurable
gain at this load, and thread-local connections leak when pykka threads die.)

Durability: ``synchronous=NORMAL`` (in WAL mode a commit survives a process
crash, and a power loss may lose the last few commits) for everything except
``RecordChatMessage``, which switches that one transaction to ``FULL`` so the
WAL is fsynced before ``apply`` returns: an inbound WhatsApp message is
acknowledged to its sender only after that.

The portable part (statements written once with ``$n`` placeholders, the
migration loader, row shaping, the lead merge) lives here because SQLite is the
reference backend; ``engine.store.postgres`` imports it. SQLite accepts the
same numbered parameters spelled ``?n``; :func:`sqlite_sql` converts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from engine.messages import (
    RecordCallEnded,
    RecordCallStarted,
    RecordChatMessage,
    RecordLead,
    RecordTurn,
)
from engine.store.base import Record, Store, StoreUnavailable
from engine.store.journal import check_record

__all__ = ["SqliteStore", "DEFAULT_PATH", "Migration", "load_migrations", "Sql", "sqlite_sql"]

log = logging.getLogger("callengine.store.sqlite")

DEFAULT_PATH = Path("var") / "callengine.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"

T = TypeVar("T")

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


# ------------------------------------------------------------ the store

_UNAVAILABLE_MARKERS = ("locked", "busy", "unable to open", "disk i/o", "disk is full", "readonly", "read-only")


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        msg = str(exc).lower()
        return any(marker in msg for marker in _UNAVAILABLE_MARKERS)
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed" in str(exc).lower()
    return False


class SqliteStore(Store):
    """The ``Store`` on one SQLite file (see the module doc for the design).

    Every method runs on the calling thread, blocking, under one lock: safe
    from any number of threads (pykka actors, ``trio.to_thread`` workers),
    never to be called on the trio thread. ``StoreUnavailable`` is raised when
    the file cannot be opened or written (locked beyond ``timeout``, disk full
    or failing) and after ``close``.
    """

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, timeout: float = 5.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._closed = False
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self._set_wal(timeout)
            if self.path != ":memory:" and str(mode).lower() != "wal":
                log.warning("sqlite WAL mode unavailable", extra={"path": self.path, "journal_mode": mode})
            self._conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc

    def _set_wal(self, timeout: float) -> str:
        """``PRAGMA journal_mode = WAL``, retried while another process holds the file.

        Why a retry loop: SQLite answers a journal-mode change on a busy file
        with "database is locked" at once, without its busy handler, so two
        worker processes (``--workers 2``) opening a new database together would
        fail to start. Retries for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                return self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- plumbing -------------------------------------------------------------

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("store is closed")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                if _is_unavailable(exc):
                    raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc
                raise

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        def run(conn: sqlite3.Connection) -> T:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

        return self._locked(run)

    @staticmethod
    def _exec(conn: sqlite3.Connection, statement: str, *args: Any) -> sqlite3.Cursor:
        return conn.execute(sqlite_sql(statement), args)

    # -- Store ----------------------------------------------------------------

    def migrate(self) -> None:
        migrations = load_migrations()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(Sql.MIGRATIONS_TABLE)
            applied = {row[0] for row in conn.execute(Sql.APPLIED)}
            for migration in migrations:
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                self._exec(conn, Sql.MARK_APPLIED, migration.version, migration.name, time.time())
                log.info("migration applied", extra={"backend": "sqlite", "migration": migration.name})

        self._transaction(run)

    def applied_migrations(self) -> list[int]:
        """Versions recorded in ``schema_migrations`` (empty before ``migrate``)."""

        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute(Sql.MIGRATIONS_TABLE)
            return [row[0] for row in conn.execute(Sql.APPLIED)]

        return self._locked(run)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error as exc:  # closing must not fail shutdown
                log.warning("sqlite close failed", extra={"path": self.path, "error": str(exc)})

    def apply(self, record: Record) -> bool:
        check_record(record)
        if isinstance(record, RecordTurn):
            return self._transaction(
                lambda c: (
                    self._exec(
                        c,
                        Sql.TURN,
                        record.call_sid,
                        record.turn_index,
                        record.transcript,
                        record.reply,
                        record.interrupted,
                        dumps(dict(record.stamps)),
                        record.dtmf,
                    ).rowcount
                    == 1
                )
            )
        if isinstance(record, RecordCallStarted):
            return self._transaction(
                lambda c: (
                    self._exec(
                        c,
                        Sql.CALL_STARTED,
                        record.call_sid,
                        record.stream_sid,
                        record.business_id,
                        record.from_number,
                        record.to_number,
                        float(record.started_at),
                    ).rowcount
                    == 1
                )
            )
        if isinstance(record, RecordCallEnded):
            return self._transaction(
                lambda c: (
                    self._exec(
                        c, Sql.CALL_ENDED, record.call_sid, float(record.ended_at), record.reason, record.summary
                    ).rowcount
                    == 1
                )
            )
        if isinstance(record, RecordLead):
            return self._transaction(lambda c: self._apply_lead(c, record))
        assert isinstance(record, RecordChatMessage)
        return self._transaction(lambda c: self._apply_message(c, record), durable=True)

    def _apply_lead(self, conn: sqlite3.Connection, record: RecordLead) -> bool:
        now = time.time()
        fields = dumps(dict(record.fields))
        inserted = self._exec(
            conn,
            Sql.LEAD_INSERT,
            new_lead_id(),
            record.business_id,
            record.source,
            record.ref,
            fields,
            record.complete,
            now,
        ).rowcount
        if inserted == 1:
            return True
        row = self._exec(conn, Sql.LEAD_SELECT, record.source, record.ref).fetchone()
        merged, complete, changed = merge_lead(row["fields"], row["complete"], record)
        if not changed and (row["business_id"] == record.business_id or not record.business_id):
            return False
        business_id = record.business_id or row["business_id"]
        self._exec(conn, Sql.LEAD_UPDATE, record.source, record.ref, business_id, merged, complete, now)
        return True

    def _apply_message(self, conn: sqlite3.Connection, record: RecordChatMessage) -> bool:
        at = float(record.at)
        inserted = self._exec(
            conn,
            Sql.MESSAGE,
            record.message_id,
            record.chat_id,
            record.business_id,
            record.direction,
            record.text,
            at,
        ).rowcount
        self._exec(conn, Sql.CHAT, record.chat_id, record.business_id, at)
        return inserted == 1

    def upsert_business(self, business_id: str, name: str, profile: Mapping[str, Any]) -> None:
        text = profile_json(business_id, name, profile)
        self._transaction(lambda c: self._exec(c, Sql.BUSINESS, business_id, name, text, time.time()))

    def get_business(self, business_id: str) -> dict[str, Any] | None:
        """id, name, profile (a dict), updated_at; None if unknown."""
        row = self._locked(lambda c: self._exec(c, Sql.GET_BUSINESS, business_id).fetchone())
        return business_dict(row) if row is not None else None

    # -- reads ----------------------------------------------------------------

    def list_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [call_dict(r) for r in self._locked(lambda c: self._exec(c, Sql.LIST_CALLS, n).fetchall())]

    def get_call(self, call_sid: str) -> dict[str, Any] | None:
        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = self._exec(conn, Sql.GET_CALL, call_sid).fetchone()
            if row is None:
                return None
            call = call_dict(row)
            call["turns"] = [turn_dict(r) for r in self._exec(conn, Sql.GET_TURNS, call_sid)]
            call["leads"] = [lead_dict(r) for r in self._exec(conn, Sql.CALL_LEADS, call_sid)]
            return call

        return self._locked(run)

    def list_leads(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [lead_dict(r) for r in self._locked(lambda c: self._exec(c, Sql.LIST_LEADS, n).fetchall())]

    def chat_history(self, chat_id: str, limit: int = 20) -> list[dict[str, Any]]:
        n = check_limit(limit)
        rows = self._locked(lambda c: self._exec(c, Sql.CHAT_HISTORY, chat_id, n).fetchall())
        return [message_dict(r) for r in rows]

    def has_chat_message(self, message_id: str) -> bool:
        return self._locked(lambda c: self._exec(c, Sql.HAS_MESSAGE, message_id).fetchone() is not None)

    def list_chats(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [chat_dict(r) for r in self._locked(lambda c: self._exec(c, Sql.LIST_CHATS, n).fetchall())]

    def query(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        rows = self._locked(lambda c: self._exec(c, statement, *args).fetchall())
        return [dict(r) for r in rows]

    def execute(self, statement: str, *args: Any) -> int:
        return self._transaction(lambda c: self._exec(c, statement, *args).rowcount)
