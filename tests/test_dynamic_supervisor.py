"""``engine.dynamic_supervisor.DynamicSupervisor`` (keyed children on demand,
restart or give up, passivation) and the retry-once worker built on the chat
trees' pattern (``whatsapp_bridge.retry_worker``), under trio's mock clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine.actor import TrioActor
from engine.dynamic_supervisor import DynamicSupervisor
from engine.supervisor import Backoff, ChildSpec, Restart, run_root
from whatsapp_bridge.retry_worker import InFlight, RetryOnceWorker


class Child(TrioActor):
    """Logs start/stop; fails on "fail", ends on "exit", reports progress on "work"."""

    def __init__(self, log: list[tuple[str, str, float]], key: str, stop_s: float = 0.0) -> None:
        super().__init__()
        self.log = log
        self.key = key
        self.stop_s = stop_s

    async def on_start(self) -> None:
        self.log.append(("start", self.key, trio.current_time()))

    async def receive(self, msg: Any) -> None:
        if msg == "fail":
            raise RuntimeError(f"{self.key} failed")
        if msg == "exit":
            self.stop_self()
        if msg == "work":
            self.ctx.report_progress()

    async def on_stop(self) -> None:
        await trio.sleep(self.stop_s)
        self.log.append(("stop", self.key, trio.current_time()))


def spec_for(log: list[Any], key: str, *, stop_s: float = 0.0, restart: Restart = Restart.TRANSIENT) -> Any:
    return lambda: ChildSpec(
        key, lambda ctx: Child(log, key, stop_s), restart=restart, backoff=Backoff(0.1, 0.1, 0.0), shutdown=5.0
    )


def starts(log: list[Any], key: str) -> list[float]:
    return [t for w, k, t in log if w == "start" and k == key]


async def test_activate_is_idempotent_and_passivation_restores_on_demand(autojump_clock: Any) -> None:
    log: list[Any] = []
    sup = DynamicSupervisor("chats")
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        for _ in range(3):
            assert sup.activate("a", spec_for(log, "a"))
        await trio.sleep(0.01)
        assert len(starts(log, "a")) == 1 and sup.roles() == ["a"]
        assert sup.passivate("a") and not sup.passivate("a")  # already stopping
        await trio.sleep(0.01)
        assert sup.roles() == [] and sup.passivations == 1 and not sup.active("a")
        assert sup.activate("a", spec_for(log, "a"))
        await trio.sleep(0.01)
        assert len(starts(log, "a")) == 2 and sup.active("a")
        assert sup.snapshot()["passivations"] == 1
        sup.request_stop()
    assert not sup.activate("a", spec_for(log, "a"))  # stopped: nothing starts


async def test_activation_during_passivation_starts_after_the_old_child_stopped(autojump_clock: Any) -> None:
    log: list[Any] = []
    sup = DynamicSupervisor("chats")
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.activate("a", spec_for(log, "a", stop_s=1.0))
        await trio.sleep(0.01)
        assert sup.passivate("a")
        await trio.sleep(0.1)
        assert sup.activate("a", spec_for(log, "a"))  # the old one is still in on_stop
        await trio.sleep(2)
        (_, _, stopped), = [e for e in log if e[0] == "stop"]
        assert len(starts(log, "a")) == 2 and starts(log, "a")[1] >= stopped  # never beside it
        assert sup.active("a")
        sup.request_stop()


async def test_failures_restart_normal_exit_leaves_no_trace(autojump_clock: Any) -> None:
    log: list[Any] = []
    sup = DynamicSupervisor("chats")
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.activate("a", spec_for(log, "a"))
        sup.activate("b", spec_for(log, "b"))
        await trio.sleep(0.01)
        sup.tell_role("a", "fail")
        sup.tell_role("b", "exit")
        await trio.sleep(1)
        assert len(starts(log, "a")) == 2 and len(starts(log, "b")) == 1
        assert sup.roles() == ["a"]
        sup.request_stop()


async def test_give_up_after_consecutive_failures_and_progress_resets(autojump_clock: Any) -> None:
    log: list[Any] = []
    gave_up: list[tuple[str, str]] = []
    sup = DynamicSupervisor("chats")
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        sup.activate("a", spec_for(log, "a"), give_up_after=2, on_give_up=lambda k, e: gave_up.append((k, str(e))))
        await trio.sleep(0.01)
        for _ in range(2):
            sup.tell_role("a", "fail")
            await trio.sleep(1)
        sup.tell_role("a", "work")  # progress: the next failure is not counted
        sup.tell_role("a", "fail")
        await trio.sleep(1)
        assert not gave_up and len(starts(log, "a")) == 4
        for _ in range(3):
            sup.tell_role("a", "fail")
            await trio.sleep(1)
        assert gave_up == [("a", "a failed")]
        assert sup.roles() == [] and sup.given_up == 1 and len(starts(log, "a")) == 6
        # The key can be activated again later (a new chat message).
        sup.activate("a", spec_for(log, "a"))
        await trio.sleep(0.01)
        assert sup.active("a")
        sup.request_stop()


def test_dynamic_supervisor_has_no_auto_shutdown() -> None:
    with pytest.raises(TypeError):
        DynamicSupervisor("chats", auto_shutdown="any_significant")  # type: ignore[call-arg]


# ---------------------------------------------------------------- the retry-once worker


class Worker(RetryOnceWorker):
    def __init__(self, cell: InFlight, items: trio.MemoryReceiveChannel[str], done: list[str], crashed: list[str]) -> None:
        super().__init__(cell)
        self.items = items
        self.done = done
        self.crashed = crashed

    async def next_item(self) -> str:
        return await self.items.receive()

    async def handle(self, item: str) -> None:
        await trio.sleep(0.01)
        if item == "bad" or (item == "flaky" and "flaky" not in self.crashed):
            self.crashed.append(item)  # remembers it crashed once
            raise RuntimeError(f"crash on {item}")
        self.done.append(item)

    def given_up(self, item: str) -> None:
        self.crashed.append(f"given up: {item}")


async def test_retry_once_worker_retries_then_gives_up_and_keeps_order(autojump_clock: Any) -> None:
    from engine.supervisor import Supervisor

    cell = InFlight()
    send, recv = trio.open_memory_channel[str](10)
    done: list[str] = []
    crashed: list[str] = []
    sup = Supervisor(
        "t", [ChildSpec("w", lambda ctx: Worker(cell, recv, done, crashed), backoff=Backoff(0.05, 0.05, 0.0))],
        intensity=10,
    )
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        for item in ["one", "flaky", "bad", "two"]:
            send.send_nowait(item)
        await trio.sleep(2)
        assert done == ["one", "flaky", "two"]  # flaky: its retry worked; two: after bad, in order
        assert crashed == ["flaky", "bad", "bad", "given up: bad"]
        assert not cell.busy
        sup.request_stop()
