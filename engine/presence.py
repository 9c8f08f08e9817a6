"""Presence: every host process publishes what it holds live, through the store.

Why through the store: with ``--workers N`` or several hosts, an HTTP request
reaches one process, but a live call's tree lives in exactly one process's
memory. Each process therefore writes a row to ``processes`` (migration
``003_presence``) every ``heartbeat_s`` seconds: its live calls with their actor
trees, its chats, counters and anything the host adds (``extra``: WhatsApp
pairing). The admin API reads every row whose heartbeat is younger than
``dead_after_s`` and merges them; a process that died stops heartbeating and
drops out of every answer within ``dead_after_s`` (and its row is deleted by
the next sweep of any process). Heartbeats are stamped with the database's own
clock (``now_sql``), so hosts whose clocks disagree still agree on who is alive.
The same store serves one host on SQLite and many on PostgreSQL.

Actions on a call held by another process (end it, restart one of its
actors) go through ``admin_commands``: the admin API inserts a command for the
holder, and the holder's presence task runs it within ``command_poll_s``.

Ownership: ``Presence.run`` is one trio task per process (the admin module
starts it in the app's nursery); it builds the state on the trio thread and
does every database write on a worker thread, bounded by ``store_timeout_s``.
A database that is away costs a skipped heartbeat (counted), never a stall.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

import trio

from engine.store import Store, StoreUnavailable

__all__ = ["Presence", "PresenceReader", "process_id", "now_sql"]

log = logging.getLogger("callengine.presence")

_NOW = {
    "postgres": "EXTRACT(EPOCH FROM clock_timestamp())::double precision",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def now_sql(store: Store) -> str:
    """The database's clock in seconds since the epoch, as an SQL expression."""
    return _NOW.get(store.backend, _NOW["sqlite"])


def process_id(host: str | None = None, pid: int | None = None) -> str:
    """``host:pid``: what the admin view calls a process."""
    return f"{host or socket.gethostname()}:{pid or os.getpid()}"


