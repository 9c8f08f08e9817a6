"""A chat's planner: answers the chat's messages one at a time, in order.

Guarantees: "composing" is queued to the sender before anything slow (history,
generation), so the user sees typing at once; the conversation is restored from
the store on the first message of a tree, leaving out messages still in flight
(they are answered, not replayed as history); generation runs on a worker
thread under ``runtime.llm_limiter``, never on the trio thread, and is
cancelled, with the conversation dropped, when the tree stops mid-reply (an
abandoned thread may still hold it). A planner idle for the router's
``idle_s`` asks the router to passivate the tree.
"""

from __future__ import annotations

from typing import Any

import trio

from engine.messages import CancelToken, ChatInbound, EndCall, LeadCaptured, RecordLead, TextDelta
from engine.store import StoreUnavailable
from whatsapp_bridge.chat_session import ChatRouting, ChatSession, Reply, Typing
from whatsapp_bridge.retry_worker import RetryOnceWorker

__all__ = ["ChatPlanner"]

_PUNCT = ".!?…:"


def _generate(conv: Any, text: str, cancel: CancelToken) -> tuple[str, LeadCaptured | None, bool]:
    """Worker thread: stream the reply, join it, commit the turn. Never on the trio thread."""
    pieces: list[str] = []
    lead: LeadCaptured | None = None
    ended = False
    for ev in conv.reply(text, cancel=cancel):
        if cancel.cancelled:
            break
        if isinstance(ev, TextDelta):
            piece = ev.text
            if pieces and piece and not piece[0].isspace() and pieces[-1].rstrip()[-1:] in _PUNCT:
                piece = " " + piece  # planners that yield whole sentences omit the space
            pieces.append(piece)
        elif isinstance(ev, LeadCaptured):
            lead = ev  # cumulative: the last one holds every field
        elif isinstance(ev, EndCall):
            ended = True
    reply = "".join(pieces).strip()
    if not cancel.cancelled:
        conv.commit(text, reply)
    return reply, lead, ended


class ChatPlanner(RetryOnceWorker):
    """Answers a chat's messages one at a time (trio task; generation on a worker thread).

    Retries, once, the message its predecessor was handling when it crashed
    (``RetryOnceWorker``), then reads the chat's inbox. Idle for
    ``router.idle_s``: asks the router to passivate the tree.
    """

    def __init__(self, session: ChatSession, router: ChatRouting) -> None:
        super().__init__(session.planning)
        self.session = session
        self.router = router

    def given_up(self, item: Any) -> None:
        self.router.abandon(self.session, item, "planner")

    async def next_item(self) -> ChatInbound:
        recv = self.session.inbox_recv
        while True:
            with trio.move_on_after(self.router.idle_s):
                return await recv.receive()
            if self.router.try_passivate(self.session):
                await trio.sleep_forever()  # chats stops the tree, and us with it

    async def handle(self, msg: ChatInbound) -> None:
        session = self.session
        runtime = self.router.runtime
        session.outbox_send.send_nowait(Typing(msg, True))  # before anything slow
        if session.conversation is None:
            session.conversation = await self._restore(msg)
        cancel = CancelToken()
        conv = session.conversation
        done = False
        try:
            text, lead, ended = await trio.to_thread.run_sync(
                _generate, conv, msg.text, cancel, limiter=runtime.llm_limiter, abandon_on_cancel=True
            )
            done = True
        finally:
            if not done:
                cancel.cancel("chat tree stopping")
                if session.conversation is conv:
                    session.conversation = None  # an abandoned thread may still hold it
        if lead is not None:
            runtime.record(
                RecordLead(
                    business_id=msg.business_id,
                    source="whatsapp",
                    ref=msg.chat_id,
                    fields=dict(lead.fields),
                    complete=lead.complete,
                )
            )
        if ended:
            runtime.metrics.count("whatsapp_conversation_ended")
        session.outbox_send.send_nowait(Reply(msg, text))

    async def _restore(self, msg: ChatInbound) -> Any:
        """History from the store, minus the messages still in flight, into a new conversation."""
        runtime = self.router.runtime
        session = self.session
        turns = max(0, self.router.history_turns)
        rows: list[dict[str, Any]] = []
        if turns:
            try:
                rows = await runtime.read_store(
                    runtime.store.chat_history, session.chat_id, 2 * turns + len(session.inflight)
                )
            except StoreUnavailable:
                runtime.metrics.count("whatsapp_history_unavailable")
        pairs = [
            ("user" if row["direction"] == "in" else "assistant", row["text"])
            for row in rows
            if row["message_id"] not in session.inflight and row["text"]
        ][-2 * turns :] if turns else []
        business = runtime.businesses.get(msg.business_id) or runtime.default_business()
        planner = runtime.planner
        conv = await trio.to_thread.run_sync(
            lambda: planner.open_conversation(business, channel="chat", history=pairs),
            limiter=runtime.llm_limiter,
        )
        if rows:
            runtime.metrics.count("whatsapp_history_restored")
        return conv
