"""The restart policy as pure decisions (``engine.restart_policy``): plain numbers
for the clock, no trio, no threads."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from engine.restart_policy import (
    BRUTAL_KILL,
    INFINITY,
    Action,
    AutoShutdown,
    Backoff,
    ChildSpec,
    Decision,
    Restart,
    RestartIntensity,
    SlotPolicy,
    check_children,
)


def factory(ctx: Any) -> Any:
    return None


def spec(**kw: Any) -> ChildSpec:
    return ChildSpec(kw.pop("role", "w"), kw.pop("factory", factory), **kw)


# ---------------------------------------------------------------- intensity (OTP)


def test_intensity_allows_exactly_intensity_restarts_within_period() -> None:
    r = RestartIntensity(3, 5.0)
    assert [r.note(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert r.note(3.0) is False  # the fourth within 5 s
    assert r.total == 4


def test_intensity_window_forgets_restarts_older_than_period() -> None:
    r = RestartIntensity(2, 5.0)
    assert r.note(0.0) and r.note(1.0)
    # OTP keeps stamps with now - t <= period: at 5.0 the one at 0.0 still counts.
    assert r.note(5.0) is False
    r = RestartIntensity(2, 5.0)
    assert r.note(0.0) and r.note(1.0)
    assert r.note(5.001) is True and r.in_window() == 2


def test_intensity_zero_allows_no_restart_and_uncounted_restarts_are_free() -> None:
    assert RestartIntensity(0, 1.0).note(0.0) is False
    r = RestartIntensity(1, 10.0)
    assert all(r.note(float(t), counted=False) for t in range(50))
    assert r.total == 50 and r.in_window() == 0
    assert r.note(50.0) is True and r.note(51.0) is False


@pytest.mark.parametrize("intensity,period,field", [(-1, 5.0, "intensity"), (1.5, 5.0, "intensity"), (3, 0.0, "period")])
def test_intensity_arguments_are_validated(intensity: Any, period: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RestartIntensity(intensity, period)


# ---------------------------------------------------------------- backoff (Akka)


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    b = Backoff(base=0.1, max=1.0, jitter=0.5)
    rng = random.Random(7)
    for n, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        d = b.delay(n, rng)
        assert nominal <= d <= nominal * 1.5, (n, d)
    assert Backoff(0.1, 1.0, 0.0).delay(0) == 0.1  # after progress: the first step


def test_backoff_is_validated() -> None:
    with pytest.raises(ValueError, match="backoff.max"):
        Backoff(base=0.1, max=-1.0)
    assert Backoff(base=2.0, max=1.0, jitter=0.0).delay(1) == 1.0  # the cap wins
    with pytest.raises(ValueError, match="backoff.jitter"):
        Backoff(jitter=-0.1)


# ---------------------------------------------------------------- child specs (OTP check_childspecs)


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"role": ""}, "role"),
        ({"role": None}, "role"),
        ({"restart": "sometimes"}, "restart"),
        ({"factory": "not callable"}, "factory"),
        ({"shutdown": 0}, "shutdown"),
        ({"shutdown": -1.0}, "shutdown"),
        ({"shutdown": "never"}, "shutdown"),
        ({"shutdown": math.nan}, "shutdown"),
        ({"significant": True}, "significant"),  # permanent
        ({"significant": "yes", "restart": Restart.TRANSIENT}, "significant"),
        ({"fallback": factory, "restart": Restart.TEMPORARY}, "fallback"),
        ({"fallback": 3}, "fallback"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"buffer": -1}, "buffer"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"stable_after": -1}, "stable_after"),
        ({"backoff": (0.1, 1.0)}, "backoff"),
    ],
)
def test_bad_child_specs_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        spec(**kw)


def test_child_spec_normalises_enums_and_shutdown() -> None:
    s = spec(restart="transient", significant=True)
    assert s.restart is Restart.TRANSIENT
    assert spec(shutdown=INFINITY).shutdown == math.inf
    assert spec(shutdown="infinity").shutdown == math.inf
    assert spec(shutdown=BRUTAL_KILL).shutdown == 0.0
    assert spec(shutdown=3).shutdown == 3.0
    assert spec(restart=Restart.TEMPORARY, significant=True).significant


def test_children_unique_and_significant_only_with_auto_shutdown() -> None:
    with pytest.raises(ValueError, match="'a': role is not unique"):
        check_children([spec(role="a"), spec(role="b"), spec(role="a")], AutoShutdown.NEVER)
    sig = spec(role="t", restart=Restart.TRANSIENT, significant=True)
    with pytest.raises(ValueError, match="significant requires auto_shutdown"):
        check_children([sig], AutoShutdown.NEVER)
    check_children([sig], AutoShutdown.ANY_SIGNIFICANT)


# ---------------------------------------------------------------- one slot's failures


def stt(**kw: Any) -> ChildSpec:
    return spec(role="stt", fallback=factory, max_retries=3, stable_after=10.0, backoff=Backoff(0.2, 5.0, 0.0), **kw)


def test_retries_then_fallback_at_once_then_probe_cycle() -> None:
    p = SlotPolicy(stt())
    decisions = [p.on_failure(uptime=0.5, progressed=False) for _ in range(4)]
    assert [d.action for d in decisions] == [Action.RESTART] * 3 + [Action.FALLBACK]
    assert [d.delay for d in decisions[:3]] == [0.2, 0.4, 0.8] and decisions[3].delay == 0.0
    assert p.fallback_active and p.fallbacks == 1 and p.restarts == 4
    # Half-open: the probe fails -> the fallback comes back at once, not counted as a switch.
    p.start_probe()
    assert not p.fallback_active and p.probing and p.probes == 1
    assert p.on_failure(uptime=1.0, progressed=False).action is Action.FALLBACK
    assert p.fallback_active and p.fallbacks == 1 and p.restarts == 5
    # The next probe holds: closed, failures start again.
    p.start_probe()
    assert p.probe_held() is True and not p.probing and p.failures == 0
    assert p.probe_held() is False


def test_a_stable_run_resets_the_count_and_progress_is_not_counted() -> None:
    p = SlotPolicy(stt())
    for _ in range(3):
        p.on_failure(uptime=0.5, progressed=False)
    assert p.failures == 3
    assert p.on_failure(uptime=10.0, progressed=False).delay == 0.2  # stable: a new run of failures
    assert p.failures == 1
    for _ in range(20):  # each after progress: first backoff step, never the fallback
        d = p.on_failure(uptime=3.0, progressed=True)
        assert d == Decision(Action.RESTART, 0.2)
    assert p.failures == 0 and not p.fallback_active


def test_give_up_after_consecutive_failures_only() -> None:
    p = SlotPolicy(spec(restart=Restart.TRANSIENT, backoff=Backoff(0.05, 1.0, 0.0)), give_up_after=3)
    assert [p.on_failure(uptime=0.1, progressed=False).action for _ in range(3)] == [Action.RESTART] * 3
    assert p.on_failure(uptime=0.1, progressed=True).action is Action.RESTART  # progress resets
    assert [p.on_failure(uptime=0.1, progressed=False).action for _ in range(4)] == [Action.RESTART] * 3 + [
        Action.GIVE_UP
    ]
    assert p.restarts == 7


@pytest.mark.parametrize("key", ["CALLENGINE_SUPERVISION_CALL_PERIOD_S", "CALLENGINE_SUPERVISION_STT_PROBE_INTERVAL_S"])
def test_supervision_settings_that_specs_refuse_are_refused_at_startup(key: str) -> None:
    """A zero period or probe interval would fail every call's tree; the settings refuse it first."""
    from engine.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="must be positive"):
        load_settings(environ={key: "0"})
