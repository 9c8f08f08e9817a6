"""The trio <-> pykka bridge (``engine.bridge``) and messaging across it.

Real threads throughout (pykka actors and plain ``threading.Thread``s), so
these run on the real clock with bounded waits.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pykka
import pytest
import trio

from engine.actor import PykkaActor, TrioActor
from engine.bridge import TrioPort, call_soon_in_trio
from engine.supervisor import ChildSpec, Supervisor, run_root

N = 10_000


class Source(TrioActor):
    """Sends ``0..N-1`` to the ``relay`` role on its first message."""

    async def receive(self, msg: Any) -> None:
        for i in range(msg):
            self.ctx.send("relay", i)


class Relay(PykkaActor):
    """Runs on its own thread: forwards each message back into trio by role."""

    def receive(self, msg: Any) -> None:
        assert not self.ctx.on_trio()
        self.ctx.send("sink", msg)


class Sink(TrioActor):
    mailbox_size = 2 * N  # the bridge delivers in bursts; this test is about order, not backpressure

    def __init__(self, got: list[int], done: trio.Event, expect: int) -> None:
        super().__init__()
        self.got = got
        self.done = done
        self.expect = expect

    async def receive(self, msg: Any) -> None:
        self.got.append(msg)
        if len(self.got) == self.expect:
            self.done.set()


async def test_round_trip_trio_pykka_trio_in_order() -> None:
    got: list[int] = []
    done = trio.Event()
    sup = Supervisor(
        "bridge",
        [
            ChildSpec("sink", lambda ctx: Sink(got, done, N)),
            ChildSpec("relay", lambda ctx: Relay.start(ctx)),
            ChildSpec("source", lambda ctx: Source()),
        ],
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            sup.tell_role("source", N)
            await done.wait()
            snap = {c["role"]: c for c in sup.snapshot()["children"]}
            assert snap["relay"]["handled"] == N
            assert snap["sink"]["overflow"] == 0
            sup.request_stop()
    assert got == list(range(N))


class PortRelay(PykkaActor):
    """Sends every message into trio through a ``TrioPort`` it was given."""

    def __init__(self, ctx: Any, port: TrioPort) -> None:
        super().__init__(ctx)
        self.port = port

    def receive(self, msg: Any) -> None:
        self.port.send(msg)


async def test_trio_port_round_trip_in_order() -> None:
    send, recv = trio.open_memory_channel[int](math.inf)
    port = TrioPort(send)
    sup = Supervisor("bridge", [ChildSpec("relay", lambda ctx: PortRelay.start(ctx, port))])
    got: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            ref = sup.child("relay")
            assert isinstance(ref, pykka.ActorRef)
            for i in range(N):
                ref.tell(i)  # trio -> pykka: never blocks the trio thread
            async for msg in recv:
                got.append(msg)
                if len(got) == N:
                    break
            sup.request_stop()
    assert got == list(range(N))
    assert port.dropped == 0 and not port.closed


async def test_trio_port_send_on_trio_thread_is_synchronous() -> None:
    send, recv = trio.open_memory_channel[int](4)
    port = TrioPort(send)
    port.send(1)
    port.send(2)
    assert recv.receive_nowait() == 1
    assert recv.receive_nowait() == 2


def _from_thread(fn: Any, *args: Any) -> None:
    t = threading.Thread(target=fn, args=args)
    t.start()
    t.join(5)
    assert not t.is_alive()


async def _drain_callbacks() -> None:
    """Let every queued run_sync_soon callback run (they run before tasks are rescheduled)."""
    for _ in range(3):
        await trio.sleep(0.01)


async def test_trio_port_full_channel_drops_and_counts() -> None:
    send, recv = trio.open_memory_channel[int](2)
    port = TrioPort(send)
    _from_thread(lambda: [port.send(i) for i in range(10)])
    await _drain_callbacks()
    assert port.dropped == 8
    assert not port.closed
    assert [recv.receive_nowait(), recv.receive_nowait()] == [0, 1]
    _from_thread(port.send, 99)  # room again: delivered
    await _drain_callbacks()
    assert recv.receive_nowait() == 99
    assert port.dropped == 8


async def test_trio_port_closed_receiver_never_crashes_trio() -> None:
    send, recv = trio.open_memory_channel[int](10)
    port = TrioPort(send)
    await recv.aclose()
    _from_thread(lambda: [port.send(i) for i in range(5)])
    await _drain_callbacks()
    assert port.closed
    assert port.dropped == 5
    port.send(6)  # also from the trio thread itself
    assert port.dropped == 6
    # trio is alive and well: a checkpoint and a timer still work.
    with trio.fail_after(1):
        await trio.sleep(0.01)


async def test_trio_port_closed_sender_side_counts_too() -> None:
    send, recv = trio.open_memory_channel[int](10)
    port = TrioPort(send)
    await send.aclose()
    _from_thread(port.send, 1)
    await _drain_callbacks()
    assert port.closed and port.dropped == 1


def test_send_after_trio_run_finished_does_not_raise() -> None:
    ports: list[TrioPort] = []
    tokens: list[trio.lowlevel.TrioToken] = []

    async def main() -> None:
        send, _recv = trio.open_memory_channel[int](10)
        ports.append(TrioPort(send))
        tokens.append(trio.lowlevel.current_trio_token())

    trio.run(main)
    port = ports[0]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            port.send(1)
            assert call_soon_in_trio(tokens[0], print, "never") is False
        except BaseException as exc:  # noqa: BLE001 - the assertion under test
            errors.append(exc)

    _from_thread(worker)
    assert errors == []
    assert port.closed


def test_pykka_ctx_send_after_trio_run_finished_does_not_raise() -> None:
    """A pykka actor outliving its trio run (abandoned at shutdown) may still send."""
    release = threading.Event()
    sent = threading.Event()
    errors: list[BaseException] = []

    class Late(PykkaActor):
        def stopping(self) -> None:
            release.wait(5)
            try:
                self.ctx.send("anyone", "late")
            except BaseException as exc:  # noqa: BLE001 - the assertion under test
                errors.append(exc)
            sent.set()

    async def main() -> None:
        sup = Supervisor("t", [ChildSpec("late", lambda ctx: Late.start(ctx), shutdown=0.05)])
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            sup.request_stop()

    trio.run(main)
    release.set()
    assert sent.wait(5)
    assert errors == []
    deadline = time.monotonic() + 5
    while pykka.ActorRegistry.get_all() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pykka.ActorRegistry.get_all() == []


async def test_call_soon_in_trio_swallows_callback_errors(caplog: pytest.LogCaptureFixture) -> None:
    token = trio.lowlevel.current_trio_token()
    ran: list[int] = []

    def bad() -> None:
        ran.append(1)
        raise ValueError("bad callback")

    with caplog.at_level(logging.ERROR, logger="callengine.bridge"):
        _from_thread(lambda: call_soon_in_trio(token, bad))
        _from_thread(lambda: call_soon_in_trio(token, ran.append, 2))
        await _drain_callbacks()
    assert ran == [1, 2]  # the second callback still ran: trio survived the first
    assert "callback into trio failed" in caplog.text


async def test_ctx_send_from_many_threads_keeps_per_thread_order() -> None:
    """Each pykka thread's messages arrive in the order that thread sent them."""
    got: list[tuple[str, int]] = []
    done = trio.Event()
    per = 2000

    class Burst(PykkaActor):
        def receive(self, msg: Any) -> None:
            for i in range(per):
                self.ctx.send("sink", (self.ctx.role, i))

    sup = Supervisor(
        "t",
        [ChildSpec("sink", lambda ctx: Sink(got, done, 3 * per))]
        + [ChildSpec(f"b{k}", lambda ctx: Burst.start(ctx)) for k in range(3)],
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            for k in range(3):
                sup.tell_role(f"b{k}", "go")
            await done.wait()
            sup.request_stop()
    for k in range(3):
        assert [i for r, i in got if r == f"b{k}"] == list(range(per))
