"""Start and stop 1,000 call-shaped trees: no threads, actors or memory left behind.

Each tree is what a phone call looks like to the runtime: a per-call
``Supervisor`` (a dynamic ``temporary`` child of the process's "calls"
supervisor, added with ``start_child``) with four trio children (transport,
decoder, planner, pacer) and two pykka children (stt, tts), passing numbered
messages transport -> decoder -> stt -> planner -> tts -> pacer across the
bridge both ways, then stopped with ``request_stop``. Trees run 50 at a time.

Real threads, so the real clock; the whole file takes a few seconds.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psutil
import pykka
import trio

from engine.actor import PykkaActor, TrioActor
from engine.supervisor import ChildSpec, Restart, Supervisor, run_root

TREES = 1000
BATCH = 50
MESSAGES = 5
RSS_BOUND = 8 * 1024 * 1024


class Forward(TrioActor):
    """A trio stage: forwards each message to ``self.to``."""

    to = ""

    async def receive(self, msg: Any) -> None:
        self.ctx.send(self.to, msg)


class Transport(Forward):
    to = "decoder"

    async def receive(self, msg: Any) -> None:
        for i in range(msg):
            self.ctx.send(self.to, i)


class Decoder(Forward):
    to = "stt"


class Planner(Forward):
    to = "tts"


class Pacer(TrioActor):
    async def receive(self, msg: Any) -> None:
        self.ctx.env["got"].append(msg)
        if len(self.ctx.env["got"]) == MESSAGES:
            self.ctx.env["done"].set()


class ThreadStage(PykkaActor):
    """A pykka stage: forwards from its own thread back into trio by role."""

    to = ""

    def receive(self, msg: Any) -> None:
        self.ctx.send(self.to, msg)


class Stt(ThreadStage):
    to = "planner"


class Tts(ThreadStage):
    to = "pacer"


def call_tree(name: str, env: dict[str, Any]) -> Supervisor:
    return Supervisor(
        name,
        [
            ChildSpec("pacer", lambda ctx: Pacer()),
            ChildSpec("tts", lambda ctx: Tts.start(ctx)),
            ChildSpec("planner", lambda ctx: Planner()),
            ChildSpec("stt", lambda ctx: Stt.start(ctx)),
            ChildSpec("decoder", lambda ctx: Decoder()),
            ChildSpec("transport", lambda ctx: Transport(), restart=Restart.TRANSIENT, significant=True),
        ],
        auto_shutdown="any_significant",
        env=env,
    )


async def one_call(root: Supervisor, i: int) -> None:
    role = f"call-{i}"
    env: dict[str, Any] = {"got": [], "done": trio.Event()}
    await root.start_child(ChildSpec(role, lambda ctx: call_tree(role, env), restart=Restart.TEMPORARY))
    call = root.child(role)
    assert isinstance(call, Supervisor)
    call.tell_role("transport", MESSAGES)
    await env["done"].wait()
    assert env["got"] == list(range(MESSAGES))
    call.request_stop()
    await call.wait_finished()


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def test_thousand_call_trees_leave_nothing_behind() -> None:
    proc = psutil.Process()
    base_threads = threading.active_count()
    base_os_threads = proc.num_threads()
    root = Supervisor("calls", [], intensity=10, period=5.0)
    rss_200 = 0
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            await n.start(run_root, root)
            for start in range(0, TREES, BATCH):
                async with trio.open_nursery() as batch:
                    for i in range(start, start + BATCH):
                        batch.start_soon(one_call, root, i)
                # The exit of each call reaches the root as an event; then its slot is gone.
                await wait_for(lambda: not root.snapshot()["children"], 5, "the root to forget its calls")
                if start + BATCH == 200:
                    rss_200 = rss()
            assert root.snapshot()["children"] == []
            assert root.total_restarts == 0
            root.request_stop()

    # pykka threads end just after reporting their exit: allow them a moment.
    deadline = time.monotonic() + 2
    while (threading.active_count() != base_threads or proc.num_threads() > base_os_threads) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert threading.active_count() == base_threads, threading.enumerate()
    # OS threads: none left over (earlier tests' idle worker threads may have exited meanwhile).
    assert proc.num_threads() <= base_os_threads
    assert pykka.ActorRegistry.get_all() == []
    growth = rss() - rss_200
    assert growth < RSS_BOUND, f"RSS grew {growth / 1e6:.1f} MB from tree 200 to tree {TREES}"