class PresenceReader:
    """Blocking reads and command inserts over the presence tables (worker threads only)."""

    def __init__(self, store: Store, *, dead_after_s: float = 5.0) -> None:
        self.store = store
        self.dead_after_s = dead_after_s
        now = now_sql(store)
        self._alive = (
            "SELECT id, host, pid, started_at, heartbeat_at, live_calls, live_chats, state,"
            f" {now} AS db_now FROM processes WHERE heartbeat_at >= {now} - $1 ORDER BY started_at, id"
        )
        self._sweep = f"DELETE FROM processes WHERE heartbeat_at < {now} - $1"

    def alive(self) -> list[dict[str, Any]]:
        """Every process that heartbeated within ``dead_after_s``, state decoded."""
        rows = self.store.query(self._alive, float(self.dead_after_s))
        for row in rows:
            try:
                row["state"] = json.loads(row["state"] or "{}")
            except ValueError:
                row["state"] = {}
        return rows

    def sweep(self) -> int:
        """Delete the rows of processes dead for a while (several ``dead_after_s``)."""
        n = self.store.execute(self._sweep, float(self.dead_after_s * 6))
        self.store.execute("DELETE FROM admin_commands WHERE created_at < $1", time.time() - 3600.0)
        return n

    def holders(self, call_sids: list[str]) -> dict[str, str]:
        """call_sid -> the process that held it, for those known."""
        if not call_sids:
            return {}
        marks = ", ".join(f"${i + 1}" for i in range(len(call_sids)))
        rows = self.store.query(f"SELECT call_sid, process_id FROM call_processes WHERE call_sid IN ({marks})", *call_sids)
        return {r["call_sid"]: r["process_id"] for r in rows}

    def command(self, process: str, call_sid: str, action: str, role: str = "") -> str:
        """Queue ``action`` on ``call_sid`` for ``process``; the command's id."""
        cid = uuid.uuid4().hex
        self.store.execute(
            "INSERT INTO admin_commands (id, process_id, call_sid, action, role, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            cid,
            process,
            call_sid,
            action,
            role,
            time.time(),
        )
        return cid

    def command_result(self, cid: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT done_at, result FROM admin_commands WHERE id = $1", cid)
        return rows[0] if rows else None


class Presence:
    """This process's heartbeat, published state and command runner (see the module doc).

    ``state_fn()`` (trio thread) returns the JSON-able state to publish: at
    least ``calls`` (a list) and ``chats`` (a list). ``live_ids()`` (cheap,
    trio thread), when given, is checked every ``command_poll_s``: when it
    differs from what was last published (a call began or ended), the state is
    published at once instead of at the next heartbeat. ``on_command(call_sid,
    action, role)`` (trio thread) runs one command and returns a short result
    ("ok", "no such call", ...).
    """

    def __init__(
        self,
        store: Store,
        *,
        state_fn: Callable[[], dict[str, Any]],
        on_command: Callable[[str, str, str], str],
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
        command_poll_s: float = 0.25,
        store_timeout_s: float = 2.0,
        on_skip: Callable[[], None] | None = None,
        host: str | None = None,
        live_ids: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.reader = PresenceReader(store, dead_after_s=dead_after_s)
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.id = process_id(self.host, self.pid)
        self.started_at = time.time()
        self._state_fn = state_fn
        self._on_command = on_command
        self.heartbeat_s = heartbeat_s
        self.command_poll_s = command_poll_s
        self.store_timeout_s = store_timeout_s
        self._on_skip = on_skip
        self._live_ids = live_ids
        self._published_ids: Any = None
        self._seen_calls: set[str] = set()
        self.heartbeats = 0
        self.skipped = 0
        self._limiter = trio.CapacityLimiter(1)  # one database write at a time, in order
        now = now_sql(store)
        self._upsert = (
            "INSERT INTO processes (id, host, pid, started_at, heartbeat_at, live_calls, live_chats, state)"
            f" VALUES ($1, $2, $3, $4, {now}, $5, $6, $7)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
            " live_calls = excluded.live_calls, live_chats = excluded.live_chats, state = excluded.state"
        )

    # ---- the task ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus["Presence"] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled; the first heartbeat is written before ``started``."""
        await self.beat()
        task_status.started(self)
        next_beat = trio.current_time() + self.heartbeat_s
        sweeps = 0
        while True:
            await trio.sleep(self.command_poll_s)
            await self.run_commands()
            changed = self._live_ids is not None and self._live_ids() != self._published_ids
            if changed or trio.current_time() >= next_beat:
                next_beat = trio.current_time() + self.heartbeat_s
                await self.beat()
                sweeps += 1
                if sweeps % 10 == 0:
                    await self._db(self.reader.sweep)

    async def beat(self) -> None:
        """Publish the state now (also called right after a call starts or ends)."""
        ids = self._live_ids() if self._live_ids is not None else None
        state = self._state_fn()
        calls = state.get("calls", [])
        new = [c["sid"] for c in calls if c.get("sid") and c["sid"] not in self._seen_calls]
        n_calls, n_chats = len(calls), len(state.get("chats", []))

        def write() -> bool:
            # Serialized here, on the worker thread: the state is this beat's own
            # fresh data, and the trio thread carries the calls' audio.
            body = json.dumps(state, ensure_ascii=False, separators=(",", ":"), default=str)
            self.store.execute(self._upsert, self.id, self.host, self.pid, self.started_at, n_calls, n_chats, body)
            for sid in new:
                self.store.execute(
                    "INSERT INTO call_processes (call_sid, process_id, seen_at) VALUES ($1, $2, $3)"
                    " ON CONFLICT (call_sid) DO NOTHING",
                    sid,
                    self.id,
                    time.time(),
                )
            return True

        if await self._db(write):
            self._seen_calls.update(new)
            live = {c.get("sid") for c in calls}
            self._seen_calls &= live
            self._published_ids = ids
            self.heartbeats += 1

    async def run_commands(self) -> None:
        rows = await self._db(
            self.store.query,
            "SELECT id, call_sid, action, role FROM admin_commands"
            " WHERE process_id = $1 AND done_at IS NULL ORDER BY created_at, id",
            self.id,
        )
        for row in rows or []:
            try:
                result = self._on_command(row["call_sid"], row["action"], row["role"])
            except Exception as exc:  # noqa: BLE001 - a bad command must not stop the heartbeat
                log.warning("admin command failed", extra={"call_sid": row["call_sid"], "action": row["action"]}, exc_info=True)
                result = f"error: {type(exc).__name__}"
            await self._db(
                self.store.execute,
                "UPDATE admin_commands SET done_at = $2, result = $3 WHERE id = $1",
                row["id"],
                time.time(),
                result,
            )

    async def leave(self) -> None:
        """Delete this process's row (a clean exit): it drops out at once."""
        await self._db(self.store.execute, "DELETE FROM processes WHERE id = $1", self.id)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread within ``store_timeout_s``; None when the
        store is away (counted and skipped: the next heartbeat tries again)."""
        with trio.move_on_after(self.store_timeout_s):
            try:
                return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)
            except StoreUnavailable:
                pass
        self.skipped += 1
        if self._on_skip is not None:
            self._on_skip()
        return None
