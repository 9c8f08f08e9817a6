"""Supervision semantics of ``engine.supervisor`` (OTP + Akka backoff + fallback).

Trio-only trees run under trio's ``MockClock(autojump_threshold=0)`` (the
``autojump_clock`` fixture): backoff delays, probe intervals and shutdown bounds
are then exact and cost no wall time. Trees with pykka children involve real
threads, so they run on the real clock with short backoffs and bounded polls.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

import pykka
import pytest
import trio

from engine.actor import PykkaActor, TrioActor
from engine.restart_policy import PROBE_RECHECK_S
from engine.supervisor import (
    AutoShutdown,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    run_root,
)

# ---------------------------------------------------------------- helpers


class Log:
    """Lifecycle events of a test tree, with the trio clock at each (trio thread only)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []

    def add(self, what: str, role: str) -> None:
        self.events.append((what, role, trio.current_time()))

    def of(self, what: str, role: str) -> list[float]:
        return [t for w, r, t in self.events if w == what and r == role]

    def sequence(self, since: int = 0) -> list[tuple[str, str]]:
        return [(w, r) for w, r, _ in self.events[since:]]


class Recorded(TrioActor):
    """A trio actor that logs start/stop, records messages, and fails on ``"fail"``."""

    def __init__(
        self,
        log: Log,
        role: str,
        *,
        fail_start: bool = False,
        fail_after: float | None = None,
        got: list[Any] | None = None,
    ) -> None:
        super().__init__()
        self.log = log
        self.role = role
        self.fail_start = fail_start
        self.fail_after = fail_after
        self.got = got if got is not None else []

    async def on_start(self) -> None:
        self.log.add("start", self.role)
        if self.fail_start:
            raise RuntimeError(f"{self.role} cannot start")
        if self.fail_after is not None:
            self.nursery.start_soon(self._fail_later, self.fail_after)

    async def _fail_later(self, after: float) -> None:
        await trio.sleep(after)
        raise RuntimeError(f"{self.role} died after {after}s")

    async def receive(self, msg: Any) -> None:
        if msg == "fail":
            raise RuntimeError(f"{self.role} asked to fail")
        if msg == "exit":
            self.stop_self()
            return
        self.got.append(msg)

    async def on_stop(self) -> None:
        self.log.add("stop", self.role)


def counted(make: Callable[[], TrioActor], counter: list[int]) -> Callable[[Any], TrioActor]:
    """A factory that counts its calls in ``counter[0]``."""

    def factory(ctx: Any) -> TrioActor:
        counter[0] += 1
        return make()

    return factory


async def settle(seconds: float = 0.001) -> None:
    """Let queued supervisor events run (mock clock: costs no wall time)."""
    await trio.sleep(seconds)


def child_snap(sup: Supervisor, role: str) -> dict[str, Any]:
    for c in sup.snapshot()["children"]:
        if c["role"] == role:
            return c
    raise KeyError(role)


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Real-clock poll for trees with pykka children (bounded; fails loudly)."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out waiting for {what or pred}")


# ---------------------------------------------------------------- restarts and backoff


