"""The PostgreSQL store, through asyncpg, behind the blocking ``Store`` interface.

Threads. asyncpg is asyncio-only and the rest of the engine is trio plus pykka
threads, so the store owns one daemon thread (``callengine-store-pg``) running a
private asyncio loop; that loop owns the connection pool (``asyncpg.create_pool``
must run inside it) and everything asyncpg does happens there. A blocking
method on any other thread builds a coroutine, submits it with
``asyncio.run_coroutine_threadsafe`` and waits for the result with a timeout.
Calling a method on the loop thread itself is a bug and raises ``RuntimeError``
(it would deadlock).

Availability. Connection-level failures (refused, reset, dropped mid-query,
server shutting down or starting up, too many connections, timeouts, the pool
closing) are translated, on the loop thread, into ``StoreUnavailable``; any
other error (a constraint we did not expect, bad SQL) propagates unchanged,
because retrying it would never succeed. The pool is created lazily with
``min_size=0``, so constructing the store never touches the network; after a
connection failure its idle connections are expired and the pool reconnects
on the next call, and if the pool itself is broken it is dropped and created
afresh. The store therefore recovers by itself when the server returns; it
never has to be re-created.

Shutdown. ``close()`` closes the pool (terminating it if the graceful close
takes longer than ``close_timeout``), stops the loop, shuts down the loop's
default executor and joins the thread: no thread is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
import asyncpg.exceptions as pgexc

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
    turn_dict,
)

__all__ = ["PostgresStore"]

log = logging.getLogger("callengine.store.postgres")

T = TypeVar("T")

# pg_advisory_xact_lock key serialising concurrent migrations (several host
# processes starting at once): the bytes of "callengine" folded into an int64.
_MIGRATION_LOCK_KEY = int.from_bytes(b"callengn", "big") & 0x7FFF_FFFF_FFFF_FFFF

_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket errors
    asyncio.TimeoutError,
    TimeoutError,
    pgexc.PostgresConnectionError,  # class 08: ConnectionDoesNotExistError, ConnectionFailureError, ...
    pgexc.OperatorInterventionError,  # class 57: AdminShutdown, CrashShutdown, CannotConnectNow
    pgexc.TooManyConnectionsError,
)


class _ConnectionLost(Exception):
    """Internal: the connection died while a statement ran (loop thread only)."""


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, pgexc.InterfaceError):
        # "connection is closed", "pool is closing", "cannot perform operation:
        # another operation is in progress" after a lost connection, ... — but not
        # argument-count mistakes, which are bugs.
        msg = str(exc).lower()
        return any(word in msg for word in ("closed", "closing", "connection was lost", "not connected"))
    return False


class PostgresStore(Store):
    """The ``Store`` on PostgreSQL (see the module doc for threads and failure handling).

    ``dsn`` is a libpq-style URL (``postgresql://user@host:5432/db``). All
    public methods block the calling thread for at most about ``timeout``
    seconds and are safe from any number of threads.
    """

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 8,
        close_timeout: float = 5.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError("PostgreSQL DSN must start with postgres:// or postgresql://")
        self.dsn = dsn
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._close_timeout = close_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: asyncio.Lock | None = None  # created on the loop
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="callengine-store-pg", daemon=True)
        self._thread.start()
        ready.wait()

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.dsn)!r})"

    # -- the loop thread ------------------------------------------------------------

    def _run_loop(self, ready: threading.Event) -> None:
        """Body of the store thread: run the loop until ``close`` stops it, then tidy up."""
        asyncio.set_event_loop(self._loop)
        self._pool_lock = asyncio.Lock()
        self._loop.call_soon(ready.set)
        try:
            self._loop.run_forever()
        finally:
            try:
                # Calls still in flight get CancelledError, which their waiting
                # threads see as StoreUnavailable("store is closed").
                pending = asyncio.all_tasks(self._loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            finally:
                self._loop.close()

    async def _get_pool(self) -> asyncpg.Pool:
        assert self._pool_lock is not None
        async with self._pool_lock:
            if self._pool is None or self._pool.is_closing():
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self._max_connections,
                    timeout=self._connect_timeout,
                    command_timeout=self._timeout,
                    max_inactive_connection_lifetime=60.0,
                )
            return self._pool

    async def _guarded(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` on a pooled connection; map connection failures. Loop thread only."""
        try:
            pool = await self._get_pool()
            conn = await pool.acquire(timeout=self._connect_timeout)
            try:
                return await fn(conn)
            except Exception as exc:
                # A connection that died under the query (the server shut down
                # mid-statement) can surface as any error, including asyncpg's
                # InternalClientError about protocol state: judge by the connection.
                lost = conn.is_closed() or isinstance(exc, pgexc.InternalClientError)
                if not lost:
                    raise
                if not conn.is_closed():
                    conn.terminate()
                raise _ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
            finally:
                # Also on success: a connection that breaks while being reset for
                # the pool does not undo a statement that completed (committed).
                await self._release(pool, conn)
        except Exception as exc:
            if not isinstance(exc, _ConnectionLost) and not _is_unavailable(exc):
                raise
            await self._after_connection_failure()
            raise StoreUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        try:
            await pool.release(conn)
        except Exception as exc:  # asyncpg has terminated the connection; the pool replaces it
            log.debug("postgres connection dropped on release", extra={"error": repr(exc)})

    async def _after_connection_failure(self) -> None:
        pool = self._pool
        if pool is None:
            return
        try:
            await pool.expire_connections()
        except Exception:  # a broken pool: drop it, the next call builds a new one
            self._pool = None
            pool.terminate()

    def _call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Submit ``fn`` to the loop thread and wait for it (any thread but the loop's)."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("PostgresStore methods must not be called on the store's own loop thread")
        try:
            future = asyncio.run_coroutine_threadsafe(self._guarded(fn), self._loop)
        except RuntimeError as exc:  # loop closed between the check and the submit
            raise StoreUnavailable("store is closed") from exc
        try:
            return future.result(self._timeout + self._connect_timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise StoreUnavailable(
                f"PostgreSQL did not answer within {self._timeout + self._connect_timeout:.1f}s"
            ) from exc
        except concurrent.futures.CancelledError as exc:  # the loop went away (close)
            raise StoreUnavailable("store is closed") from exc

    # -- Store --------------------------------------------------------------------

    def migrate(self) -> None:
        migrations = load_migrations()

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
                await conn.execute(Sql.MIGRATIONS_TABLE)
                applied = {r["version"] for r in await conn.fetch(Sql.APPLIED)}
                for migration in migrations:
                    if migration.version in applied:
                        continue
                    await conn.execute(migration.sql)  # simple protocol: many statements
                    await conn.execute(Sql.MARK_APPLIED, migration.version, migration.name, time.time())
                    log.info("migration applied", extra={"backend": "postgres", "migration": migration.name})

        self._call(run)

    def applied_migrations(self) -> list[int]:
        """Versions recorded in ``schema_migrations`` (empty before ``migrate``)."""

        async def run(conn: asyncpg.Connection) -> list[int]:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return []
            return [r["version"] for r in await conn.fetch(Sql.APPLIED)]

        return self._call(run)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._close_pool(), self._loop).result(self._close_timeout + 2)
            except Exception as exc:  # shutdown must go on regardless
                log.warning("postgres pool close failed", extra={"error": repr(exc)})
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)
            except RuntimeError:
                pass
        self._thread.join(self._close_timeout + 5)
        if self._thread.is_alive():
            log.error("postgres store thread did not stop", extra={"thread_name": self._thread.name})

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._close_timeout)
        except Exception:
            pool.terminate()

    # -- writes -------------------------------------------------------------------

    def apply(self, record: Record) -> bool:
        check_record(record)
        if isinstance(record, RecordTurn):
            args: tuple[Any, ...] = (
                record.call_sid,
                record.turn_index,
                record.transcript,
                record.reply,
                record.interrupted,
                dumps(dict(record.stamps)),
                record.dtmf,
            )
            return self._call(lambda c: _changed(c.execute(Sql.TURN, *args)))
        if isinstance(record, RecordCallStarted):
            args = (
                record.call_sid,
                record.stream_sid,
                record.business_id,
                record.from_number,
                record.to_number,
                float(record.started_at),
            )
            return self._call(lambda c: _changed(c.execute(Sql.CALL_STARTED, *args)))
        if isinstance(record, RecordCallEnded):
            args = (record.call_sid, float(record.ended_at), record.reason, record.summary)
            return self._call(lambda c: _changed(c.execute(Sql.CALL_ENDED, *args)))
        if isinstance(record, RecordLead):
            return self._call(lambda c: _apply_lead(c, record))
        assert isinstance(record, RecordChatMessage)
        return self._call(lambda c: _apply_message(c, record))

    def upsert_business(self, business_id: str, name: str, profile: Mapping[str, Any]) -> None:
        text = profile_json(business_id, name, profile)
        now = time.time()
        self._call(lambda c: c.execute(Sql.BUSINESS, business_id, name, text, now))

    def get_business(self, business_id: str) -> dict[str, Any] | None:
        """id, name, profile (a dict), updated_at; None if unknown."""
        row = self._call(lambda c: c.fetchrow(Sql.GET_BUSINESS, business_id))
        return business_dict(row) if row is not None else None

    # -- reads --------------------------------------------------------------------

    def list_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [call_dict(r) for r in self._call(lambda c: c.fetch(Sql.LIST_CALLS, n))]

    def get_call(self, call_sid: str) -> dict[str, Any] | None:
        async def run(conn: asyncpg.Connection) -> dict[str, Any] | None:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                row = await conn.fetchrow(Sql.GET_CALL, call_sid)
                if row is None:
                    return None
                call = call_dict(row)
                call["turns"] = [turn_dict(r) for r in await conn.fetch(Sql.GET_TURNS, call_sid)]
                call["leads"] = [lead_dict(r) for r in await conn.fetch(Sql.CALL_LEADS, call_sid)]
                return call

        return self._call(run)

    def list_leads(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [lead_dict(r) for r in self._call(lambda c: c.fetch(Sql.LIST_LEADS, n))]

    def chat_history(self, chat_id: str, limit: int = 20) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [message_dict(r) for r in self._call(lambda c: c.fetch(Sql.CHAT_HISTORY, chat_id, n))]

    def has_chat_message(self, message_id: str) -> bool:
        return self._call(lambda c: c.fetchval(Sql.HAS_MESSAGE, message_id)) is not None

    def list_chats(self, limit: int = 100) -> list[dict[str, Any]]:
        n = check_limit(limit)
        return [chat_dict(r) for r in self._call(lambda c: c.fetch(Sql.LIST_CHATS, n))]

    def query(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._call(lambda c: c.fetch(statement, *args))]

    def execute(self, statement: str, *args: Any) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            tag = await conn.execute(statement, *args)
            last = tag.rsplit(" ", 1)[-1]
            return int(last) if last.isdigit() else 0

        return self._call(run)


# ------------------------------------------------------------ loop-side helpers


async def _changed(status: Awaitable[str]) -> bool:
    """True when an INSERT/UPDATE status tag reports one row (``INSERT 0 1``)."""
    tag = await status
    return tag.rsplit(" ", 1)[-1] == "1"


async def _apply_lead(conn: asyncpg.Connection, record: RecordLead) -> bool:
    now = time.time()
    async with conn.transaction():
        tag = await conn.execute(
            Sql.LEAD_INSERT,
            new_lead_id(),
            record.business_id,
            record.source,
            record.ref,
            dumps(dict(record.fields)),
            record.complete,
            now,
        )
        if tag.endswith(" 1"):
            return True
        row = await conn.fetchrow(Sql.LEAD_SELECT + " FOR UPDATE", record.source, record.ref)
        merged, complete, changed = merge_lead(row["fields"], row["complete"], record)
        if not changed and (row["business_id"] == record.business_id or not record.business_id):
            return False
        business_id = record.business_id or row["business_id"]
        await conn.execute(Sql.LEAD_UPDATE, record.source, record.ref, business_id, merged, complete, now)
        return True


async def _apply_message(conn: asyncpg.Connection, record: RecordChatMessage) -> bool:
    # Inbound messages are acknowledged once this returns: force a synchronous
    # commit (WAL flushed) even where the server's default is off.
    at = float(record.at)
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        tag = await conn.execute(
            Sql.MESSAGE, record.message_id, record.chat_id, record.business_id, record.direction, record.text, at
        )
        await conn.execute(Sql.CHAT, record.chat_id, record.business_id, at)
        return tag.endswith(" 1")


def _redact(dsn: str) -> str:
    """The DSN without its password, for logs and reprs."""
    scheme, sep, rest = dsn.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return dsn
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
