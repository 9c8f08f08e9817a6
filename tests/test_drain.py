"""The drain procedure (engine.drain.drain) with a fake runtime and a fake clock."""

from __future__ import annotations

from typing import Any

import trio

from engine.admission import Admission
from engine.drain import drain


class FakeTree:
    def __init__(self, runtime: "FakeRuntime", sid: str) -> None:
        self.runtime, self.sid, self.stop_requested = runtime, sid, False

    def request_stop(self) -> None:
        self.stop_requested = True
        self.runtime.nursery.start_soon(self.runtime.end, self.sid, 0.5)  # the closing line, then gone


class FakeLive:
    def __init__(self, runtime: "FakeRuntime", sid: str) -> None:
        self.tree = FakeTree(runtime, sid)
        self.end_reason = ""


class FakeRuntime:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.admission = Admission(max_calls=10, max_pending=10)
        self.live: dict[str, FakeLive] = {}
        self.tickets: dict[str, Any] = {}

    @property
    def live_call_count(self) -> int:
        return len(self.live)

    def call(self, sid: str, ends_after: float | None) -> FakeLive:
        ticket = self.admission.admit("1.2.3.4")
        ticket.started()
        self.tickets[sid] = ticket
        live = self.live[sid] = FakeLive(self, sid)
        if ends_after is not None:
            self.nursery.start_soon(self.end, sid, ends_after)
        return live

    async def end(self, sid: str, after: float) -> None:
        await trio.sleep(after)
        if self.live.pop(sid, None) is not None:
            self.tickets.pop(sid).release()


async def test_calls_that_end_by_themselves_are_not_cut(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        rt = FakeRuntime(nursery)
        short = rt.call("CA1", ends_after=20.0)
        report = await drain(rt, timeout_s=60.0, closing_grace_s=8.0)
    assert rt.admission.draining and not short.tree.stop_requested
    assert report["ended_by_shutdown"] == 0 and 20.0 <= report["drain_s"] < 21.0


async def test_calls_live_at_the_timeout_end_with_reason_shutdown(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        rt = FakeRuntime(nursery)
        short, long = rt.call("CA1", ends_after=5.0), rt.call("CA2", ends_after=None)
        report = await drain(rt, timeout_s=60.0, closing_grace_s=8.0)
    assert short.end_reason == "" and not short.tree.stop_requested
    assert long.end_reason == "shutdown" and long.tree.stop_requested
    assert report["ended_by_shutdown"] == 1 and 60.0 <= report["drain_s"] < 62.0
    assert rt.admission.admitted == 0


async def test_a_second_signal_and_chats_in_flight(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        rt = FakeRuntime(nursery)
        rt.call("CA1", ends_after=None)
        hurry = trio.Event()

        async def insist() -> None:
            await trio.sleep(3.0)
            hurry.set()

        nursery.start_soon(insist)
        report = await drain(rt, timeout_s=60.0, closing_grace_s=8.0, hurry=hurry)
        assert report["ended_by_shutdown"] == 1 and report["drain_s"] < 5.0
    replies = {"n": 1}

    async def reply_done() -> None:
        await trio.sleep(7.0)
        replies["n"] = 0

    async with trio.open_nursery() as nursery:
        rt = FakeRuntime(nursery)
        nursery.start_soon(reply_done)
        report = await drain(rt, timeout_s=60.0, closing_grace_s=8.0, chats_in_flight=lambda: replies["n"])
    assert 7.0 <= report["drain_s"] < 8.0
