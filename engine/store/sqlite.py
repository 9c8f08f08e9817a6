"""The SQLite store (the embedded default).

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

The portable SQL (statements, migrations, row shaping, the lead merge) is
:mod:`engine.store.sql`, shared with ``engine.store.postgres``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
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
from engine.store.records import check_record
from engine.store.sql import (
    Sql,
    business_dict,
    call_dict,
    chat_dict,
    check_limit,
    dumps,
    lead_dict,
    load_migrations,
    merge_lead,
    message_dict,
    new_lead_id,
    profile_json,
    split_statements,
    sqlite_sql,
    turn_dict,
)

__all__ = ["SqliteStore", "DEFAULT_PATH"]

log = logging.getLogger("callengine.store.sqlite")

DEFAULT_PATH = Path("var") / "callengine.db"

T = TypeVar("T")


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
