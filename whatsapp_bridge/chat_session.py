"""What one active WhatsApp chat owns across actor and tree incarnations.

A chat's inbox and outbox live here, in the ``ChatSession`` the router keeps,
not in an actor: a crashed planner or sender, or a whole tree restarted, finds
the chat's queued messages where the last incarnation left them, so a crash
drops nothing. ``Typing`` and ``Reply`` are the outbox's items, queued by the
planner and posted by the sender in that order. ``ChatRouting`` is what the
planner and sender may ask of the router that owns the session. Trio thread
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import trio

from engine.messages import ChatInbound
from engine.supervisor import Supervisor
from whatsapp_bridge.retry_worker import InFlight
from whatsapp_bridge.senders import ChatChannel

__all__ = ["ChatSession", "ChatRouting", "Typing", "Reply", "INBOX_MAX"]

INBOX_MAX = 1024


@dataclass(frozen=True, slots=True)
class Typing:
    msg: ChatInbound
    composing: bool


@dataclass(frozen=True, slots=True)
class Reply:
    msg: ChatInbound
    text: str


class ChatRouting(Protocol):
    """The router as its chats' planner and sender see it (``whatsapp_bridge.chat.ChatRouter``)."""

    runtime: Any
    idle_s: float
    history_turns: int

    def channel(self, name: str) -> ChatChannel | None: ...

    def finished(self, session: "ChatSession", msg: ChatInbound) -> None: ...

    def abandon(self, session: "ChatSession", msg: ChatInbound, where: str) -> None: ...

    def try_passivate(self, session: "ChatSession") -> bool: ...


class ChatSession:
    """What one active chat owns across actor (and tree) incarnations.

    Owned by the ``ChatRouter`` (trio thread). The planner and sender of the
    chat's current tree read its inbox/outbox; ``conversation`` belongs to the
    planner (None until restored from the store).
    """

    def __init__(self, chat_id: str, business_id: str) -> None:
        self.chat_id = chat_id
        self.business_id = business_id
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[ChatInbound](INBOX_MAX)
        self.outbox_send, self.outbox_recv = trio.open_memory_channel[Any](INBOX_MAX * 3)
        self.inflight: dict[str, ChatInbound] = {}  # delivered, not yet finished (ordered)
        self.conversation: Any = None
        self.planning = InFlight()  # the planner's message and attempt
        self.sending = InFlight()  # the sender's item and attempt
        self.tree: Supervisor | None = None
        self.state = "idle"  # idle | running | stopping
        self.answered = 0

    @property
    def role(self) -> str:
        return f"chat:{self.chat_id}"

    def snapshot(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "business": self.business_id,
            "state": self.state,
            "inflight": len(self.inflight),
            "answered": self.answered,
            "restored": self.conversation is not None,
        }
