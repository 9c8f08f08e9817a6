"""A worker that takes items one at a time and retries, once, the item it crashed on.

The item being handled is written to an ``InFlight`` cell that the worker's
owner keeps (a chat's ``ChatSession``), not to the actor incarnation, so the
next incarnation the supervisor starts finds it: it handles that item again
(attempt 2) before taking new ones, and if it was already the second attempt
it gives the item up (``given_up``) and goes on. One bad item therefore costs
two crashes, never the items queued behind it, and never a crash loop.

The chat planner and the chat sender are both such workers
(``whatsapp_bridge.chat``); each says where items come from (``next_item``),
what handling is (``handle``) and what giving up means (``given_up``).
"""

from __future__ import annotations

from typing import Any

import trio

from engine.actor import TrioActor

__all__ = ["InFlight", "RetryOnceWorker", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 2  # an item being handled when its worker crashed is tried once more


class InFlight:
    """The item a worker is handling and its attempt number (outlives incarnations)."""

    __slots__ = ("item", "attempt")

    def __init__(self) -> None:
        self.item: Any = None
        self.attempt = 0

    @property
    def busy(self) -> bool:
        return self.attempt > 0

    def set(self, item: Any, attempt: int) -> None:
        self.item, self.attempt = item, attempt

    def clear(self) -> None:
        self.item, self.attempt = None, 0


class RetryOnceWorker(TrioActor):
    """Handles items from ``next_item`` in order; see the module docstring.

    ``next_item`` returning (or raising ``trio.EndOfChannel``) ends the worker
    normally. Subclasses must not override ``run``.
    """

    def __init__(self, inflight: InFlight) -> None:
        super().__init__()
        self.inflight = inflight
        self._retry: tuple[Any, int] | None = None

    # ---- for subclasses ------------------------------------------------------------

    async def next_item(self) -> Any:
        """Wait for the next item."""
        raise NotImplementedError

    async def handle(self, item: Any) -> None:
        """Handle one item; an exception fails the worker (the item is retried once)."""
        raise NotImplementedError

    def given_up(self, item: Any) -> None:
        """``item`` failed its retry too and is dropped (count it, release what it holds)."""

    # ---- mechanics ---------------------------------------------------------------------

    async def on_start(self) -> None:
        cell = self.inflight
        if not cell.busy:
            return
        item, attempt = cell.item, cell.attempt
        if attempt >= MAX_ATTEMPTS:
            cell.clear()
            self.given_up(item)
        else:
            self._retry = (item, attempt)

    async def run(self) -> None:
        if self._retry is not None:
            item, attempt = self._retry
            self._retry = None
            await self._attempt(item, attempt + 1)
        while True:
            try:
                item = await self.next_item()
            except trio.EndOfChannel:
                return
            await self._attempt(item, 1)

    async def _attempt(self, item: Any, attempt: int) -> None:
        self.inflight.set(item, attempt)
        await self.handle(item)
        self.inflight.clear()
        self.handled += 1
