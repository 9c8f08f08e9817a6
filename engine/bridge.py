"""The trio <-> pykka bridge: the only two ways messages cross between the worlds.

trio -> pykka: ``ActorRef.tell(msg)``. pykka's inbox is a ``queue.Queue``; ``tell``
never blocks, so it is safe on the trio thread. trio never calls ``ask()``: a
blocked trio thread would stall every call in the process.

pykka -> trio: ``TrioPort.send(msg)`` schedules ``send_nowait`` on the trio thread
with ``TrioToken.run_sync_soon``. The callback runs on the trio thread and must
never raise (trio would stop with ``TrioInternalError``), so a full channel
(``trio.WouldBlock``) or a closed one is counted and the message dropped: the
receiving side went away or is hopelessly behind, and the sender must not be
punished for it. A ``RunFinishedError`` (trio already exited) is swallowed too.

Ordering: messages from one thread through one port arrive in the order sent,
because ``run_sync_soon`` callbacks run in FIFO order.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import trio

__all__ = ["TrioPort", "call_soon_in_trio"]


class TrioPort:
    """A thread-safe handle for sending into a trio memory channel.

    Created on the trio thread (it captures the current ``TrioToken``); ``send``
    may be called from any thread, including the trio thread itself, where it
    delivers synchronously.
    """

    __slots__ = ("_channel", "_token", "_trio_thread", "dropped", "closed")

    def __init__(self, channel: trio.MemorySendChannel[Any]) -> None:
        self._channel = channel
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        self.dropped = 0
        self.closed = False

    def send(self, msg: Any) -> None:
        if threading.get_ident() == self._trio_thread:
            self._deliver(msg)
            return
        try:
            self._token.run_sync_soon(self._deliver, msg)
        except trio.RunFinishedError:
            self.closed = True

    def _deliver(self, msg: Any) -> None:
        # Runs on the trio thread. Must not raise.
        try:
            self._channel.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True
            self.dropped += 1


def call_soon_in_trio(token: trio.lowlevel.TrioToken, fn: Callable[..., Any], *args: Any) -> bool:
    """Run ``fn(*args)`` on the trio thread soon; exceptions in ``fn`` are swallowed.

    Returns False when trio has already finished. Use for callbacks whose target
    is not a channel (for instance a supervisor's ``tell_role``).
    """

    def _safe() -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a raising callback would kill the trio run
            import logging

            logging.getLogger("callengine.bridge").exception("callback into trio failed")

    try:
        token.run_sync_soon(_safe)
        return True
    except trio.RunFinishedError:
        return False
