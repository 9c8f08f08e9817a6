"""A chat's sender: typing indicators and replies, posted strictly in the order queued.

One per chat tree, so a slow or retrying send for one chat never delays
another chat's typing indicator. Each reply part that goes out is recorded
(through the recorder) as an outbound message; a reply that cannot be
delivered is counted and logged, never retried past the worker's one retry.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engine.messages import ChatInbound, RecordChatMessage
from whatsapp_bridge.chat_session import ChatRouting, ChatSession, Reply, Typing
from whatsapp_bridge.retry_worker import RetryOnceWorker
from whatsapp_bridge.senders import SendFailed, split_text

__all__ = ["ChatSender"]

log = logging.getLogger("callengine.whatsapp.chat")


class ChatSender(RetryOnceWorker):
    """Posts a chat's typing indicators and replies, strictly in the order queued (trio task).

    After each reply: the ``paused`` indicator, the outbound record (through the
    recorder), and ``router.finished``. A send that fails for good is counted
    (``whatsapp_reply_failed``) and logged; a failed typing indicator is counted
    only. Retries the item its predecessor crashed on, once (``RetryOnceWorker``).
    """

    def __init__(self, session: ChatSession, router: ChatRouting) -> None:
        super().__init__(session.sending)
        self.session = session
        self.router = router

    def given_up(self, item: Any) -> None:
        if isinstance(item, Reply):
            self.router.abandon(self.session, item.msg, "sender")

    async def next_item(self) -> Any:
        return await self.session.outbox_recv.receive()

    async def handle(self, item: Any) -> None:
        if isinstance(item, Typing):
            await self._typing(item.msg, item.composing)
        elif isinstance(item, Reply):
            await self._reply(item.msg, item.text)

    async def _typing(self, msg: ChatInbound, composing: bool) -> None:
        metrics = self.router.runtime.metrics
        channel = self.router.channel(msg.channel)
        if channel is None:
            return
        try:
            await channel.typing(msg, composing)
        except SendFailed as exc:
            metrics.count("whatsapp_typing_failed")
            log.debug("typing failed", extra={"chat_id": msg.chat_id, "error": str(exc)})
            return
        if composing:
            metrics.observe("whatsapp_typing", (time.time() - msg.received_at) * 1000.0)

    async def _reply(self, msg: ChatInbound, text: str) -> None:
        runtime = self.router.runtime
        metrics = runtime.metrics
        channel = self.router.channel(msg.channel)
        if channel is None:
            metrics.count("whatsapp_reply_failed")
            log.warning("no channel to reply on", extra={"chat_id": msg.chat_id, "channel": msg.channel})
        elif text:
            for k, part in enumerate(split_text(text, channel.max_text_chars)):
                try:
                    out_id = await channel.send_text(msg, part)
                except SendFailed as exc:
                    metrics.count("whatsapp_reply_failed")
                    log.warning(
                        "reply not delivered",
                        extra={"chat_id": msg.chat_id, "message_id": msg.message_id, "error": str(exc)},
                    )
                    break
                metrics.whatsapp.labels("out", channel.name).inc()
                runtime.record(
                    RecordChatMessage(
                        chat_id=msg.chat_id,
                        business_id=msg.business_id,
                        message_id=out_id or f"{msg.message_id}:reply:{k}",
                        direction="out",
                        text=part,
                        at=time.time(),
                    )
                )
            else:
                metrics.observe("whatsapp_reply", (time.time() - msg.received_at) * 1000.0)
        if channel is not None:
            await self._typing(msg, False)
        self.router.finished(self.session, msg)
