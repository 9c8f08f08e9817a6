"""The restart policy as data and pure decisions: no trio, no threads, no clock.

``engine.supervisor`` runs actors; this module decides what happens when one
exits. Everything here takes the time as an argument, so it is tested with
plain numbers (``tests/test_restart_policy.py``), and the supervisor's trio code
only carries the decisions out.

What is decided here, and whose meaning it has:

- ``ChildSpec`` and its validation, as OTP's ``supervisor:check_childspecs``:
  a non-empty role, ``restart`` one of ``Restart``, ``shutdown`` a positive
  number of seconds, ``INFINITY`` or ``BRUTAL_KILL``, ``significant`` only for
  transient and temporary children, and a ``fallback`` only where it can run
  (a temporary child is never restarted, so a fallback there is a mistake).
  ``check_children`` adds what needs the whole list: unique roles, and no
  significant child under ``AutoShutdown.NEVER`` (OTP rejects it: it would
  mean nothing).
- ``RestartIntensity``: OTP's restart intensity. Every restart is stamped; the
  stamps older than ``period`` seconds are forgotten; more than ``intensity``
  stamps left means the supervisor gives up. A restart after progress (see
  below) is made but not stamped: intensity stops crash loops, and a child that
  does useful work between failures is not in one.
- ``Backoff``: Akka's ``restartWithBackoff``. Restart ``n`` of a run of
  consecutive failures waits ``min(max, base * 2**(n-1)) * uniform(1, 1 + jitter)``.
- ``SlotPolicy``: one child slot's failure history. Consecutive failures reset
  when the incarnation ran ``stable_after`` seconds or reported progress
  (``ActorContext.report_progress``); a failure after progress is not counted
  at all. With a ``fallback``, the failure after ``max_retries`` counted ones
  switches the slot to the fallback at once; after ``probe_interval`` the slot
  is half-open (the primary runs again); a probe that survives ``probe_hold``
  closes it, one that fails reopens it at once. With ``give_up_after`` (dynamic
  children, see ``engine.dynamic_supervisor``) the failure after that many
  counted ones is final: the child is not restarted.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

__all__ = [
    "Restart",
    "Strategy",
    "AutoShutdown",
    "INFINITY",
    "BRUTAL_KILL",
    "Backoff",
    "ChildSpec",
    "check_children",
    "as_enum",
    "RestartIntensity",
    "Action",
    "Decision",
    "SlotPolicy",
]


class Restart(str, enum.Enum):
    """When a child is restarted (OTP ``restart``)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (an exception)
    TEMPORARY = "temporary"  # never; the child leaves no trace


class Strategy(str, enum.Enum):
    """Which siblings a failure takes down with it (OTP ``strategy``)."""

    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


class AutoShutdown(str, enum.Enum):
    """When significant children ending by themselves end the supervisor (OTP ``auto_shutdown``).

    A significant child *ends* when a transient one exits normally, or a
    temporary one exits for any reason. Stops the supervisor itself makes
    (another child's restart group, its own shutdown) never count.
    """

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


#: ``ChildSpec.shutdown``: wait for the child's own stop however long it takes.
INFINITY = math.inf
#: ``ChildSpec.shutdown``: do not wait for the child's stop at all (its
#: ``on_stop`` gets no time; a pykka thread is told to stop and abandoned).
BRUTAL_KILL = "brutal_kill"


def as_enum(cls: type[enum.Enum], name: str, value: Any) -> Any:
    """``cls(value)``, or a ``ValueError`` naming the field and the allowed values."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)  # type: ignore[attr-defined]
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def _number(name: str, value: Any, *, minimum: float, strict: bool = False, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok and integer:
        ok = isinstance(value, int)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be {kind} {bound}; got {value!r}")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Akka's ``restartWithBackoff`` delays (seconds)."""

    base: float = 0.2
    max: float = 5.0
    jitter: float = 0.2  # fraction added on top: delay * uniform(1, 1 + jitter)

    def __post_init__(self) -> None:
        _number("backoff.base", self.base, minimum=0.0)
        _number("backoff.max", self.max, minimum=0.0)
        _number("backoff.jitter", self.jitter, minimum=0.0)

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        """Delay before restart number ``n`` (1-based) of consecutive failures."""
        d = min(self.max, self.base * (2 ** max(0, n - 1)))
        r = (rng or random).random()
        return d * (1.0 + self.jitter * r)


