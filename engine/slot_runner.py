"""Slots and their incarnations: start one and wait until it is ready, stop one within its bound.

The mechanics under :class:`engine.supervisor.Supervisor`, kept apart from its
policy so each reads on its own. What this guarantees:

- A start (``_start_slot``) returns only once the incarnation reported ready
  (OTP's synchronous start), failed, or missed ``start_timeout``; any failure,
  a factory that raises or returns something that is not an actor included,
  reaches the owner as an ``("exit", (role, generation, error))`` event, never
  as an exception here. Messages buffered for the role while it had no running
  child are then delivered in order.
- A trio child runs in this actor's nursery under its own shielded cancel
  scope, so stopping the owner stops children one by one, in reverse order,
  each within its ``shutdown`` bound (``_stop_all``), rather than all at once.
- A stop (``_stop_incarnation``) is bounded by the child's ``shutdown``; a child
  that overruns it is abandoned and counted (``abandoned``), never waited for.
- Reports from an incarnation (``child_ready``, ``child_exited``: the
  ``engine.actor.Parent`` interface) are matched by generation, so a late report
  of a replaced incarnation changes nothing.
- Timers (``_schedule``) post ``("timer", (role, generation, action))`` events
  into the same queue; the owner decides what they mean.

All of it runs on the trio thread; reports from pykka threads arrive through
``TrioToken.run_sync_soon`` (see ``engine.bridge``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import pykka
import trio

from engine.actor import ActorContext, TrioActor
from engine.child_slot import Slot, SlotStatus
from engine.restart_policy import ChildSpec

__all__ = ["SlotRunner"]

log = logging.getLogger("callengine.supervisor")


class SlotRunner(TrioActor):
    """A trio actor that owns slots of children (see the module docstring).

    ``_slots`` by role and ``_order`` (start order) are the children;
    ``_events_send`` / ``_events_recv`` is the owner's queue of exit and timer
    events, which its ``run`` consumes.
    """

    name: str

    def __init__(self, env: Mapping[str, Any] | None) -> None:
        super().__init__()
        self.env: Mapping[str, Any] = env if env is not None else {}
        self._slots: dict[str, Slot] = {}
        self._order: list[str] = []
        self._events_send, self._events_recv = trio.open_memory_channel[Any](1024)
        self.abandoned = 0  # children that did not stop within their shutdown bound

    # ------------------------------------------------------------------ reports

    def child_ready(self, role: str, generation: int) -> None:
        """``engine.actor.Parent``: an incarnation finished starting."""
        slot = self._slots.get(role)
        if slot is not None and slot.generation == generation and slot.ready is not None:
            slot.ready.set()

    def child_exited(self, role: str, generation: int, error: BaseException | None) -> None:
        """``engine.actor.Parent``: an incarnation ended; a late report of a replaced one is ignored."""
        slot = self._slots.get(role)
        if slot is None or slot.generation != generation:
            return  # a late report from a replaced incarnation
        if slot.status is SlotStatus.STARTING and slot.ready is not None:
            slot.start_error = error or RuntimeError("exited during start")
            slot.ready.set()
        if slot.done is not None:
            slot.done.set()
        if slot.stop_requested:
            return
        try:
            self._events_send.send_nowait(("exit", (role, generation, error)))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.error("supervisor %s lost an exit report for %s", self.name, role)

    # ------------------------------------------------------------------ slots

    def _add_slot(self, spec: ChildSpec, give_up_after: int | None = None) -> Slot:
        slot = Slot(spec, give_up_after)
        self._slots[spec.role] = slot
        self._order.append(spec.role)
        return slot

    def _remove_slot(self, role: str) -> None:
        self._slots.pop(role, None)
        if role in self._order:
            self._order.remove(role)

    async def _start_slot(self, slot: Slot) -> None:
        """Start the slot's current factory; on start failure handle it as an exit."""
        spec = slot.spec
        factory = spec.fallback if (slot.fallback_active and spec.fallback) else spec.factory
        slot.generation += 1
        gen = slot.generation
        slot.status = SlotStatus.STARTING
        slot.run_since = None
        slot.stop_requested = False
        slot.start_error = None
        slot.ready = trio.Event()
        slot.done = trio.Event()
        if slot.actor is not None or slot.ref is not None:
            slot.handled_before = slot.handled()
            slot.dropped_before = slot.dropped()
        slot.actor = None
        slot.ref = None
        ctx = ActorContext(spec.role, gen, self, self.env)
        slot.ctx = ctx
        try:
            made = factory(ctx)
        except Exception as exc:  # noqa: BLE001 - a factory failure is a child failure
            slot.status = SlotStatus.STOPPED
            slot.done.set()
            self._events_send.send_nowait(("exit", (spec.role, gen, exc)))
            return
        if isinstance(made, TrioActor):
            slot.actor = made
            made.attach(ctx)
            # Shielded: cancelling the supervisor (its parent stopping it, or the
            # root being cancelled) must not cancel every child at once; run()'s
            # and on_start()'s cleanup then stops them one by one in reverse
            # order, each within its shutdown bound, through this scope.
            slot.cancel_scope = trio.CancelScope(shield=True)
            self.nursery.start_soon(self._run_trio_child, made, spec.shutdown, slot.cancel_scope, slot.done)
        elif isinstance(made, pykka.ActorRef):
            slot.ref = made
            slot.cancel_scope = None
        else:
            slot.status = SlotStatus.STOPPED
            slot.done.set()
            self._events_send.send_nowait(
                ("exit", (spec.role, gen, TypeError(f"factory for {spec.role} returned {type(made).__name__}")))
            )
            return
        with trio.move_on_after(spec.start_timeout) as timeout:
            await slot.ready.wait()
        if timeout.cancelled_caught and slot.start_error is None:
            slot.start_error = TimeoutError(f"{spec.role} not ready within {spec.start_timeout}s")
            await self._stop_incarnation(slot)
            self._events_send.send_nowait(("exit", (spec.role, gen, slot.start_error)))
            return
        if slot.start_error is not None:
            slot.status = SlotStatus.STOPPED
            return  # the exit report is already queued
        slot.status = SlotStatus.RUNNING
        slot.started_at = trio.current_time()
        slot.run_since = slot.started_at
        # Flush what arrived while the slot had no running child, in order.
        while slot.buffer and slot.status is SlotStatus.RUNNING:
            msg = slot.buffer.popleft()
            if slot.actor is not None:
                slot.actor.deliver(msg)
            elif slot.ref is not None:
                try:
                    slot.ref.tell(msg)
                except pykka.ActorDeadError:
                    slot.buffer.appendleft(msg)
                    break

    async def _run_trio_child(self, actor: TrioActor, shutdown: float, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            await actor.run_supervised(scope, shutdown)
        finally:
            done.set()

    def _schedule(self, slot: Slot, delay: float, action: str) -> None:
        gen = slot.generation
        role = slot.spec.role

        async def timer() -> None:
            await trio.sleep(delay)
            try:
                self._events_send.send_nowait(("timer", (role, gen, action)))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        self.nursery.start_soon(timer)

    async def _stop_incarnation(self, slot: Slot) -> None:
        """Stop the slot's running child within its shutdown bound."""
        slot.stop_requested = True
        if slot.actor is not None and slot.cancel_scope is not None:
            slot.actor.begin_stop()  # no inline handling while it stops (e.g. in on_stop)
            slot.cancel_scope.cancel()
        elif slot.ref is not None:
            try:
                slot.ref.stop(block=False)
            except pykka.ActorDeadError:
                pass
            except Exception:  # noqa: BLE001
                log.debug("stop of %s failed", slot.spec.role, exc_info=True)
        if slot.done is not None:
            with trio.move_on_after(slot.spec.shutdown) as scope:
                await slot.done.wait()
            if scope.cancelled_caught and slot.spec.shutdown > 0:  # brutal_kill: not waited for, by request
                self.abandoned += 1
                log.error("child did not stop in time", extra={"supervisor": self.name, "role": slot.spec.role})
        slot.handled_before = slot.handled()
        slot.dropped_before = slot.dropped()
        slot.actor = None
        slot.ref = None
        slot.ctx = None  # its count is in handled_before now
        slot.status = SlotStatus.STOPPED

    async def _stop_all(self) -> None:
        for role in reversed(list(self._order)):
            slot = self._slots.get(role)
            if slot is not None and slot.status in (SlotStatus.RUNNING, SlotStatus.STARTING):
                await self._stop_incarnation(slot)
            elif slot is not None:
                slot.status = SlotStatus.STOPPED
