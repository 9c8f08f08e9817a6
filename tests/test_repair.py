"""Crash repair (engine.repair) on both stores, with a fake clock and fake hosts.

Several "processes" share one store, as workers and hosts do; one of them
stops stamping (it died) and another closes its open calls as ``lost``.
"""

from __future__ import annotations

from typing import Any

from engine.messages import RecordCallEnded, RecordCallStarted
from engine.repair import CallOwnership, Owner, dead_owners
from engine.store import Store

DEAD_AFTER = 30.0


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def started(store: Store, sid: str, at: float) -> None:
    store.apply(RecordCallStarted(call_sid=sid, stream_sid="MZ" + sid, business_id="demo", from_number="+1",
                                  to_number="+2", started_at=at))


def owner(store: Store, clock: Clock, host: str, pid: int, alive: Any = lambda pid: True) -> CallOwnership:
    o = CallOwnership(store, dead_after_s=DEAD_AFTER, host=host, pid=pid, clock=clock, alive=alive)
    o.register()
    return o


def test_dead_owners_rules() -> None:
    owners = [
        Owner("a:1:x", "a", 1, 100.0),  # this host, pid gone
        Owner("a:2:x", "a", 2, 100.0),  # this host, pid runs (a sibling worker)
        Owner("a:9:old", "a", 9, 100.0),  # this host, this process's own pid: a previous incarnation
        Owner("b:1:x", "b", 1, 100.0),  # another host, fresh
        Owner("c:1:x", "c", 1, 50.0),  # another host, silent too long
        Owner("a:9:me", "a", 9, 100.0),  # this process
    ]
    gone = dead_owners(owners, me="a:9:me", host="a", pid=9, now=101.0, dead_after_s=30.0, alive=lambda p: p == 2)
    assert [o.id for o in gone] == ["a:1:x", "a:9:old", "c:1:x"]


def test_a_silent_host_calls_are_closed_as_lost_with_their_last_stamp(store: Store) -> None:
    clock = Clock()
    a = owner(store, clock, "host-a", 100)
    b = owner(store, clock, "host-b", 100)
    started(store, "CA1", clock.t)
    a.beat(["CA1", "CA2"])  # CA2's start record has not landed yet: claimed all the same
    clock.t += 5
    a.beat(["CA1", "CA2"])
    last = clock.t
    clock.t += 10
    b.beat([])
    assert b.repair() == []  # host-a is quiet, but not for long enough
    clock.t += DEAD_AFTER
    b.beat([])
    assert sorted(b.repair()) == ["CA1", "CA2"]
    for sid in ("CA1", "CA2"):
        call = store.get_call(sid)
        assert call["end_reason"] == "lost" and call["ended_at"] == last, call
    assert b.repair() == []  # idempotent; host-a's owner row is gone
    assert [r["id"] for r in store.query("SELECT id FROM call_owners")] == [b.id]


def test_this_host_repairs_a_dead_pid_at_once(store: Store) -> None:
    clock = Clock()
    dead = owner(store, clock, "host-a", 4242)
    started(store, "CA1", clock.t)
    dead.beat(["CA1"])
    restarted = owner(store, clock, "host-a", 4243, alive=lambda pid: pid != 4242)
    sibling = owner(store, clock, "host-a", 4244)
    started(store, "CA2", clock.t)
    sibling.beat(["CA2"])
    assert restarted.repair() == ["CA1"]
    assert store.get_call("CA2")["ended_at"] is None  # a live sibling worker's call is untouched


def test_same_pid_after_a_restart_is_a_previous_incarnation(store: Store) -> None:
    clock = Clock()
    before = owner(store, clock, "container", 1)
    started(store, "CA1", clock.t)
    before.beat(["CA1"])
    after = owner(store, clock, "container", 1)  # pid 1 again, a new owner id
    assert after.repair() == ["CA1"]


def test_unclaimed_open_calls_are_closed_once_stale(store: Store) -> None:
    clock = Clock()
    repairer = owner(store, clock, "host-b", 1)
    started(store, "CAold", clock.t - DEAD_AFTER - 1)  # no process ever claimed it
    started(store, "CAnew", clock.t - 1)  # its process has not stamped it yet
    assert repairer.repair() == ["CAold"]
    assert store.get_call("CAold")["ended_at"] == clock.t - DEAD_AFTER - 1
    assert store.get_call("CAnew")["ended_at"] is None


def test_a_real_end_replaces_lost(store: Store) -> None:
    clock = Clock()
    a = owner(store, clock, "host-a", 1)
    b = owner(store, clock, "host-b", 1)
    started(store, "CA1", clock.t)
    a.beat(["CA1"])
    clock.t += DEAD_AFTER + 1
    b.beat([])
    assert b.repair() == ["CA1"]
    # host-a was only cut off: its summary does not change the end, its real end does.
    assert store.apply(RecordCallEnded(call_sid="CA1", ended_at=clock.t + 1, reason="", summary="s"))
    assert store.get_call("CA1")["end_reason"] == "lost"
    assert store.apply(RecordCallEnded(call_sid="CA1", ended_at=clock.t + 2, reason="ended"))
    call = store.get_call("CA1")
    assert call["end_reason"] == "ended" and call["ended_at"] == clock.t + 2 and call["summary"] == "s"
    assert not store.apply(RecordCallEnded(call_sid="CA1", ended_at=clock.t + 3, reason="shutdown"))
    a.beat(["CA1"])  # back: it registers again and cannot reopen the call
    assert store.get_call("CA1")["ended_at"] == clock.t + 2
    assert a.id in [r["id"] for r in store.query("SELECT id FROM call_owners")]