async def _backoff_run(seed: int, failures: int, backoff: Backoff) -> list[float]:
    """Run a child that fails ``failures`` times after starting; return its start times."""
    log = Log()
    left = [failures]

    def factory(ctx: Any) -> TrioActor:
        fail = left[0] > 0
        left[0] -= 1
        return Recorded(log, "w", fail_after=0.0 if fail else None)

    sup = Supervisor(
        "t",
        [ChildSpec("w", factory, backoff=backoff, stable_after=100.0)],
        intensity=100,
        period=1000.0,
        rng=random.Random(seed),
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(60)
        snap = child_snap(sup, "w")
        assert snap["restarts"] == failures
        assert snap["status"] == "running"
        assert snap["last_error"] == "RuntimeError: w died after 0.0s"
        sup.request_stop()
    return log.of("start", "w")


async def test_n_failures_give_n_restarts_with_backoff_in_range(autojump_clock: Any) -> None:
    backoff = Backoff(base=0.1, max=0.5, jitter=0.25)
    starts = await _backoff_run(seed=7, failures=5, backoff=backoff)
    assert len(starts) == 6  # the first start and exactly 5 restarts
    delays = [b - a for a, b in zip(starts, starts[1:])]
    for n, d in enumerate(delays, start=1):
        lo = min(backoff.max, backoff.base * 2 ** (n - 1))
        assert lo - 1e-9 <= d <= lo * (1 + backoff.jitter) + 1e-9, (n, d)
    # Capped: restarts 4 and 5 would be 0.8 and 1.6 without the cap.
    assert max(delays) <= backoff.max * (1 + backoff.jitter) + 1e-9
    # Exactly what Backoff.delay draws from the same seeded rng.
    rng = random.Random(7)
    expected = [backoff.delay(n, rng) for n in range(1, 6)]
    assert delays == pytest.approx(expected, abs=1e-9)


async def test_seeded_rng_makes_delays_reproducible(autojump_clock: Any) -> None:
    backoff = Backoff(base=0.1, max=5.0, jitter=0.5)

    def delays(starts: list[float]) -> list[float]:
        return [b - a for a, b in zip(starts, starts[1:])]

    a = delays(await _backoff_run(seed=42, failures=4, backoff=backoff))
    b = delays(await _backoff_run(seed=42, failures=4, backoff=backoff))
    c = delays(await _backoff_run(seed=43, failures=4, backoff=backoff))
    assert a == pytest.approx(b, abs=1e-9)
    assert a != pytest.approx(c, abs=1e-9)


async def test_consecutive_failures_reset_after_stable_after(autojump_clock: Any) -> None:
    """A child that ran ``stable_after`` seconds restarts with the base delay again."""
    log = Log()
    plan = [0.0, 0.0, 20.0, 0.0]  # fail after: immediately, immediately, after 20 s, immediately
    backoff = Backoff(base=1.0, max=60.0, jitter=0.0)

    def factory(ctx: Any) -> TrioActor:
        after = plan.pop(0) if plan else None
        return Recorded(log, "w", fail_after=after)

    sup = Supervisor("t", [ChildSpec("w", factory, backoff=backoff, stable_after=10.0)], intensity=100, period=1.0)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(100)
        sup.request_stop()
    s = log.of("start", "w")
    delays = [round(b - a, 6) for a, b in zip(s, s[1:])]
    # 1 s, 2 s, then 20 s of running + 1 s (counter reset), then 2 s.
    assert delays == [1.0, 2.0, 21.0, 2.0]


# ---------------------------------------------------------------- retry before fallback, half-open probe


STT_BACKOFF = Backoff(base=0.2, max=5.0, jitter=0.2)


def stt_spec(primary: Callable[[Any], TrioActor], fallback: Callable[[Any], TrioActor], **kw: Any) -> ChildSpec:
    """The STT slot's numbers: 3 tries at 0.2 s doubling, then the local recognizer."""
    kw.setdefault("probe_interval", 30.0)
    kw.setdefault("probe_hold", 5.0)
    return ChildSpec("stt", primary, fallback=fallback, max_retries=3, backoff=STT_BACKOFF, **kw)


async def test_fallback_after_max_retries(autojump_clock: Any) -> None:
    log = Log()
    primaries, fallbacks = [0], [0]
    sup = Supervisor(
        "call",
        [
            stt_spec(
                counted(lambda: Recorded(log, "primary", fail_start=True), primaries),
                counted(lambda: Recorded(log, "fallback"), fallbacks),
                probe_interval=1000.0,
            )
        ],
        intensity=10,
        period=10.0,
        rng=random.Random(1),
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(10)
        assert primaries[0] == 4  # max_retries + 1
        assert fallbacks[0] == 1
        p = log.of("start", "primary")
        delays = [b - a for a, b in zip(p, p[1:])]
        for n_, d in enumerate(delays, start=1):
            lo = 0.2 * 2 ** (n_ - 1)
            assert lo - 1e-9 <= d <= lo * 1.2 + 1e-9
        # The fallback starts at once after the last failed try: the call must not go quiet.
        assert log.of("start", "fallback") == [pytest.approx(p[-1], abs=1e-9)]
        snap = child_snap(sup, "stt")
        assert snap["fallback"] is True
        assert snap["status"] == "fallback"
        assert snap["fallbacks"] == 1
        assert snap["restarts"] == 4
        sup.request_stop()


async def test_fallback_even_after_a_long_healthy_run(autojump_clock: Any) -> None:
    """A primary that ran for long, then cannot even start again, still falls back.

    Regression: the uptime of a failed *start* was measured from the previous
    incarnation's start, so every start failure reset the consecutive-failure
    count and the fallback never came (the tree escalated instead).
    """
    log = Log()
    made = [0]

    def primary(ctx: Any) -> TrioActor:
        made[0] += 1
        if made[0] == 1:
            return Recorded(log, "primary", fail_after=60.0)  # healthy for a minute
        return Recorded(log, "primary", fail_start=True)  # then the vendor is down

    fallbacks = [0]
    sup = Supervisor(
        "call",
        [stt_spec(primary, counted(lambda: Recorded(log, "fallback"), fallbacks), stable_after=10.0, probe_interval=1000.0)],
        intensity=10,
        period=10.0,
    )
    async with trio.open_nursery() as n:
        await trio.sleep(1)  # the trio clock is not at zero when the primary first starts
        await n.start(run_root, sup)
        await trio.sleep(70)
        assert made[0] == 4  # the long run, then 3 failed tries
        assert fallbacks[0] == 1
        assert child_snap(sup, "stt")["fallback"] is True
        sup.request_stop()


class Progressing(Recorded):
    """Fails ``fail_after`` s after starting; reports progress first when ``progress``."""

    def __init__(self, log: Log, role: str, *, fail_after: float, progress: bool) -> None:
        super().__init__(log, role)
        self.progress = progress
        self.die_after = fail_after

    async def on_start(self) -> None:
        await super().on_start()
        self.nursery.start_soon(self._die)

    async def _die(self) -> None:
        await trio.sleep(self.die_after)
        if self.progress:
            self.ctx.report_progress()
        raise RuntimeError(f"{self.role} lost its stream")


async def test_failures_after_progress_never_reach_the_fallback(autojump_clock: Any) -> None:
    """A primary that dies every 3 s, each time after doing useful work, is restarted
    after the first backoff step every time and never handed to the fallback (its
    uptime, 3 s, is far below ``stable_after``); one that reports no progress falls
    back after ``max_retries``, as before."""
    for progress, want_fallback in ((True, False), (False, True)):
        log = Log()
        primaries, fallbacks = [0], [0]
        sup = Supervisor(
            "call",
            [
                stt_spec(
                    counted(lambda: Progressing(log, "primary", fail_after=3.0, progress=progress), primaries),
                    counted(lambda: Recorded(log, "fallback"), fallbacks),
                    stable_after=10.0,
                    probe_interval=1000.0,
                )
            ],
            intensity=100,
            period=10.0,
            rng=random.Random(2),
        )
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            await trio.sleep(30)
            snap = child_snap(sup, "stt")
            sup.request_stop()
        assert snap["fallback"] is want_fallback, (progress, snap)
        assert (fallbacks[0] > 0) is want_fallback
        if progress:
            assert primaries[0] >= 9 and snap["restarts"] == primaries[0] - 1
            p = log.of("start", "primary")
            delays = [b - a - 3.0 for a, b in zip(p, p[1:])]
            assert all(0.2 - 1e-9 <= d <= 0.2 * 1.2 + 1e-9 for d in delays), delays  # first step each time
        else:
            assert primaries[0] == 4


async def test_restarts_after_progress_do_not_count_toward_intensity(autojump_clock: Any) -> None:
    """Intensity stops crash loops: a child that fails every 2 s after doing useful
    work runs on under ``intensity=3`` per 10 s; the same failures without progress
    escalate."""
    def tree(progress: bool) -> Supervisor:
        log = Log()
        return Supervisor(
            "call",
            [ChildSpec("w", lambda ctx: Progressing(log, "w", fail_after=2.0, progress=progress), stable_after=10.0)],
            intensity=3,
            period=10.0,
        )

    sup = tree(progress=True)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(50)
        sup.request_stop()
    assert sup.exit_error is None and sup.total_restarts >= 20, (sup.exit_error, sup.total_restarts)
    sup = tree(progress=False)
    with pytest.raises(SupervisorEscalation, match="more than 3 restarts"):
        await run_root(sup)
    assert sup.total_restarts == 4


async def test_progress_of_an_earlier_incarnation_does_not_excuse_a_later_one(autojump_clock: Any) -> None:
    """Progress is per incarnation: after one that progressed, four that cannot start
    (a refused open) still bring the fallback."""
    log = Log()
    made, fallbacks = [0], [0]

    def primary(ctx: Any) -> TrioActor:
        made[0] += 1
        if made[0] == 1:
            return Progressing(log, "primary", fail_after=2.0, progress=True)
        return Recorded(log, "primary", fail_start=True)

    sup = Supervisor(
        "call",
        [stt_spec(primary, counted(lambda: Recorded(log, "fallback"), fallbacks), probe_interval=1000.0)],
        intensity=100,
        period=10.0,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(20)
        snap = child_snap(sup, "stt")
        sup.request_stop()
    assert made[0] == 5  # the one that progressed, then four refused opens
    assert fallbacks[0] == 1 and snap["fallback"] is True


def healthy_from_the_probe(log: "Log", primaries: list[int]) -> Callable[[Any], TrioActor]:
    """A primary whose first four starts fail (the try and three retries) and which
    is healthy from the probe on; ``primaries[0]`` counts the starts."""

    def primary(ctx: Any) -> TrioActor:
        primaries[0] += 1
        return Recorded(log, "primary", fail_start=primaries[0] <= 4)

    return primary


def probe_supervisor(
    log: "Log", primaries: list[int], fallback: Callable[[Any], TrioActor] | None = None, **spec: Any
) -> Supervisor:
    """A call's supervisor whose STT primary is ``healthy_from_the_probe`` (probe every
    30 s, held 5 s unless ``spec`` says otherwise); the fallback is recorded as "fallback"."""
    primary = healthy_from_the_probe(log, primaries)
    fallback = fallback or (lambda ctx: Recorded(log, "fallback"))
    return Supervisor("call", [stt_spec(primary, fallback, **spec)], intensity=10, period=10.0)


async def test_probe_that_holds_returns_to_primary(autojump_clock: Any) -> None:
    log = Log()
    primaries = [0]
    sup = probe_supervisor(log, primaries)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(10)
        (fb_start,) = log.of("start", "fallback")
        assert child_snap(sup, "stt")["fallback"] is True
        await trio.sleep(22)  # 2 s after the probe began: half-open, not yet held
        assert primaries[0] == 5
        assert log.of("start", "primary")[-1] == pytest.approx(fb_start + 30.0, abs=1e-9)
        assert log.of("stop", "fallback") == [pytest.approx(fb_start + 30.0, abs=1e-9)]
        await trio.sleep(10)  # past probe_hold
        snap = child_snap(sup, "stt")
        assert snap["fallback"] is False
        assert snap["status"] == "running"
        assert snap["probes"] == 1
        await trio.sleep(100)  # closed: no further probes, the primary stays
        assert primaries[0] == 5
        assert len(log.of("start", "fallback")) == 1
        sup.request_stop()


async def test_a_probe_waits_until_probe_when_allows_it(autojump_clock: Any) -> None:
    """The STT's probe is held back while the caller speaks (``probe_when`` false),
    asked again every PROBE_RECHECK_S, and runs as soon as it is allowed."""
    log = Log()
    primaries = [0]
    speaking = [True]
    sup = probe_supervisor(log, primaries, probe_when=lambda: not speaking[0])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(10)
        (fb_start,) = log.of("start", "fallback")
        await trio.sleep(fb_start + 45.0 - trio.current_time())  # 15 s past the due probe
        assert primaries[0] == 4 and child_snap(sup, "stt")["probes"] == 0  # held back
        speaking[0] = False
        await trio.sleep(1.0)
        assert primaries[0] == 5  # the probe ran within a recheck
        assert log.of("start", "primary")[-1] - (fb_start + 45.0) <= PROBE_RECHECK_S + 1e-9
        sup.request_stop()


async def test_probe_that_fails_brings_fallback_back_and_reschedules(autojump_clock: Any) -> None:
    log = Log()
    primaries, fallbacks = [0], [0]

    def primary(ctx: Any) -> TrioActor:
        primaries[0] += 1
        if primaries[0] <= 4:
            return Recorded(log, "primary", fail_start=True)
        return Recorded(log, "primary", fail_after=1.0)  # probes start, then fail within probe_hold

    sup = Supervisor(
        "call",
        [stt_spec(primary, counted(lambda: Recorded(log, "fallback"), fallbacks), probe_interval=30.0, probe_hold=5.0)],
        intensity=10,
        period=10.0,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(10)
        (fb1,) = log.of("start", "fallback")
        await trio.sleep(30)  # the first probe began at fb1+30 and failed at fb1+31
        assert primaries[0] == 5
        fb = log.of("start", "fallback")
        assert fb == [pytest.approx(fb1, abs=1e-9), pytest.approx(fb1 + 31.0, abs=1e-9)]
        snap = child_snap(sup, "stt")
        assert snap["fallback"] is True and snap["status"] == "fallback"
        await trio.sleep(30)  # the next probe, probe_interval after the fallback came back
        assert primaries[0] == 6
        assert log.of("start", "primary")[-1] == pytest.approx(fb1 + 61.0, abs=1e-9)
        assert fallbacks[0] == 3
        assert child_snap(sup, "stt")["probes"] == 2
        sup.request_stop()


async def test_probe_due_while_fallback_backs_off_is_not_lost(autojump_clock: Any) -> None:
    """Regression: a probe timer that fired while the fallback was in backoff was dropped for good."""
    log = Log()
    primaries, fallbacks = [0], [0]

    def fallback(ctx: Any) -> TrioActor:
        fallbacks[0] += 1
        # The first fallback dies 29.9 s in; its restart backs off over the probe time.
        return Recorded(log, "fallback", fail_after=29.9 if fallbacks[0] == 1 else None)

    sup = probe_supervisor(log, primaries, fallback)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(200)
        assert fallbacks[0] == 2
        assert primaries[0] == 5  # the probe still happened
        assert child_snap(sup, "stt")["fallback"] is False
        sup.request_stop()


# ---------------------------------------------------------------- intensity and escalation


async def test_escalation_from_run_root(autojump_clock: Any) -> None:
    log = Log()
    starts = [0]
    sup = Supervisor(
        "call",
        [
            ChildSpec("calm", lambda ctx: Recorded(log, "calm")),
            ChildSpec("bad", counted(lambda: Recorded(log, "bad", fail_after=0.0), starts), backoff=Backoff(0.01, 0.01, 0.0)),
        ],
        intensity=3,
        period=5.0,
    )
    with pytest.raises(SupervisorEscalation, match="more than 3 restarts"):
        await run_root(sup)
    assert starts[0] == 4  # 3 restarts allowed; the 4th failure gives up
    assert sup.total_restarts == 4
    assert log.of("stop", "calm")  # the other children were stopped
    assert isinstance(sup.exit_error, SupervisorEscalation)


async def test_restarts_spread_beyond_period_do_not_escalate(autojump_clock: Any) -> None:
    log = Log()
    starts = [0]
    sup = Supervisor(
        "call",
        [ChildSpec("slow", counted(lambda: Recorded(log, "slow", fail_after=3.0), starts), backoff=Backoff(0.01, 0.01, 0.0))],
        intensity=1,
        period=2.0,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(30.5)  # ~10 failures, one every 3 s: never 2 within 2 s
        assert starts[0] == 11
        sup.request_stop()


def inner_factory(log: Log, plan: list[bool], made: list[int]) -> Callable[[Any], Supervisor]:
    """Each call makes a new inner supervisor whose worker fails forever if ``plan`` says so."""

    def factory(ctx: Any) -> Supervisor:
        made[0] += 1
        failing = plan.pop(0) if plan else False
        return Supervisor(
            "inner",
            [
                ChildSpec(
                    "w",
                    lambda c: Recorded(log, "w", fail_after=0.0 if failing else None),
                    backoff=Backoff(0.01, 0.01, 0.0),
                )
            ],
            intensity=1,
            period=5.0,
        )

    return factory


async def test_nested_escalation_is_restarted_by_parent(autojump_clock: Any) -> None:
    log = Log()
    made = [0]
    root = Supervisor(
        "root",
        [
            ChildSpec("sibling", lambda ctx: Recorded(log, "sibling")),
            ChildSpec("inner", inner_factory(log, [True], made), backoff=Backoff(0.5, 0.5, 0.0)),
        ],
        intensity=3,
        period=5.0,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, root)
        await trio.sleep(5)
        assert made[0] == 2  # escalated once, restarted once by the parent
        snap = child_snap(root, "inner")
        assert snap["kind"] == "supervisor"
        assert snap["restarts"] == 1
        assert snap["status"] == "running"
        assert [c["status"] for c in snap["children"]] == ["running"]
        assert len(log.of("start", "sibling")) == 1  # one_for_one: the sibling is untouched
        root.request_stop()


async def test_nested_escalation_escalates_in_turn(autojump_clock: Any) -> None:
    log = Log()
    made = [0]
    root = Supervisor(
        "root",
        [ChildSpec("inner", inner_factory(log, [True] * 10, made), backoff=Backoff(0.01, 0.01, 0.0))],
        intensity=1,
        period=5.0,
    )
    with pytest.raises(SupervisorEscalation, match="root: more than 1 restarts"):
        await run_root(root)
    assert made[0] == 2


# ---------------------------------------------------------------- strategies


async def _strategy_run(strategy: Strategy) -> tuple[Log, int]:
    log = Log()
    roles = ["c1", "c2", "c3", "c4"]
    sup = Supervisor(
        "t",
        [ChildSpec(r, (lambda role: lambda ctx: Recorded(log, role))(r), backoff=Backoff(0.1, 0.1, 0.0)) for r in roles],
        strategy=strategy,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        assert log.sequence() == [("start", r) for r in roles]  # spec order, each ready first
        mark = len(log.events)
        sup.tell_role("c2", "fail")
        await trio.sleep(1)
        sup.request_stop()
    return log, mark


async def test_rest_for_one_restarts_failed_and_later_children_in_order(autojump_clock: Any) -> None:
    log, mark = await _strategy_run(Strategy.REST_FOR_ONE)
    assert log.sequence(mark) == [
        ("stop", "c2"),  # its own on_stop as it fails
        ("stop", "c4"),  # later siblings, reverse order
        ("stop", "c3"),
        ("start", "c2"),  # then the failed child and the later ones, in order
        ("start", "c3"),
        ("start", "c4"),
        ("stop", "c4"),  # request_stop: reverse order
        ("stop", "c3"),
        ("stop", "c2"),
        ("stop", "c1"),
    ]
    assert len(log.of("start", "c1")) == 1


async def test_one_for_one_touches_only_the_failed_child(autojump_clock: Any) -> None:
    log, mark = await _strategy_run(Strategy.ONE_FOR_ONE)
    assert log.sequence(mark)[:2] == [("stop", "c2"), ("start", "c2")]
    assert log.sequence(mark)[2:] == [("stop", r) for r in ["c4", "c3", "c2", "c1"]]


async def test_one_for_all_restarts_everyone(autojump_clock: Any) -> None:
    log, mark = await _strategy_run(Strategy.ONE_FOR_ALL)
    assert log.sequence(mark)[:8] == [
        ("stop", "c2"),
        ("stop", "c4"),
        ("stop", "c3"),
        ("stop", "c1"),
        ("start", "c1"),
        ("start", "c2"),
        ("start", "c3"),
        ("start", "c4"),
    ]


# ---------------------------------------------------------------- restart types, significant children


async def test_transient_and_temporary_restart_types(autojump_clock: Any) -> None:
    log = Log()
    fast = Backoff(0.01, 0.01, 0.0)
    sup = Supervisor(
        "t",
        [
            ChildSpec("tr_ok", lambda ctx: Recorded(log, "tr_ok"), restart=Restart.TRANSIENT, backoff=fast),
            ChildSpec("tr_bad", lambda ctx: Recorded(log, "tr_bad"), restart=Restart.TRANSIENT, backoff=fast),
            ChildSpec("tmp_ok", lambda ctx: Recorded(log, "tmp_ok"), restart=Restart.TEMPORARY, backoff=fast),
            ChildSpec("tmp_bad", lambda ctx: Recorded(log, "tmp_bad"), restart=Restart.TEMPORARY, backoff=fast),
            ChildSpec("perm", lambda ctx: Recorded(log, "perm"), backoff=fast),
        ],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("tr_ok", "exit")
        sup.tell_role("tr_bad", "fail")
        sup.tell_role("tmp_ok", "exit")
        sup.tell_role("tmp_bad", "fail")
        sup.tell_role("perm", "exit")  # permanent: restarted even after a normal exit
        await trio.sleep(1)
        assert len(log.of("start", "tr_ok")) == 1
        assert len(log.of("start", "tr_bad")) == 2
        assert len(log.of("start", "tmp_ok")) == 1
        assert len(log.of("start", "tmp_bad")) == 1
        assert len(log.of("start", "perm")) == 2
        by_role = {c["role"]: c for c in sup.snapshot()["children"]}
        assert by_role["tr_ok"]["status"] == "stopped"
        assert by_role["tr_bad"]["status"] == "running"
        assert "tmp_ok" not in by_role and "tmp_bad" not in by_role  # temporary: no trace left
        sup.request_stop()


async def test_significant_child_ends_the_tree_normally(autojump_clock: Any) -> None:
    log = Log()
    sup = Supervisor(
        "call",
        [
            ChildSpec("a", lambda ctx: Recorded(log, "a")),
            ChildSpec("transport", lambda ctx: Recorded(log, "transport"), restart=Restart.TRANSIENT, significant=True),
            ChildSpec("b", lambda ctx: Recorded(log, "b")),
            ChildSpec("c", lambda ctx: Recorded(log, "c")),
        ],
        auto_shutdown="any_significant",
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        mark = len(log.events)
        sup.tell_role("transport", "exit")  # the caller hung up
        await sup.wait_finished()  # run_root returns normally: no exception out of this nursery
    assert log.sequence(mark) == [("stop", "transport"), ("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert sup.exit_error is None
    assert sup.snapshot()["status"] == "stopped"


async def test_all_significant_waits_for_the_last_one(autojump_clock: Any) -> None:
    log = Log()
    sup = Supervisor(
        "t",
        [
            ChildSpec("s1", lambda ctx: Recorded(log, "s1"), restart=Restart.TRANSIENT, significant=True),
            ChildSpec("s2", lambda ctx: Recorded(log, "s2"), restart=Restart.TRANSIENT, significant=True),
            ChildSpec("other", lambda ctx: Recorded(log, "other")),
        ],
        auto_shutdown="all_significant",
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("s1", "exit")
        await settle()
        assert not log.of("stop", "other")
        sup.tell_role("s2", "exit")
        await sup.wait_finished()
    assert log.of("stop", "other")


async def test_temporary_significant_child_ends_the_tree_even_when_it_fails(autojump_clock: Any) -> None:
    """OTP: a temporary significant child ends by exiting for any reason, so its
    failure triggers ``any_significant`` too (it is never restarted)."""
    log = Log()
    sup = Supervisor(
        "t",
        [
            ChildSpec("a", lambda ctx: Recorded(log, "a")),
            ChildSpec("tmp", lambda ctx: Recorded(log, "tmp"), restart=Restart.TEMPORARY, significant=True),
        ],
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("tmp", "fail")
        with trio.fail_after(5):
            await sup.wait_finished()
    assert sup.exit_error is None  # a normal shutdown, not an escalation
    assert len(log.of("start", "tmp")) == 1 and log.of("stop", "a")


async def test_a_significant_child_stopped_by_its_supervisor_does_not_end_the_tree(autojump_clock: Any) -> None:
    """OTP: only a significant child's own exit counts; one_for_all stopping it does not."""
    log = Log()
    sup = Supervisor(
        "t",
        [
            ChildSpec("sig", lambda ctx: Recorded(log, "sig"), restart=Restart.TRANSIENT, significant=True),
            ChildSpec("w", lambda ctx: Recorded(log, "w"), backoff=Backoff(0.1, 0.1, 0.0)),
        ],
        strategy=Strategy.ONE_FOR_ALL,
        auto_shutdown="any_significant",
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("w", "fail")
        await trio.sleep(1)
        assert not sup._finished.is_set()
        assert len(log.of("start", "sig")) == 2  # stopped with the group, restarted with it
        sup.request_stop()


@pytest.mark.parametrize("strategy", [Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ALL])
async def test_group_restart_stops_temporary_siblings_and_does_not_restart_them(
    autojump_clock: Any, strategy: Strategy
) -> None:
    """OTP: with rest_for_one (and one_for_all) a temporary child in the group is
    terminated with the others and removed, not restarted."""
    log = Log()
    roles = ["c1", "c2", "tmp", "c4"]
    sup = Supervisor(
        "t",
        [
            ChildSpec(
                r,
                (lambda role: lambda ctx: Recorded(log, role))(r),
                restart=Restart.TEMPORARY if r == "tmp" else Restart.PERMANENT,
                backoff=Backoff(0.1, 0.1, 0.0),
            )
            for r in roles
        ],
        strategy=strategy,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        mark = len(log.events)
        sup.tell_role("c2", "fail")
        await trio.sleep(1)
        seq = log.sequence(mark)
        assert seq[:3] == [("stop", "c2"), ("stop", "c4"), ("stop", "tmp")]
        assert ("start", "tmp") not in seq and ("start", "c4") in seq
        assert "tmp" not in sup.roles() and sup.child("tmp") is None
        sup.request_stop()


def test_supervisor_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="auto_shutdown must be one of never, any_significant, all_significant"):
        Supervisor("t", [], auto_shutdown="any")
    with pytest.raises(ValueError, match="strategy"):
        Supervisor("t", [], strategy="simple_one_for_one")
    assert Supervisor("t", [], auto_shutdown="all_significant").auto_shutdown is AutoShutdown.ALL_SIGNIFICANT
    with pytest.raises(ValueError, match="'w': role is not unique"):
        Supervisor("t", [ChildSpec("w", lambda ctx: None), ChildSpec("w", lambda ctx: None)])
    with pytest.raises(ValueError, match="significant requires auto_shutdown"):
        Supervisor("t", [ChildSpec("w", lambda ctx: None, restart=Restart.TRANSIENT, significant=True)])
    with pytest.raises(ValueError, match="intensity"):
        Supervisor("t", [], intensity=-1)


async def test_start_child_validates_against_the_supervisor(autojump_clock: Any) -> None:
    sup = Supervisor("t", [])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        with pytest.raises(ValueError, match="significant requires auto_shutdown"):
            await sup.start_child(ChildSpec("x", lambda ctx: None, restart=Restart.TEMPORARY, significant=True))
        assert sup.roles() == []
        sup.request_stop()


# ---------------------------------------------------------------- role addressing, buffers


async def test_messages_to_a_restarting_role_are_buffered_in_order(autojump_clock: Any) -> None:
    log = Log()
    got: list[Any] = []
    sup = Supervisor("t", [ChildSpec("w", lambda ctx: Recorded(log, "w", got=got), backoff=Backoff(1.0, 1.0, 0.0), buffer=5)])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("w", "fail")
        await settle()
        assert child_snap(sup, "w")["status"] == "backoff"
        for i in range(3):
            sup.tell_role("w", i)
        assert child_snap(sup, "w")["mailbox_depth"] == 3
        await trio.sleep(2)
        assert got == [0, 1, 2]
        assert child_snap(sup, "w")["overflow"] == 0

        got.clear()
        sup.tell_role("w", "fail")
        await settle()
        for i in range(12):
            sup.tell_role("w", i)
        await trio.sleep(2)
        assert got == [7, 8, 9, 10, 11]  # the newest `buffer` messages, in order
        snap = child_snap(sup, "w")
        assert snap["overflow"] == 7
        assert snap["handled"] == 8  # handled counts carry across incarnations
        sup.tell_role("nobody", "x")  # an unknown role is counted, never a crash
        assert sup.unknown_role_drops == 1
        sup.request_stop()


async def test_full_trio_mailbox_drops_are_counted_in_the_snapshot(autojump_clock: Any) -> None:
    gate = trio.Event()
    got: list[Any] = []

    class Tiny(TrioActor):
        mailbox_size = 2

        async def receive(self, msg: Any) -> None:
            await gate.wait()
            got.append(msg)

    sup = Supervisor("t", [ChildSpec("tiny", lambda ctx: Tiny())])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        for i in range(5):
            sup.tell_role("tiny", i)  # synchronous: the actor does not run in between
        # One handed to the waiting receive loop, two buffered, two refused.
        assert child_snap(sup, "tiny")["dropped"] == 2
        gate.set()
        await settle()
        assert got == [0, 1, 2]
        sup.request_stop()


async def test_messages_sent_during_start_arrive_after_ready(autojump_clock: Any) -> None:
    got: list[Any] = []

    class Slow(TrioActor):
        async def on_start(self) -> None:
            await trio.sleep(1)

        async def receive(self, msg: Any) -> None:
            got.append(msg)

    sup = Supervisor("t", [ChildSpec("slow", lambda ctx: Slow())])
    async with trio.open_nursery() as n:
        n.start_soon(run_root, sup)
        await trio.sleep(0.5)
        assert child_snap(sup, "slow")["status"] == "starting"
        for i in range(4):
            sup.tell_role("slow", i)
        await trio.sleep(1)
        assert got == [0, 1, 2, 3]
        sup.request_stop()


# ---------------------------------------------------------------- inline delivery (TrioActor.inline)


class Inline(TrioActor):
    """An inline trio actor: records ``(task, msg)``; ``"fail"`` raises, ``"boom"``
    raises ``boom``, ``"echo"`` sends ``"echoed"`` to its own role, ``"exit"`` ends it."""

    inline = True

    def __init__(self, log: Log, role: str, calls: list[Any], *, boom: BaseException | None = None) -> None:
        super().__init__()
        self.log = log
        self.role = role
        self.calls = calls  # shared across incarnations: (generation, task, msg)
        self.boom = boom

    async def on_start(self) -> None:
        self.log.add("start", self.role)

    def receive_inline(self, msg: Any) -> None:
        self.calls.append((self.ctx.generation, trio.lowlevel.current_task(), msg))
        if msg == "fail":
            raise RuntimeError(f"{self.role} asked to fail")
        if msg == "boom":
            assert self.boom is not None
            raise self.boom
        if msg == "echo":
            self.ctx.send(self.role, "echoed")  # re-entrant: must queue behind this one
            self.calls.append((self.ctx.generation, trio.lowlevel.current_task(), "echo done"))
        if msg == "exit":
            self.stop_self()

    async def on_stop(self) -> None:
        self.log.add("stop", self.role)


class Forwarder(Recorded):
    """A mailbox actor that forwards every message to role ``to`` and records it."""

    def __init__(self, log: Log, role: str, to: str, got: list[Any]) -> None:
        super().__init__(log, role, got=got)
        self.to = to

    async def receive(self, msg: Any) -> None:
        self.ctx.send(self.to, msg)  # must never raise, whatever the inline actor does
        self.got.append(msg)


def msgs(calls: list[tuple[int, Any, Any]]) -> list[Any]:
    return [m for _, _, m in calls]


async def test_inline_delivery_is_handled_before_tell_role_returns(autojump_clock: Any) -> None:
    log = Log()
    calls: list[Any] = []
    sup = Supervisor("t", [ChildSpec("dec", lambda ctx: Inline(log, "dec", calls))])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        me = trio.lowlevel.current_task()
        for i in range(3):
            sup.tell_role("dec", i)
            # Handled synchronously, in this (the sender's) task: no task switch.
            assert calls[-1] == (1, me, i)
        actor = sup.child("dec")
        assert isinstance(actor, Inline)
        assert actor.deliver(3) is True and msgs(calls) == [0, 1, 2, 3]
        snap = child_snap(sup, "dec")
        assert snap["handled"] == 4
        assert snap["mailbox_depth"] == 0

        # Switched off per instance at run time: through the mailbox and the
        # actor's own task, still via receive_inline, still counted.
        actor.inline = False
        sup.tell_role("dec", 4)
        assert msgs(calls) == [0, 1, 2, 3]
        await settle()
        assert calls[-1][2] == 4 and calls[-1][1] is not me
        actor.inline = True
        sup.tell_role("dec", 5)
        assert calls[-1] == (1, me, 5)
        assert child_snap(sup, "dec")["handled"] == 6
        sup.request_stop()


async def test_inline_keeps_order_behind_queued_and_reentrant_messages(autojump_clock: Any) -> None:
    log = Log()
    calls: list[Any] = []
    sup = Supervisor("t", [ChildSpec("dec", lambda ctx: Inline(log, "dec", calls))])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        actor = sup.child("dec")
        assert isinstance(actor, Inline)
        actor.inline = False
        for i in range(3):
            sup.tell_role("dec", i)  # queued in the mailbox
        actor.inline = True
        for i in range(3, 6):
            sup.tell_role("dec", i)  # must queue behind 0..2, not overtake them
        assert calls == []
        await settle()
        assert msgs(calls) == [0, 1, 2, 3, 4, 5]
        sup.tell_role("dec", 6)  # mailbox drained: inline again
        assert msgs(calls)[-1] == 6

        # A message the actor sends itself while handling one inline is handled
        # after that one ends (never nested), and before anything sent later.
        calls.clear()
        sup.tell_role("dec", "echo")
        sup.tell_role("dec", "after")
        assert msgs(calls) == ["echo", "echo done"]
        await settle()
        assert msgs(calls) == ["echo", "echo done", "echoed", "after"]
        sup.tell_role("dec", "inline again")
        assert msgs(calls)[-1] == "inline again"
        assert child_snap(sup, "dec")["handled"] == 7 + 4
        sup.request_stop()


async def test_inline_messages_sent_during_start_keep_their_order(autojump_clock: Any) -> None:
    calls: list[Any] = []

    class SlowInline(Inline):
        async def on_start(self) -> None:
            await trio.sleep(1)

    sup = Supervisor("t", [ChildSpec("slow", lambda ctx: SlowInline(Log(), "slow", calls))])
    async with trio.open_nursery() as n:
        n.start_soon(run_root, sup)
        await trio.sleep(0.5)
        assert child_snap(sup, "slow")["status"] == "starting"
        actor = sup.child("slow")
        assert isinstance(actor, SlowInline)
        for i in range(3):
            assert actor.deliver(i)  # straight into the mailbox: not running yet
        for i in range(3, 5):
            sup.tell_role("slow", i)  # buffered by the slot until ready
        assert calls == []
        await trio.sleep(1)
        assert msgs(calls) == [0, 1, 2, 3, 4]
        sup.tell_role("slow", 5)
        assert msgs(calls) == [0, 1, 2, 3, 4, 5]  # inline once the mailbox is empty
        assert child_snap(sup, "slow")["handled"] == 6
        sup.request_stop()


async def test_inline_failure_restarts_that_actor_and_spares_the_sender(autojump_clock: Any) -> None:
    log = Log()
    calls: list[Any] = []
    forwarded: list[Any] = []
    sup = Supervisor(
        "t",
        [
            ChildSpec("dec", lambda ctx: Inline(log, "dec", calls), backoff=Backoff(1.0, 1.0, 0.0)),
            ChildSpec("transport", lambda ctx: Forwarder(log, "transport", "dec", forwarded)),
        ],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sender = sup.child("transport")
        sup.tell_role("transport", "a")
        sup.tell_role("transport", "fail")  # the sender's receive delivers it inline
        sup.tell_role("transport", "lost")  # reaches the failed incarnation: not handled
        await settle()
        assert [(g, m) for g, _, m in calls] == [(1, "a"), (1, "fail")]
        snap = child_snap(sup, "dec")
        assert snap["status"] == "backoff"
        assert snap["restarts"] == 1
        assert snap["last_error"] == "RuntimeError: dec asked to fail"
        assert log.of("stop", "dec")  # on_stop ran for the failed incarnation
        # The sender was untouched: same incarnation, no error, still handling.
        assert sup.child("transport") is sender
        assert child_snap(sup, "transport")["restarts"] == 0
        assert not log.of("stop", "transport")
        assert forwarded == ["a", "fail", "lost"]

        sup.tell_role("transport", "buffered")  # slot stopped: buffered for the restart
        await trio.sleep(1.5)
        assert len(log.of("start", "dec")) == 2
        assert [(g, m) for g, _, m in calls][2:] == [(2, "buffered")]
        sup.tell_role("dec", "b")
        assert calls[-1] == (2, trio.lowlevel.current_task(), "b")  # inline again
        assert child_snap(sup, "dec")["handled"] == 3  # a, buffered, b: a failure is not "handled", as via receive
        sup.request_stop()


async def test_inline_failure_follows_the_restart_type(autojump_clock: Any) -> None:
    log = Log()
    calls: list[Any] = []
    sup = Supervisor(
        "t",
        [
            ChildSpec("temp", lambda ctx: Inline(log, "temp", calls), restart=Restart.TEMPORARY),
            ChildSpec("trans", lambda ctx: Inline(log, "trans", calls), restart=Restart.TRANSIENT),
        ],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("temp", "fail")
        sup.tell_role("trans", "exit")  # stop_self from receive_inline: a normal exit
        await trio.sleep(5)
        assert len(log.of("start", "temp")) == 1  # temporary: never restarted
        assert "temp" not in sup.roles()
        assert len(log.of("start", "trans")) == 1  # transient, normal exit: not restarted
        assert child_snap(sup, "trans")["status"] == "stopped"
        assert sup.total_restarts == 0
        sup.tell_role("trans", "x")
        sup.request_stop()
    assert msgs(calls) == ["fail", "exit"]


async def test_inline_base_exceptions(autojump_clock: Any) -> None:
    log = Log()
    calls: list[Any] = []
    booms: dict[str, BaseException] = {"boom": Boom("ctrl-c-like"), "ki": KeyboardInterrupt()}
    sup = Supervisor(
        "t",
        [
            ChildSpec("boom", lambda ctx: Inline(log, "boom", calls, boom=booms["boom"]), backoff=Backoff(0.1, 0.1, 0.0)),
            ChildSpec("ki", lambda ctx: Inline(log, "ki", calls, boom=booms["ki"])),
        ],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        # A non-Exception fails only that actor (as ActorFailed), never the sender.
        sup.tell_role("boom", "boom")
        await trio.sleep(1)
        snap = child_snap(sup, "boom")
        assert snap["restarts"] == 1 and snap["status"] == "running"
        assert snap["last_error"] == "ActorFailed: Boom: ctrl-c-like"
        # KeyboardInterrupt is the process being interrupted: re-raised to the
        # sender, not swallowed, and not counted as this actor's failure.
        with pytest.raises(KeyboardInterrupt):
            sup.tell_role("ki", "boom")
        await settle()
        assert child_snap(sup, "ki")["restarts"] == 0
        sup.tell_role("ki", "after")
        assert msgs(calls)[-1] == "after"
        sup.request_stop()


async def test_no_inline_handling_once_the_actor_is_stopping(autojump_clock: Any) -> None:
    calls: list[Any] = []
    stopping = trio.Event()

    class SlowStop(Inline):
        async def on_start(self) -> None:
            if self.ctx.generation == 1:
                self.nursery.start_soon(self._die)

        async def _die(self) -> None:
            await trio.sleep(1)
            raise RuntimeError("a task of the actor failed")

        async def on_stop(self) -> None:
            stopping.set()
            await trio.sleep(1)  # within the 2 s shutdown bound

    sup = Supervisor("t", [ChildSpec("dec", lambda ctx: SlowStop(Log(), "dec", calls), backoff=Backoff(0.1, 0.1, 0.0))])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.tell_role("dec", 1)
        # Failing on its own: on_stop runs while the slot still reads "running".
        await stopping.wait()
        sup.tell_role("dec", 2)
        assert msgs(calls) == [1]
        await trio.sleep(2)
        assert child_snap(sup, "dec")["restarts"] == 1
        sup.tell_role("dec", 3)
        assert msgs(calls) == [1, 3]
        # Stopped by its supervisor: likewise.
        stopping = trio.Event()
        sup.request_stop()
        await stopping.wait()
        sup.tell_role("dec", 4)
        await sup.wait_finished()
    assert msgs(calls) == [1, 3]


# ---------------------------------------------------------------- pykka children (real clock)


class Echo(PykkaActor):
    """Records messages; ``"die"`` fails it; optionally fails in ``started``."""

    def __init__(self, ctx: Any, got: list[Any], fail_started: bool = False, boom: BaseException | None = None) -> None:
        super().__init__(ctx)
        self.got = got
        self.fail_started = fail_started
        self.boom = boom

    def started(self) -> None:
        if self.fail_started:
            raise RuntimeError("cannot open session")

    def receive(self, msg: Any) -> None:
        if msg == "die":
            raise ValueError("asked to die")
        if msg == "boom":
            assert self.boom is not None
            raise self.boom
        self.got.append(msg)


class Boom(BaseException):
    """A KeyboardInterrupt-like BaseException that pykka would turn into stop_all()."""


FAST = Backoff(0.01, 0.01, 0.0)


async def test_pykka_failure_in_started_is_reported_and_restarted() -> None:
    got: list[Any] = []
    made = [0]

    def factory(ctx: Any) -> pykka.ActorRef[Any]:
        made[0] += 1
        return Echo.start(ctx, got, fail_started=made[0] == 1)

    sup = Supervisor("t", [ChildSpec("stt", factory, backoff=FAST)], intensity=5)
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)  # returns only once the second incarnation is ready
            await wait_until(lambda: child_snap(sup, "stt")["status"] == "running")
            snap = child_snap(sup, "stt")
            assert made[0] == 2
            assert snap["kind"] == "pykka"
            assert snap["restarts"] == 1
            assert snap["last_error"] == "RuntimeError: cannot open session"
            sup.tell_role("stt", "hello")
            await wait_until(lambda: got == ["hello"])
            sup.request_stop()


async def test_pykka_restart_buffers_in_order_with_bounded_overflow() -> None:
    got: list[Any] = []
    sup = Supervisor("t", [ChildSpec("stt", lambda ctx: Echo.start(ctx, got), backoff=Backoff(0.3, 0.3, 0.0), buffer=5)])
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            sup.tell_role("stt", "die")
            await wait_until(lambda: child_snap(sup, "stt")["status"] == "backoff", what="backoff")
            for i in range(8):
                sup.tell_role("stt", i)
            await wait_until(lambda: len(got) == 5, what="delivery")
            await trio.sleep(0.05)
            assert got == [3, 4, 5, 6, 7]
            snap = child_snap(sup, "stt")
            assert snap["overflow"] == 3
            assert snap["restarts"] == 1
            assert snap["last_error"] == "ValueError: asked to die"
            sup.request_stop()


async def test_pykka_base_exception_fails_only_that_actor() -> None:
    got_a: list[Any] = []
    got_b: list[Any] = []

    class BadStop(Echo):
        def stopping(self) -> None:
            raise Boom("stopping went wrong too")

    sup = Supervisor(
        "t",
        [
            ChildSpec("a", lambda ctx: Echo.start(ctx, got_a, boom=Boom("ctrl-c-like")), backoff=FAST),
            ChildSpec("bad_stop", lambda ctx: BadStop.start(ctx, []), backoff=FAST),
            ChildSpec("b", lambda ctx: Echo.start(ctx, got_b), backoff=FAST),
        ],
        intensity=10,
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            b_ref = sup.child("b")
            sup.tell_role("a", "boom")
            sup.tell_role("bad_stop", "die")  # its stopping() raises a BaseException while failing
            await wait_until(
                lambda: child_snap(sup, "a")["restarts"] == 1
                and child_snap(sup, "a")["status"] == "running"
                and child_snap(sup, "bad_stop")["restarts"] == 1
                and child_snap(sup, "bad_stop")["status"] == "running",
                what="restarts",
            )
            assert child_snap(sup, "a")["last_error"] == "ActorFailed: Boom: ctrl-c-like"
            assert child_snap(sup, "bad_stop")["last_error"] == "ValueError: asked to die"
            # b was never touched: same incarnation, still alive, still handling.
            assert sup.child("b") is b_ref and b_ref.is_alive()
            assert child_snap(sup, "b")["restarts"] == 0
            sup.tell_role("b", "still here")
            sup.tell_role("a", "back")
            await wait_until(lambda: got_b == ["still here"] and got_a == ["back"])
            assert len(pykka.ActorRegistry.get_all()) == 3
            sup.request_stop()
    assert pykka.ActorRegistry.get_all() == []


async def test_pykka_base_exception_in_stopping_during_a_stop_fails_only_that_actor() -> None:
    """Regression: a BaseException from ``stopping()`` on a supervisor-ordered stop
    escaped into pykka's loop (whose handler stops every actor in the process)."""

    class Bystander(pykka.ThreadingActor):
        pass

    class BadStop(PykkaActor):
        def stopping(self) -> None:
            raise Boom("in stopping")

    bystander = Bystander.start()
    log = Log()
    sup = Supervisor(
        "t",
        [
            ChildSpec("trigger", lambda ctx: Recorded(log, "trigger"), backoff=FAST),
            ChildSpec("x", lambda ctx: BadStop.start(ctx), backoff=FAST),
        ],
        strategy=Strategy.REST_FOR_ONE,
        intensity=10,
    )
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                await n.start(run_root, sup)
                first_x = sup.child("x")
                sup.tell_role("trigger", "fail")  # rest_for_one: x is stopped, then restarted
                await wait_until(
                    lambda: len(log.of("start", "trigger")) == 2 and child_snap(sup, "x")["status"] == "running",
                    what="rest_for_one restart",
                )
                assert sup.child("x") is not first_x
                assert bystander.is_alive()
                # Its exit was reported, not waited out and abandoned.
                assert getattr(sup, "abandoned", 0) == 0
                sup.request_stop()
        assert bystander.is_alive()
    finally:
        bystander.stop()
    assert pykka.ActorRegistry.get_all() == []


# ---------------------------------------------------------------- snapshots


async def test_snapshot_shape() -> None:
    class Counter(TrioActor):
        async def receive(self, msg: Any) -> None:
            pass

    inner = Supervisor("inner", [ChildSpec("x", lambda ctx: Counter())])
    sup = Supervisor(
        "call",
        [
            ChildSpec("decoder", lambda ctx: Counter()),
            ChildSpec("stt", lambda ctx: Echo.start(ctx, [])),
            ChildSpec("sub", lambda ctx: inner),
        ],
    )
    keys = {"role", "kind", "status", "restarts", "fallback", "mailbox_depth", "handled", "last_error", "uptime_s", "children"}
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            for i in range(3):
                sup.tell_role("decoder", i)
                sup.tell_role("stt", i)
            await wait_until(lambda: child_snap(sup, "stt")["handled"] == 3 and child_snap(sup, "decoder")["handled"] == 3)
            await trio.sleep(0.02)
            snap = sup.snapshot()
            assert keys <= snap.keys()
            assert (snap["role"], snap["kind"], snap["status"]) == ("call", "supervisor", "running")
            kinds = {c["role"]: c["kind"] for c in snap["children"]}
            assert kinds == {"decoder": "trio", "stt": "pykka", "sub": "supervisor"}
            for c in snap["children"]:
                assert keys <= c.keys(), c["role"]
                assert c["status"] == "running"
                assert c["restarts"] == 0 and c["fallback"] is False and c["last_error"] == ""
                assert c["uptime_s"] > 0
            sub = child_snap(sup, "sub")
            assert [c["role"] for c in sub["children"]] == ["x"]
            assert keys <= sub["children"][0].keys()
            sup.request_stop()


# ---------------------------------------------------------------- bounded stop


async def test_hanging_trio_on_stop_is_bounded(autojump_clock: Any) -> None:
    log = Log()

    class Hang(TrioActor):
        async def on_stop(self) -> None:
            log.add("stop", "hang")
            await trio.sleep_forever()

    sup = Supervisor(
        "t",
        [ChildSpec("a", lambda ctx: Recorded(log, "a")), ChildSpec("hang", lambda ctx: Hang(), shutdown=1.5)],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        t0 = trio.current_time()
        sup.request_stop()
        await sup.wait_finished()
        elapsed = trio.current_time() - t0
    assert 1.5 - 1e-6 <= elapsed <= 1.5 + 1e-3
    assert log.sequence() == [("start", "a"), ("stop", "hang"), ("stop", "a")]


async def test_slow_pykka_stopping_is_bounded() -> None:
    release = threading.Event()
    stopped_after: list[float] = []

    class Slow(PykkaActor):
        def stopping(self) -> None:
            release.wait(10)  # "sleeps too long"

    sup = Supervisor(
        "t",
        [ChildSpec("fast", lambda ctx: Echo.start(ctx, [])), ChildSpec("slow", lambda ctx: Slow.start(ctx), shutdown=0.3)],
    )
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                await n.start(run_root, sup)
                t0 = time.monotonic()
                sup.request_stop()
                await sup.wait_finished()
                stopped_after.append(time.monotonic() - t0)
        assert 0.29 <= stopped_after[0] < 1.5
        assert sup.abandoned == 1  # counted, never silent
    finally:
        release.set()
    # The abandoned thread reports its exit after trio.run's end of this tree: harmless.
    deadline = time.monotonic() + 5
    while pykka.ActorRegistry.get_all() and time.monotonic() < deadline:
        await trio.sleep(0.01)
    assert pykka.ActorRegistry.get_all() == []


async def test_cancelling_run_root_stops_pykka_children_even_mid_start() -> None:
    """Regression: cancelling a tree during ``on_start`` left its pykka threads running."""
    gate = threading.Event()

    class Hold(PykkaActor):
        def started(self) -> None:
            gate.wait(5)

    sup = Supervisor(
        "t",
        [ChildSpec("ok", lambda ctx: Echo.start(ctx, [])), ChildSpec("hold", lambda ctx: Hold.start(ctx), shutdown=0.2)],
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(run_root, sup)
            await wait_until(lambda: len(pykka.ActorRegistry.get_all()) == 2, what="both started")
            n.cancel_scope.cancel()
    gate.set()
    deadline = time.monotonic() + 5
    while pykka.ActorRegistry.get_all() and time.monotonic() < deadline:
        await trio.sleep(0.01)
    assert pykka.ActorRegistry.get_all() == []
    assert sup.snapshot()["status"] == "stopped"


async def test_cancelled_nested_tree_stops_at_once_in_reverse_order(autojump_clock: Any) -> None:
    """Regression: a trio child stopped while its own supervisor was being cancelled
    never reported its exit, so every level waited out its whole shutdown bound."""
    log = Log()

    def inner(ctx: Any) -> Supervisor:
        return Supervisor("inner", [ChildSpec(r, (lambda r: lambda c: Recorded(log, r))(r)) for r in ("x1", "x2", "x3")])

    root = Supervisor("root", [ChildSpec("a", lambda ctx: Recorded(log, "a")), ChildSpec("sub", inner)])
    async with trio.open_nursery() as n:
        await n.start(run_root, root)
        mark = len(log.events)
        t0 = trio.current_time()
        n.cancel_scope.cancel()
    assert trio.current_time() - t0 < 1e-3  # no shutdown bound was waited out
    assert log.sequence(mark) == [("stop", "x3"), ("stop", "x2"), ("stop", "x1"), ("stop", "a")]
    assert root.snapshot()["status"] == "stopped"


async def test_request_stop_twice_and_after_finish_is_harmless(autojump_clock: Any) -> None:
    log = Log()
    sup = Supervisor("t", [ChildSpec("a", lambda ctx: Recorded(log, "a"))])
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.request_stop()
        sup.request_stop()
    for _ in range(2000):
        sup.request_stop()
    assert log.sequence() == [("start", "a"), ("stop", "a")]


async def test_bad_factories_are_child_failures_not_crashes(autojump_clock: Any) -> None:
    calls = [0]

    def bad(ctx: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("no such device")
        if calls[0] == 2:
            return "not an actor"
        return Recorded(Log(), "ok")

    sup = Supervisor("t", [ChildSpec("w", bad, backoff=FAST)], intensity=5)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        await trio.sleep(1)
        snap = child_snap(sup, "w")
        assert snap["status"] == "running" and snap["restarts"] == 2
        assert "TypeError: factory for w returned str" == snap["last_error"]
        sup.request_stop()


async def test_on_event_reports_restarts_fallback_probe_and_restore(autojump_clock: trio.testing.MockClock) -> None:
    """The metrics hook sees exactly what the supervisor did, in order."""
    from engine.actor import TrioActor
    from engine.supervisor import Backoff, ChildSpec, Supervisor, run_root

    healthy = {"primary": False}

    class Primary(TrioActor):
        async def on_start(self) -> None:
            if not healthy["primary"]:
                raise RuntimeError("down")

    class Fallback(TrioActor):
        pass

    events: list[tuple[str, str]] = []
    sup = Supervisor(
        "t",
        [ChildSpec("stt", lambda ctx: Primary(), fallback=lambda ctx: Fallback(), max_retries=3,
                   backoff=Backoff(0.2, 5.0, 0.0), probe_interval=30.0, probe_hold=5.0)],
        intensity=10,
        period=30.0,
        on_event=lambda role, what: events.append((role, what)),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup)
        await trio.sleep(5)
        assert events == [("stt", "restart")] * 4 + [("stt", "fallback")]
        healthy["primary"] = True
        await trio.sleep(40)
        assert events[-2:] == [("stt", "probe"), ("stt", "restored")]
        assert sup.snapshot()["children"][0]["fallback"] is False
        sup.request_stop()


async def test_shutdown_infinity_waits_and_brutal_kill_does_not(autojump_clock: Any) -> None:
    """OTP's shutdown values: ``INFINITY`` waits for ``on_stop`` however long it
    takes (a slow stop is not abandoned); ``BRUTAL_KILL`` gives it no time."""
    from engine.restart_policy import BRUTAL_KILL, INFINITY

    class SlowStop(TrioActor):
        def __init__(self, log: list[str], name: str) -> None:
            super().__init__()
            self.log, self.name = log, name

        async def on_stop(self) -> None:
            await trio.sleep(100)
            self.log.append(self.name)

    stopped: list[str] = []
    sup = Supervisor(
        "t",
        [
            ChildSpec("patient", lambda ctx: SlowStop(stopped, "patient"), shutdown=INFINITY),
            ChildSpec("brutal", lambda ctx: SlowStop(stopped, "brutal"), shutdown=BRUTAL_KILL),
        ],
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        t0 = trio.current_time()
        sup.request_stop()
        await sup.wait_finished()
    assert stopped == ["patient"] and trio.current_time() - t0 >= 100
    assert sup.abandoned == 0
