"""Supervision as data, with Erlang/OTP's meanings plus what calls need.

A ``Supervisor`` is itself a ``TrioActor``, so trees nest: the process has a
call supervisor whose (temporary, dynamic) children are per-call supervisors,
whose children are the call's actors. Children start in spec order, each
``start`` returning only once the child is ready (OTP's synchronous start), and
stop in reverse order.

The decisions (child specs and their validation, restart intensity, backoff,
retry before fallback, the half-open probe, what progress excuses) are pure code
in ``engine.restart_policy``, which states them precisely; this module carries
them out with trio and pykka, on ``engine.slot_runner`` (starting and stopping
one incarnation within its bounds). What it adds:

- ``restart``: ``permanent`` children are always restarted; ``transient`` ones
  only after an abnormal exit (an exception); ``temporary`` ones never, and
  leave no trace.
- ``significant`` + ``auto_shutdown`` (``AutoShutdown``): a significant child
  ends when a transient one exits normally or a temporary one exits for any
  reason; the supervisor then stops its other children and exits normally if
  ``auto_shutdown`` is ``any_significant``, or ``all_significant`` and no other
  significant child is left. Only exits of the child's own count, never stops
  the supervisor makes. A call's transport is significant: when the caller
  hangs up, the tree ends.
- ``strategy``: ``one_for_one`` restarts only the failed child;
  ``rest_for_one`` stops the children started after it (in reverse order) and
  restarts the failed child and then those, in order; ``one_for_all`` does so
  for every child. Temporary children among those stopped are not restarted:
  they are removed, as in OTP.
- Restart intensity: past it the supervisor stops all children and fails with
  ``SupervisorEscalation``; its parent then applies its own policy. Limits
  multiply across levels, as in OTP.
- Backoff waits are timers in this supervisor's nursery; a fallback starts at
  once (the call must not go quiet). Failures of a probe count toward
  intensity like any restart.
- Role addressing: ``tell_role(role, msg)`` delivers to whatever incarnation is
  in the slot. While the slot has no running child (starting, restarting,
  backing off) messages are buffered, at most ``buffer`` of them; beyond that
  the oldest is dropped and ``overflow`` counted — never silent.
- Stopping is bounded: each child gets ``shutdown`` seconds for its ``on_stop``
  (trio) or to report its exit (pykka), then it is abandoned and counted.

All methods run on the trio thread. Exit and readiness reports from pykka
threads arrive through ``TrioToken.run_sync_soon`` (see ``engine.bridge``).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping

import pykka
import trio

from engine.actor import ActorContext, TrioActor, unwrap_group
from engine.child_slot import Slot, SlotStatus
from engine.restart_policy import (
    PROBE_RECHECK_S,
    Action,
    AutoShutdown,
    Backoff,
    ChildSpec,
    Restart,
    RestartIntensity,
    Strategy,
    as_enum,
    check_children,
)
from engine.slot_runner import SlotRunner

__all__ = [
    "Restart",
    "Strategy",
    "AutoShutdown",
    "ChildSpec",
    "Supervisor",
    "SupervisorEscalation",
    "OperatorRestart",
    "Backoff",
    "run_root",
]

log = logging.getLogger("callengine.supervisor")


class OperatorRestart(Exception):
    """The reason given for a child restarted by ``Supervisor.restart_child``."""


class SupervisorEscalation(Exception):
    """A supervisor exceeded its restart intensity and gave up."""


class Supervisor(SlotRunner):
    """A supervisor of trio and pykka children (see module docstring)."""

    kind = "supervisor"

    def __init__(
        self,
        name: str,
        children: list[ChildSpec] | tuple[ChildSpec, ...] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        auto_shutdown: AutoShutdown | str = AutoShutdown.NEVER,
        env: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        on_exit: Callable[["Supervisor", BaseException | None], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(name, str) or not name:
            raise ValueError(f"supervisor name must be a non-empty string; got {name!r}")
        self.name = name
        self.strategy = as_enum(Strategy, "strategy", strategy)
        self.auto_shutdown = as_enum(AutoShutdown, "auto_shutdown", auto_shutdown)
        self._intensity = RestartIntensity(intensity, period)
        self.intensity = intensity
        self.period = period
        children = list(children)
        check_children(children, self.auto_shutdown)
        self._rng = rng or random.Random()
        for spec in children:
            self._add_slot(spec)
        self._escalation: SupervisorEscalation | None = None
        self._finished = trio.Event()
        self._started = trio.Event()
        self._stop_requested = False
        self._on_exit = on_exit
        # on_event(role, what): "restart" | "fallback" | "probe" | "restored" |
        # "escalated", for metrics. Called on the trio thread; must be cheap.
        self._on_event = on_event
        self.unknown_role_drops = 0  # messages for a role this supervisor does not have
        self._significant_exited = 0
        self.exit_error: BaseException | None = None

    @property
    def total_restarts(self) -> int:
        """Restarts this supervisor made, counted toward intensity or not."""
        return self._intensity.total

    # ------------------------------------------------------------------ public API

    def tell_role(self, role: str, msg: Any) -> None:
        """Deliver ``msg`` to the child in slot ``role`` (trio thread only).

        Buffered (bounded, oldest dropped and counted) while that slot has no
        running child. Messages for an unknown role are counted as overflow of a
        pseudo-slot and dropped: a typo must not crash a call. A running trio
        child with inline delivery (``TrioActor.inline``) has handled ``msg``
        when this returns; its failure fails that child, never the caller.
        """
        slot = self._slots.get(role)
        if slot is None:
            self.unknown_role_drops += 1
            return
        if slot.status is SlotStatus.RUNNING:
            if slot.actor is not None:
                slot.actor.deliver(msg)
                return
            if slot.ref is not None:
                try:
                    slot.ref.tell(msg)
                    return
                except pykka.ActorDeadError:
                    pass  # died; its exit report is on the way: buffer below
        if slot.status is SlotStatus.STOPPED and slot.spec.restart is Restart.TEMPORARY:
            slot.overflow += 1
            return
        if len(slot.buffer) >= slot.spec.buffer:
            slot.buffer.popleft()
            slot.overflow += 1
        slot.buffer.append(msg)

    async def start_child(self, spec: ChildSpec) -> None:
        """Add and start a dynamic child (e.g. one call tree). Returns once ready.

        Raises ``ValueError`` if the role is taken by a live child, or if the
        spec cannot be a child of this supervisor (``check_children``).
        """
        check_children([spec], self.auto_shutdown)
        existing = self._slots.get(spec.role)
        if existing is not None and existing.status is not SlotStatus.STOPPED:
            raise ValueError(f"role {spec.role!r} already running")
        if existing is not None:
            self._remove_slot(spec.role)
        slot = self._add_slot(spec)
        await self._start_slot(slot)

    def child(self, role: str) -> TrioActor | pykka.ActorRef[Any] | None:
        slot = self._slots.get(role)
        if slot is None:
            return None
        return slot.actor if slot.actor is not None else slot.ref

    def roles(self) -> list[str]:
        return list(self._order)

    async def wait_started(self) -> None:
        await self._started.wait()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def request_stop(self) -> None:
        """Stop all children (reverse order) and exit normally (trio thread).

        Idempotent and never raises, also after the supervisor has finished. The
        stop takes effect after the event being handled now: no restart starts
        after it.
        """
        if self._stop_requested:
            return
        self._stop_requested = True
        try:
            self._events_send.send_nowait(("stop", None))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # run() also checks the flag after every event

    def restart_child(self, role: str) -> bool:
        """Restart the running child ``role`` as if it had failed (an operator's
        action): stopped within its shutdown bound, then restarted by this
        supervisor's policy — backoff, restart counter, intensity, fallback —
        exactly like a crash, so the tree shows it. False (nothing done) when
        the role is unknown or its child is not running. Trio thread only."""
        slot = self._slots.get(role)
        if slot is None or slot.status is not SlotStatus.RUNNING or self._stop_requested:
            return False
        try:
            self._events_send.send_nowait(("operator_restart", (role, slot.generation)))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def find(self, role: str) -> "Supervisor | None":
        """The supervisor in this tree (itself or a descendant) with a child ``role``."""
        if role in self._slots:
            return self
        for slot in self._slots.values():
            if isinstance(slot.actor, Supervisor):
                found = slot.actor.find(role)
                if found is not None:
                    return found
        return None

    def snapshot(self) -> dict[str, Any]:
        """The tree as plain data: role, kind, status, restarts, fallback, ..."""
        now = trio.current_time()
        return {
            "role": self.name,
            "kind": "supervisor",
            "status": "running" if not self._finished.is_set() else "stopped",
            "strategy": self.strategy.value,
            "restarts": self.total_restarts,
            "abandoned": self.abandoned,
            "unknown_role_drops": self.unknown_role_drops,
            "fallback": False,
            "fallback_active": False,
            "mailbox_depth": 0,
            "handled": 0,
            "last_error": repr(self.exit_error) if self.exit_error else "",
            "uptime_s": round(now - self._born, 3) if hasattr(self, "_born") else 0.0,
            "children": [self._slot_snapshot(self._slots[r], now) for r in self._order],
        }

    # ------------------------------------------------------------------ TrioActor

    async def on_start(self) -> None:
        self._born = trio.current_time()
        try:
            for role in list(self._order):
                await self._start_slot(self._slots[role])
                if self._escalation is not None:
                    raise self._escalation
        except BaseException:
            # Cancelled (or failed) mid-start: run()'s cleanup never runs, and pykka
            # children already started would outlive the tree. Stop them here.
            with trio.CancelScope(shield=True):
                await self._stop_all()
            raise
        self._started.set()

    async def run(self) -> None:
        try:
            async for kind, payload in self._events_recv:
                if kind == "exit":
                    role, generation, error = payload
                    await self._handle_exit(role, generation, error)
                elif kind == "ready":
                    pass
                elif kind == "timer":
                    role, generation, action = payload
                    await self._handle_timer(role, generation, action)
                elif kind == "operator_restart":
                    role, generation = payload
                    slot = self._slots.get(role)
                    if slot is not None and slot.generation == generation and slot.status is SlotStatus.RUNNING:
                        await self._stop_incarnation(slot)
                        await self._handle_exit(role, generation, OperatorRestart(f"{role} restarted by the operator"))
                elif kind == "stop":
                    return
                if self._stop_requested:
                    return
                if self._escalation is not None:
                    raise self._escalation
                if self._auto_shutdown_due():
                    return
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_all()

    async def on_stop(self) -> None:
        self._finished.set()
        if self._on_exit is not None:
            try:
                self._on_exit(self, self.exit_error)
            except Exception:  # noqa: BLE001
                log.exception("supervisor on_exit hook failed")

    # ------------------------------------------------------------------ internals

    async def _handle_exit(self, role: str, generation: int, error: BaseException | None) -> None:
        slot = self._slots.get(role)
        if slot is None or slot.generation != generation:
            return
        spec = slot.spec
        slot.status = SlotStatus.STOPPED
        now = trio.current_time()
        if error is not None:
            slot.last_error = f"{type(error).__name__}: {error}"
            log.warning(
                "child failed",
                extra={"supervisor": self.name, "role": role, "error": slot.last_error},
            )
        if spec.restart is Restart.TEMPORARY or (spec.restart is Restart.TRANSIENT and error is None):
            # Not restarted. A significant child has ended by itself (OTP: a
            # transient one normally, a temporary one for any reason).
            if spec.significant:
                self._significant_exited += 1
            if spec.restart is Restart.TEMPORARY and not spec.significant:
                self._remove_slot(role)  # dynamic children leave no trace
            return
        # A failure after progress is restarted but counted toward neither the
        # intensity nor the fallback (engine.restart_policy).
        progressed = slot.ctx is not None and slot.ctx.generation == generation and slot.ctx.progressed
        if not self._intensity.note(now, counted=not progressed):
            self._escalation = SupervisorEscalation(
                f"{self.name}: more than {self.intensity} restarts in {self.period}s (last: {role}: {slot.last_error})"
            )
            self.exit_error = self._escalation
            return
        # How long the incarnation that just exited ran; 0 when it failed to start
        # (an earlier incarnation's long run must not reset the failure count).
        uptime = now - slot.run_since if slot.run_since is not None else 0.0
        was_probing = slot.policy.probing
        decision = slot.policy.on_failure(uptime=uptime, progressed=progressed, rng=self._rng)
        if decision.action is Action.GIVE_UP:
            await self._give_up(slot, error)
            return
        if not was_probing:
            self._event(role, "restart")
        if decision.action is Action.FALLBACK:
            self._event(role, "fallback")
            if not was_probing:
                log.warning("switching to fallback", extra={"supervisor": self.name, "role": role})
            await self._restart_group(slot, delay=0.0)
            self._schedule(slot, spec.probe_interval, "probe")
            return
        await self._restart_group(slot, delay=decision.delay)

    async def _give_up(self, slot: Slot, error: BaseException | None) -> None:
        """``SlotPolicy`` gave the child up (only with ``give_up_after``, see subclasses)."""
        self._remove_slot(slot.spec.role)

    def _event(self, role: str, what: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(role, what)
            except Exception:  # noqa: BLE001 - metrics must never break supervision
                log.debug("on_event hook failed", exc_info=True)

    async def _restart_group(self, slot: Slot, delay: float) -> None:
        """Restart ``slot`` (and its later siblings for rest_for_one / all for one_for_all)."""
        group = self._group_for(slot.spec.role)
        # Stop the others in reverse order (the failed one is already down).
        # Temporary ones are stopped too, and removed instead of restarted (OTP).
        for role in reversed(group):
            other = self._slots[role]
            if other is not slot and other.status in (SlotStatus.RUNNING, SlotStatus.STARTING):
                await self._stop_incarnation(other)
            if other.spec.restart is Restart.TEMPORARY:
                self._remove_slot(role)
        group = [r for r in group if r in self._slots]
        if delay > 0:
            for role in group:
                self._slots[role].status = SlotStatus.BACKOFF
            self._schedule(slot, delay, "restart")
            return
        for role in group:
            await self._start_slot(self._slots[role])

    def _group_for(self, role: str) -> list[str]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [role]
        if self.strategy is Strategy.REST_FOR_ONE:
            i = self._order.index(role)
            return list(self._order[i:])
        return list(self._order)

    async def _handle_timer(self, role: str, generation: int, action: str) -> None:
        slot = self._slots.get(role)
        if slot is None:
            return
        if action == "restart" and slot.generation == generation and slot.status is SlotStatus.BACKOFF:
            for r in self._group_for(role):
                other = self._slots[r]
                if other.spec.restart is not Restart.TEMPORARY and other.status in (SlotStatus.BACKOFF, SlotStatus.STOPPED):
                    await self._start_slot(self._slots[r])
        elif action == "probe" and slot.fallback_active and slot.status is not SlotStatus.RUNNING:
            # The fallback itself is restarting: probe once it has had another interval.
            self._schedule(slot, slot.spec.probe_interval, "probe")
        elif action == "probe" and slot.fallback_active and slot.status is SlotStatus.RUNNING:
            if slot.spec.probe_when is not None and not slot.spec.probe_when():
                self._schedule(slot, PROBE_RECHECK_S, "probe")  # not now (the caller is speaking)
                return
            self._event(role, "probe")
            await self._stop_incarnation(slot)
            slot.policy.start_probe()
            await self._start_slot(slot)
            if slot.status is SlotStatus.RUNNING:
                self._schedule(slot, slot.spec.probe_hold, "probe_hold")
        elif action == "probe_hold" and slot.policy.probing and slot.generation == generation:
            if slot.status is SlotStatus.RUNNING and slot.policy.probe_held():
                self._event(role, "restored")
                log.warning("primary restored", extra={"supervisor": self.name, "role": role})

    def _auto_shutdown_due(self) -> bool:
        exited = self._significant_exited
        if not exited or self.auto_shutdown is AutoShutdown.NEVER:
            return False
        if self.auto_shutdown is AutoShutdown.ANY_SIGNIFICANT:
            return True
        remaining = [
            s for s in self._slots.values() if s.spec.significant and s.status is not SlotStatus.STOPPED
        ]
        return not remaining

    def _slot_snapshot(self, slot: Slot, now: float) -> dict[str, Any]:
        if slot.actor is not None and isinstance(slot.actor, Supervisor):
            snap = slot.actor.snapshot()
            snap["role"] = slot.spec.role
            snap["restarts"] = slot.restarts
            return snap
        return slot.snapshot(now)


class _RootParent:
    """The parent of a root supervisor: it has no one to report to."""

    def child_ready(self, role: str, generation: int) -> None:
        pass

    def child_exited(self, role: str, generation: int, error: BaseException | None) -> None:
        pass

    def tell_role(self, role: str, msg: Any) -> None:
        pass


async def run_root(
    sup: Supervisor, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``sup`` as the root of a tree in the current task.

    ``task_status.started(sup)`` is called once every child is ready. Returns when
    the supervisor stops normally (``request_stop`` or auto-shutdown); raises
    ``SupervisorEscalation`` when it gives up. Cancellation stops the children in
    reverse order within their shutdown bounds before propagating.
    """
    sup.attach(ActorContext(sup.name, 1, _RootParent(), sup.env))
    try:
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            await sup.on_start()
            task_status.started(sup)
            await sup.run()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    finally:
        with trio.CancelScope(shield=True):
            await sup.on_stop()
