"""Crash repair: close the calls of processes that died without closing them.

A host killed with SIGKILL (or by the OOM killer, or a power loss) cannot
record the end of its calls; their records stayed "live" forever. Each process
therefore owns its calls in the store (migration ``002_crash_repair``):

* At start it registers an owner row ``call_owners(id, host, pid, seen_at)``;
  the id is ``host:pid:nonce``, new at every start, so a restarted process
  that got the same pid (pid 1 in a container) is never taken for the dead one.
* Every ``repair.heartbeat_s`` (and right after a call starts) it stamps
  ``seen_at`` on its owner row and on each of its open calls, claiming the
  calls it has not claimed yet (``calls.owner``).
* At start-up, after replaying its own journal, and then at every heartbeat,
  it looks for owners that are gone (:func:`dead_owners`) and closes their open
  calls with ``end_reason = 'lost'`` and ``ended_at`` = the call's last stamp
  (its last known activity), through the store's ordinary idempotent
  ``RecordCallEnded`` write, then deletes the owner row. Open calls that no
  live owner claims (a process that died before its first stamp, records from
  before this existed) are closed the same way once their last stamp is older
  than ``dead_after_s``.

"Gone" (:func:`dead_owners`, pure): an owner whose ``seen_at`` is older than
``dead_after_s``, on any host; on this host also, at once, an owner whose pid
no longer runs or is this process's own pid under another id (a previous
incarnation). Hosts compare wall clocks, so their clocks must agree to well
within ``dead_after_s`` (NTP does). A false "gone" (a host cut off from the
database for longer than that while its calls went on) is corrected by the
host itself: a call's real end overrides ``lost`` in the store.

All methods block (store I/O): the runtime calls them on worker threads, never
on the trio thread. Not thread-safe; one runtime task drives one instance.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from engine.messages import RecordCallEnded
from engine.store import Store

__all__ = ["Owner", "CallOwnership", "dead_owners", "pid_alive", "LOST"]

log = logging.getLogger("callengine.repair")

LOST = "lost"


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    host: str
    pid: int
    seen_at: float


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (any owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_owners(
    owners: Iterable[Owner],
    *,
    me: str,
    host: str,
    pid: int,
    now: float,
    dead_after_s: float,
    alive: Callable[[int], bool] = pid_alive,
) -> list[Owner]:
    """The owners that are gone (see the module docstring). Pure but for ``alive``."""
    gone = []
    for owner in owners:
        if owner.id == me:
            continue
        stale = owner.seen_at < now - dead_after_s
        here = owner.host == host and (owner.pid == pid or not alive(owner.pid))
        if stale or here:
            gone.append(owner)
    return gone


class CallOwnership:
    """This process's owner row and the repair of others' (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        dead_after_s: float,
        host: str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.store = store
        self.dead_after_s = dead_after_s
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.id = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self._clock = clock
        self._alive = alive
        self._claimed: set[str] = set()
        self.repaired = 0  # calls closed as lost by this process, in all

    # ---- this process ---------------------------------------------------------

    def register(self) -> None:
        now = self._clock()
        self.store.execute(
            "INSERT INTO call_owners (id, host, pid, started_at, seen_at) VALUES ($1, $2, $3, $4, $4)"
            " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            self.id,
            self.host,
            self.pid,
            now,
        )

    def beat(self, live_sids: Iterable[str]) -> None:
        """Stamp this owner and its open calls; claim calls not yet claimed."""
        now = self._clock()
        if self.store.execute("UPDATE call_owners SET seen_at = $2 WHERE id = $1", self.id, now) == 0:
            self.register()  # first beat after the database was away at start, or repaired by mistake
        live = set(live_sids)
        for sid in live - self._claimed:
            self.store.execute(
                "INSERT INTO calls (call_sid, owner, seen_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (call_sid) DO UPDATE SET owner = excluded.owner, seen_at = excluded.seen_at"
                " WHERE calls.ended_at IS NULL",
                sid,
                self.id,
                now,
            )
        self._claimed = live
        if live:
            self.store.execute(
                "UPDATE calls SET seen_at = $2 WHERE owner = $1 AND ended_at IS NULL", self.id, now
            )

    def leave(self) -> None:
        """A clean exit: the owner row goes (its calls have ended by now)."""
        self.store.execute("DELETE FROM call_owners WHERE id = $1", self.id)

    # ---- the others -------------------------------------------------------------

    def repair(self) -> list[str]:
        """Close the open calls of gone owners and unclaimed stale calls; their sids."""
        now = self._clock()
        rows = self.store.query("SELECT id, host, pid, seen_at FROM call_owners")
        owners = [Owner(r["id"], r["host"], int(r["pid"]), float(r["seen_at"])) for r in rows]
        gone = dead_owners(
            owners, me=self.id, host=self.host, pid=self.pid, now=now, dead_after_s=self.dead_after_s,
            alive=self._alive,
        )
        closed: list[str] = []
        for owner in gone:
            calls = self.store.query(
                "SELECT call_sid, started_at, seen_at FROM calls WHERE owner = $1 AND ended_at IS NULL", owner.id
            )
            closed += self._close(calls, fallback=owner.seen_at)
            self.store.execute("DELETE FROM call_owners WHERE id = $1", owner.id)
        known = {o.id for o in owners} - {o.id for o in gone}
        orphans = self.store.query(
            "SELECT call_sid, started_at, seen_at, owner FROM calls WHERE ended_at IS NULL"
            " AND owner NOT IN (SELECT id FROM call_owners)"
        )
        stale = [
            c for c in orphans
            if c["owner"] not in known and _last_seen(c, now) < now - self.dead_after_s
        ]
        closed += self._close(stale, fallback=now)
        if closed:
            self.repaired += len(closed)
            log.warning(
                "closed calls of processes that are gone",
                extra={"calls": len(closed), "owners": [o.id for o in gone]},
            )
        return closed

    def _close(self, calls: list[dict[str, Any]], *, fallback: float) -> list[str]:
        closed = []
        for call in calls:
            ended_at = _last_seen(call, fallback)
            if self.store.apply(RecordCallEnded(call_sid=call["call_sid"], ended_at=ended_at, reason=LOST)):
                closed.append(call["call_sid"])
        return closed


def _last_seen(call: dict[str, Any], fallback: float) -> float:
    """A call's last known activity: its last stamp, else its start, else ``fallback``."""
    stamps = [v for v in (call.get("seen_at"), call.get("started_at")) if v is not None]
    return float(max(stamps)) if stamps else float(fallback)
