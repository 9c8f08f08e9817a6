"""A supervisor of keyed children started on demand, with passivation.

OTP's ``simple_one_for_one`` (Elixir's ``DynamicSupervisor``): no children at
start; each is added for a key when first needed, one_for_one, and a child that
ends normally leaves no trace. To that it adds Akka's passivation: an idle child
is stopped (``passivate``) and the next ``activate`` for its key starts a fresh
one, which restores whatever it needs from durable state. One WhatsApp chat's
tree is one child (``whatsapp_bridge.chat``).

Guarantees (trio thread, like every ``Supervisor`` method):

- ``activate(key, make_spec)`` never blocks and is idempotent: a running,
  starting or backing-off child is left alone; while the key's previous child
  is being stopped (passivated, or exiting) the new one is started as soon as
  it has stopped, never beside it; otherwise it is started now in the
  supervisor's nursery. ``make_spec()`` is called at that start.
- A child that fails is restarted by its spec (``restart`` transient or
  permanent) with its backoff; with ``give_up_after`` the failure after that
  many consecutive counted ones (``engine.restart_policy.SlotPolicy``: progress
  reported through the child's ``ActorContext`` resets the count) is final: the
  child is removed and ``on_give_up(key, error)`` told. The supervisor's own
  intensity still applies to all children together, as in OTP.
- ``passivate(key)`` stops a running child (within its ``shutdown`` bound) and
  removes it; it does not count as an exit of the child's own.
- ``auto_shutdown`` is always ``never`` (OTP rejects it for dynamic
  supervisors: children come and go by design).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping

from engine.child_slot import Slot, SlotStatus
from engine.restart_policy import ChildSpec
from engine.supervisor import Supervisor

__all__ = ["DynamicSupervisor"]

log = logging.getLogger("callengine.supervisor")

SpecFactory = Callable[[], ChildSpec]
GiveUpHook = Callable[[str, "BaseException | None"], None]


class DynamicSupervisor(Supervisor):
    """Keyed children on demand, restarted or given up by their spec, passivated when idle."""

    def __init__(
        self,
        name: str,
        *,
        intensity: int = 1_000_000,
        period: float = 1.0,
        give_up_after: int | None = None,
        on_give_up: GiveUpHook | None = None,
        env: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        on_exit: Callable[[Supervisor, BaseException | None], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(
            name, [], intensity=intensity, period=period, env=env, rng=rng, on_exit=on_exit, on_event=on_event
        )
        self.give_up_after = give_up_after
        self._on_give_up = on_give_up
        # Keys to start once their old child is gone: (make_spec, give_up_after, on_give_up).
        self._wanted: dict[str, tuple[SpecFactory, int | None, GiveUpHook | None]] = {}
        self._give_up_hooks: dict[str, GiveUpHook | None] = {}
        self._passivating: set[str] = set()
        self._closing = False  # stopping its children: nothing new starts
        self.passivations = 0
        self.given_up = 0

    # ------------------------------------------------------------------ public API

    def activate(
        self,
        key: str,
        make_spec: SpecFactory,
        *,
        give_up_after: int | None = None,
        on_give_up: GiveUpHook | None = None,
    ) -> bool:
        """Have a child for ``key`` running (see module docstring). False when this
        supervisor is stopping or stopped: nothing will be started.

        ``give_up_after`` and ``on_give_up``, when given, replace the
        supervisor's defaults for the child this call starts."""
        if self._closing or self._stop_requested or self._finished.is_set() or not self._started.is_set():
            return False
        slot = self._slots.get(key)
        if slot is not None and key not in self._passivating and slot.status is not SlotStatus.STOPPED:
            return True  # running, starting or backing off
        pending = key in self._wanted
        self._wanted[key] = (
            make_spec,
            give_up_after if give_up_after is not None else self.give_up_after,
            on_give_up if on_give_up is not None else self._on_give_up,
        )
        if slot is None and not pending:
            self.nursery.start_soon(self._start_wanted, key)
        # else: its old child is stopping; _gone() starts the new one.
        return True

    def passivate(self, key: str) -> bool:
        """Stop ``key``'s running child (idle); the next ``activate`` starts a new one.
        False (nothing done) unless it is running and not already being stopped."""
        slot = self._slots.get(key)
        if slot is None or slot.status is not SlotStatus.RUNNING or key in self._passivating or self._stop_requested:
            return False
        self._passivating.add(key)
        self.nursery.start_soon(self._passivate_now, key, slot)
        return True

    def active(self, key: str) -> bool:
        """A child for ``key`` exists and is not being passivated."""
        return key in self._slots and key not in self._passivating

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["passivations"] = self.passivations
        snap["given_up"] = self.given_up
        return snap

    # ------------------------------------------------------------------ internals

    async def _start_wanted(self, key: str) -> None:
        wanted = self._wanted.pop(key, None)
        if wanted is None or self._closing or self._stop_requested or key in self._slots:
            return
        make_spec, give_up_after, on_give_up = wanted
        self._give_up_hooks[key] = on_give_up
        try:
            spec = make_spec()
        except Exception as exc:  # noqa: BLE001 - a bad spec is this key's failure, not the supervisor's
            log.error("dynamic child spec failed", extra={"supervisor": self.name, "role": key, "error": repr(exc)})
            self._report_give_up(key, exc)
            return
        if spec.role != key:
            self._report_give_up(key, ValueError(f"spec role {spec.role!r} is not the key {key!r}"))
            return
        slot = self._add_slot(spec, give_up_after)
        await self._start_slot(slot)

    async def _passivate_now(self, key: str, slot: Slot) -> None:
        try:
            if self._slots.get(key) is slot and slot.status is SlotStatus.RUNNING:
                await self._stop_incarnation(slot)
                if self._slots.get(key) is slot:
                    self._remove_slot(key)
                    self.passivations += 1
                    self._event(key, "passivated")
        finally:
            self._passivating.discard(key)
        self._gone(key)

    async def _handle_exit(self, role: str, generation: int, error: BaseException | None) -> None:
        slot = self._slots.get(role)
        if slot is None or slot.generation != generation:
            return
        await super()._handle_exit(role, generation, error)
        if self._slots.get(role) is slot and slot.status is SlotStatus.STOPPED:
            self._remove_slot(role)  # ended normally (or stopped): no trace, as in OTP
        self._gone(role)

    async def _give_up(self, slot: Slot, error: BaseException | None) -> None:
        role = slot.spec.role
        self._remove_slot(role)
        log.error("dynamic child given up", extra={"supervisor": self.name, "role": role, "error": slot.last_error})
        self._report_give_up(role, error)

    def _report_give_up(self, key: str, error: BaseException | None) -> None:
        self.given_up += 1
        self._event(key, "given_up")
        hook = self._give_up_hooks.pop(key, None)
        if hook is not None:
            try:
                hook(key, error)
            except Exception:  # noqa: BLE001 - a hook must not take the other children down
                log.exception("on_give_up hook failed")

    def _gone(self, key: str) -> None:
        """``key`` has no child now (or it was restarted): start a wanted one."""
        if key in self._slots:
            return
        self._give_up_hooks.pop(key, None)
        if key not in self._wanted or self._closing or self._stop_requested:
            return
        try:
            self.nursery.start_soon(self._start_wanted, key)
        except RuntimeError:  # the nursery is closing: the supervisor is stopping
            self._wanted.pop(key, None)

    async def _stop_all(self) -> None:
        self._closing = True
        self._wanted.clear()
        await super()._stop_all()
