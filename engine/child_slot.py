"""One child position of a supervisor: its spec, its live incarnation, its history.

A ``Slot`` outlives the incarnations it holds: the restart policy's state
(``engine.restart_policy.SlotPolicy``), the messages buffered while no
incarnation runs, and the counters summed over incarnations (handled, dropped)
stay with the slot, so a restarted actor continues the slot's story and the
tree snapshot shows it. Data only: the supervisor decides and acts.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Deque

import pykka
import trio

from engine.actor import ActorContext, TrioActor
from engine.restart_policy import ChildSpec, SlotPolicy

__all__ = ["Slot", "SlotStatus"]


class SlotStatus(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class Slot:
    """One child position: the spec, the live incarnation, and its history.

    Internal to supervisors (``engine.supervisor``, ``engine.dynamic_supervisor``);
    trio thread only."""

    def __init__(self, spec: ChildSpec, give_up_after: int | None = None) -> None:
        self.spec = spec
        self.policy = SlotPolicy(spec, give_up_after=give_up_after)
        self.status = SlotStatus.STOPPED
        self.generation = 0
        self.actor: TrioActor | None = None
        self.ref: pykka.ActorRef[Any] | None = None
        self.ctx: ActorContext | None = None
        self.cancel_scope: trio.CancelScope | None = None
        self.done: trio.Event | None = None
        self.ready: trio.Event | None = None
        self.start_error: BaseException | None = None
        self.stop_requested = False
        self.last_error = ""
        self.started_at = 0.0  # trio clock
        self.run_since: float | None = None  # trio clock; None unless this incarnation got running
        self.buffer: Deque[Any] = deque()
        self.overflow = 0
        self.handled_before = 0  # messages handled by earlier incarnations
        self.dropped_before = 0  # mailbox-full drops of earlier trio incarnations

    @property
    def fallback_active(self) -> bool:
        return self.policy.fallback_active

    @property
    def restarts(self) -> int:
        return self.policy.restarts

    @property
    def live(self) -> bool:
        return self.status is SlotStatus.RUNNING

    def handled(self) -> int:
        n = self.handled_before
        if self.actor is not None:
            n += self.actor.handled
        elif self.ctx is not None:
            n += self.ctx.handled
        return n

    def dropped(self) -> int:
        """Messages a full trio mailbox refused, over all incarnations."""
        n = self.dropped_before
        if self.actor is not None:
            n += self.actor.dropped
        return n

    def depth(self) -> int:
        d = len(self.buffer)
        if self.actor is not None:
            d += self.actor.mailbox_depth()
        elif self.ref is not None:
            d += self.ref.actor_inbox.qsize()  # type: ignore[attr-defined]
        return d

    def snapshot(self, now: float) -> dict[str, Any]:
        """This slot as plain data (a supervisor child adds its own tree instead)."""
        kind = self.actor.kind if self.actor is not None else ("pykka" if self.ref is not None else "-")
        status = self.status.value
        if self.status is SlotStatus.RUNNING and self.fallback_active:
            status = "fallback"
        details = getattr(self.actor, "details", None)
        return {
            **(details() if details is not None else {}),
            "role": self.spec.role,
            "kind": kind,
            "status": status,
            "restarts": self.restarts,
            "fallback": self.fallback_active,
            "fallback_active": self.fallback_active,
            "fallbacks": self.policy.fallbacks,
            "probes": self.policy.probes,
            "mailbox_depth": self.depth(),
            "handled": self.handled(),
            "overflow": self.overflow,
            "dropped": self.dropped(),
            "last_error": self.last_error,
            "uptime_s": round(now - self.started_at, 3) if self.status is SlotStatus.RUNNING else 0.0,
            "children": [],
        }
