"""The admission decision (engine.admission), alone."""

from __future__ import annotations

import pytest

from engine.admission import Admission, Ticket


def test_counts_from_the_upgrade_and_refuses_past_capacity() -> None:
    adm = Admission(max_calls=3, max_pending=10)
    tickets = [adm.admit("1.1.1.1") for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert adm.admit("1.1.1.1") == "capacity"  # none has started: counted all the same
    assert not adm.can_take_call()
    tickets[0].started()
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert adm.can_take_call() and isinstance(adm.admit("2.2.2.2"), Ticket)
    assert adm.peak == 3 and adm.peak_live == 1


def test_pending_caps_overall_and_per_address() -> None:
    adm = Admission(max_calls=100, max_pending=4, max_pending_per_ip=2)
    a = [adm.admit("10.0.0.1") for _ in range(2)]
    assert adm.admit("10.0.0.1") == "pending_ip"
    b = [adm.admit("10.0.0.2") for _ in range(2)]
    assert adm.admit("10.0.0.3") == "pending"
    for t in a + b:
        assert isinstance(t, Ticket)
        t.started()  # started calls are never limited per address (Twilio shares addresses)
    more = [adm.admit("10.0.0.1") for _ in range(2)]
    assert all(isinstance(t, Ticket) for t in more)
    assert adm.snapshot() == {"draining": False, "admitted": 6, "pending": 2, "live": 4, "peak": 6, "peak_live": 4}


def test_draining_refuses_everything_new() -> None:
    adm = Admission(max_calls=10, max_pending=10)
    t = adm.admit()
    adm.draining = True
    assert adm.admit() == "draining" and not adm.can_take_call()
    assert isinstance(t, Ticket)
    t.release()
    assert adm.admitted == 0


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        Admission(max_calls=-1, max_pending=1)