#: How often a probe held back by ``ChildSpec.probe_when`` asks again.
PROBE_RECHECK_S = 0.25


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor. Validated on construction (``ValueError`` naming the field).

    ``factory(ctx)`` returns a ``TrioActor`` or the ``ActorRef`` of a started
    ``PykkaActor`` (``engine.actor``); so does ``fallback``. ``shutdown`` is
    normalised to seconds: ``INFINITY`` is ``math.inf``, ``BRUTAL_KILL`` is 0.
    ``probe_when``: the half-open probe starts only when this returns True (asked
    when the probe is due, then every ``PROBE_RECHECK_S``): a switch of a speech
    recognizer while the caller is speaking would cut the utterance in two.
    """

    role: str
    factory: Callable[[Any], Any]
    restart: Restart = Restart.PERMANENT
    fallback: Callable[[Any], Any] | None = None
    max_retries: int = 3  # restarts of the primary before the fallback takes over
    backoff: Backoff = field(default_factory=Backoff)
    stable_after: float = 10.0
    probe_interval: float = 30.0
    probe_hold: float = 5.0
    probe_when: Callable[[], bool] | None = None
    significant: bool = False
    shutdown: float = 2.0
    buffer: int = 256
    start_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role:
            raise ValueError(f"role must be a non-empty string; got {self.role!r}")
        where = f"child {self.role!r}: "
        try:
            object.__setattr__(self, "restart", as_enum(Restart, "restart", self.restart))
            if not callable(self.factory):
                raise ValueError(f"factory must be callable; got {self.factory!r}")
            if self.fallback is not None and not callable(self.fallback):
                raise ValueError(f"fallback must be callable or None; got {self.fallback!r}")
            if self.probe_when is not None and not callable(self.probe_when):
                raise ValueError(f"probe_when must be callable or None; got {self.probe_when!r}")
            if self.fallback is not None and self.restart is Restart.TEMPORARY:
                raise ValueError("fallback is meaningless for a temporary child (it is never restarted)")
            if not isinstance(self.significant, bool):
                raise ValueError(f"significant must be a bool; got {self.significant!r}")
            if self.significant and self.restart is Restart.PERMANENT:
                raise ValueError("significant requires restart transient or temporary (a permanent child never ends)")
            if not isinstance(self.backoff, Backoff):
                raise ValueError(f"backoff must be a Backoff; got {self.backoff!r}")
            shutdown = self.shutdown
            if shutdown == BRUTAL_KILL:
                shutdown = 0.0
            elif shutdown in ("infinity", INFINITY):
                shutdown = INFINITY
            else:
                _number("shutdown", shutdown, minimum=0.0, strict=True)
            object.__setattr__(self, "shutdown", float(shutdown))
            _number("max_retries", self.max_retries, minimum=0, integer=True)
            _number("stable_after", self.stable_after, minimum=0.0)
            _number("probe_interval", self.probe_interval, minimum=0.0, strict=True)
            _number("probe_hold", self.probe_hold, minimum=0.0)
            _number("buffer", self.buffer, minimum=0, integer=True)
            _number("start_timeout", self.start_timeout, minimum=0.0, strict=True)
        except ValueError as exc:
            raise ValueError(where + str(exc)) from None


def check_children(specs: Iterable[ChildSpec], auto_shutdown: AutoShutdown) -> None:
    """What OTP checks over a supervisor's child list (``ValueError`` naming the child)."""
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise ValueError(f"children must be ChildSpec; got {spec!r}")
        if spec.role in seen:
            raise ValueError(f"child {spec.role!r}: role is not unique among the children")
        seen.add(spec.role)
        if spec.significant and auto_shutdown is AutoShutdown.NEVER:
            raise ValueError(f"child {spec.role!r}: significant requires auto_shutdown any_significant or all_significant")


class RestartIntensity:
    """OTP's restart intensity: more than ``intensity`` restarts within ``period`` seconds fails.

    ``note`` keeps the stamps ``t`` with ``now - t <= period`` (OTP's
    ``add_restart``), so ``intensity`` restarts inside the period are allowed and
    the next one is not; ``intensity`` 0 allows none.
    """

    def __init__(self, intensity: int, period: float) -> None:
        _number("intensity", intensity, minimum=0, integer=True)
        _number("period", period, minimum=0.0, strict=True)
        self.intensity = intensity
        self.period = period
        self.total = 0  # every restart, counted or not
        self._stamps: deque[float] = deque()

    def note(self, now: float, *, counted: bool = True) -> bool:
        """Record a restart at ``now``. False when the supervisor must give up."""
        self.total += 1
        if counted:
            self._stamps.append(now)
        while self._stamps and now - self._stamps[0] > self.period:
            self._stamps.popleft()
        return len(self._stamps) <= self.intensity

    def in_window(self) -> int:
        return len(self._stamps)


class Action(str, enum.Enum):
    RESTART = "restart"  # start the same factory again after ``delay``
    FALLBACK = "fallback"  # start the fallback now (switch, or a failed probe)
    GIVE_UP = "give_up"  # do not restart (``give_up_after`` exceeded)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0


class SlotPolicy:
    """One slot's consecutive failures, fallback and half-open probe (see module docstring)."""

    __slots__ = ("spec", "give_up_after", "failures", "restarts", "fallback_active", "probing", "fallbacks", "probes")

    def __init__(self, spec: ChildSpec, *, give_up_after: int | None = None) -> None:
        self.spec = spec
        self.give_up_after = give_up_after
        self.failures = 0  # consecutive counted failures
        self.restarts = 0
        self.fallback_active = False
        self.probing = False
        self.fallbacks = 0
        self.probes = 0

    def on_failure(self, *, uptime: float, progressed: bool, rng: random.Random | None = None) -> Decision:
        """The incarnation failed after running ``uptime`` seconds (0 if it never got running)."""
        spec = self.spec
        if self.probing:
            self.probing = False
            self.fallback_active = True
            self.restarts += 1
            return Decision(Action.FALLBACK)
        if uptime >= spec.stable_after or progressed:
            self.failures = 0
        if not progressed:
            self.failures += 1
        if self.give_up_after is not None and self.failures > self.give_up_after:
            return Decision(Action.GIVE_UP)
        self.restarts += 1
        if spec.fallback is not None and not self.fallback_active and self.failures > spec.max_retries:
            self.fallback_active = True
            self.fallbacks += 1
            self.failures = 0
            return Decision(Action.FALLBACK)
        return Decision(Action.RESTART, spec.backoff.delay(self.failures, rng))

    def start_probe(self) -> None:
        """The probe interval passed with the fallback running: try the primary again."""
        self.probes += 1
        self.fallback_active = False
        self.probing = True

    def probe_held(self) -> bool:
        """The probing primary ran ``probe_hold`` seconds: True when this closes the circuit."""
        if not self.probing:
            return False
        self.probing = False
        self.failures = 0
        return True
