"""Per-chat actor trees: one small supervised tree per active WhatsApp chat.

Shape (one per chat, a dynamic child of ``runtime.chats``, an
``engine.dynamic_supervisor.DynamicSupervisor``)::

    chat:<chat_id>   Supervisor  one_for_one, intensity 5 in 30 s
      planner        TrioActor   permanent - restores history, generates replies (worker thread)
      sender         TrioActor   permanent - typing indicators and replies over the chat's channel

What a user sees, and how it is guaranteed:

- *Typing at once.* On each inbound message the planner queues "composing" to
  the sender before it restores history or generates anything; the sender
  posts it while the reply is being generated.
- *Replies in order, one at a time per chat; chats in parallel.* A chat has one
  planner that takes its messages one by one from the chat's inbox, and one
  sender that posts in the order the planner queued. Different chats are
  different trees, so a slow chat never holds up another.
- *Nothing dropped by a crash.* The inbox and outbox are trio memory channels
  owned by the chat's ``ChatSession``, not by an actor incarnation, so a
  restarted planner or sender resumes where the last one stopped. Both are
  ``whatsapp_bridge.retry_worker.RetryOnceWorker``: the item an actor was
  working on when it crashed is retried once by the next incarnation, then
  given up (counted as ``whatsapp_reply_abandoned``). A whole tree that fails
  past its intensity is restarted by ``chats`` (transient, with backoff); after
  ``MAX_TREE_FAILURES`` failures in a row with no reply sent in between (a sent
  reply is progress) the chat's waiting messages are given up.
- *Passivation.* A planner idle for ``idle_passivate_s`` asks the router to stop
  the tree; the router agrees only when no message of the chat is in flight
  (queued, generating or being sent), and ``chats.passivate`` stops it. The
  next message activates a fresh tree (never beside the one still stopping)
  whose planner restores the conversation from the store
  (``chat_history`` -> ``open_conversation(history=...)``).
- *Rate limit.* More than ``rate_per_chat_per_min`` messages of one chat within
  60 s are stored (by the webhook) but not answered (``whatsapp_rate_limited``).

Rejected: using the actors' own mailboxes for chat messages (a crashed
incarnation's mailbox dies with it, so a crash would silently drop every
queued message of the chat), and one process-wide sender (a slow or retrying
send for one chat would delay every other chat's typing indicator).

Threads: everything here runs on the trio thread, except ``_generate`` (the
blocking planner ``reply`` + ``commit``), which runs on a worker thread under
``runtime.llm_limiter``. A ``ChatSession``'s conversation is only touched by one
thread at a time: its planner's worker thread while generating.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import trio

from engine.messages import (
    CancelToken,
    ChatInbound,
    EndCall,
    LeadCaptured,
    RecordChatMessage,
    RecordLead,
    TextDelta,
)
from engine.store import StoreUnavailable
from engine.supervisor import Backoff, ChildSpec, Restart, Supervisor
from whatsapp_bridge.retry_worker import MAX_ATTEMPTS, InFlight, RetryOnceWorker
from whatsapp_bridge.senders import ChatChannel, SendFailed, split_text

__all__ = ["ChatRouter", "ChatSession", "ChatPlanner", "ChatSender", "MAX_ATTEMPTS", "MAX_TREE_FAILURES"]

log = logging.getLogger("callengine.whatsapp.chat")

MAX_TREE_FAILURES = 3  # consecutive tree failures before a chat's waiting messages are given up
INBOX_MAX = 1024
RATE_WINDOW_S = 60.0
_PUNCT = ".!?…:"


# ---------------------------------------------------------------- private messages


@dataclass(frozen=True, slots=True)
class _Typing:
    msg: ChatInbound
    composing: bool


@dataclass(frozen=True, slots=True)
class _Reply:
    msg: ChatInbound
    text: str


# ---------------------------------------------------------------- the chat's state


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


# ---------------------------------------------------------------- the planner


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

    def __init__(self, session: ChatSession, router: "ChatRouter") -> None:
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
        session.outbox_send.send_nowait(_Typing(msg, True))  # before anything slow
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
        session.outbox_send.send_nowait(_Reply(msg, text))

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


# ---------------------------------------------------------------- the sender


class ChatSender(RetryOnceWorker):
    """Posts a chat's typing indicators and replies, strictly in the order queued (trio task).

    After each reply: the ``paused`` indicator, the outbound record (through the
    recorder), and ``router.finished``. A send that fails for good is counted
    (``whatsapp_reply_failed``) and logged; a failed typing indicator is counted
    only. Retries the item its predecessor crashed on, once (``RetryOnceWorker``).
    """

    def __init__(self, session: ChatSession, router: "ChatRouter") -> None:
        super().__init__(session.sending)
        self.session = session
        self.router = router

    def given_up(self, item: Any) -> None:
        if isinstance(item, _Reply):
            self.router.abandon(self.session, item.msg, "sender")

    async def next_item(self) -> Any:
        return await self.session.outbox_recv.receive()

    async def handle(self, item: Any) -> None:
        if isinstance(item, _Typing):
            await self._typing(item.msg, item.composing)
        elif isinstance(item, _Reply):
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


# ---------------------------------------------------------------- the router


class ChatRouter:
    """Routes accepted inbound messages to their chat's tree, activating and passivating trees.

    One per process, owned by ``WhatsAppService``; every method runs on the trio
    thread. The trees are keyed children of ``runtime.chats`` (a
    ``DynamicSupervisor``), which starts, restarts, gives up and passivates
    them; the router owns the chats' sessions. ``run`` (a task in the service's
    nursery) sweeps the rate windows and marks the router closing when it ends.
    """

    def __init__(
        self,
        runtime: Any,
        channels: Mapping[str, ChatChannel],
        *,
        idle_s: float,
        history_turns: int,
        rate_per_min: int,
    ) -> None:
        self.runtime = runtime
        self.channels = dict(channels)
        self.idle_s = max(0.05, float(idle_s))
        self.history_turns = int(history_turns)
        self.rate_per_min = int(rate_per_min)
        self._sessions: dict[str, ChatSession] = {}
        self._rates: dict[str, deque[float]] = {}
        self._closing = False

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus["ChatRouter"] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started(self)
            while True:
                await trio.sleep(RATE_WINDOW_S)
                self._sweep_rates()
        finally:
            self._closing = True

    async def close(self, grace_s: float = 3.0) -> None:
        """Stop every chat tree gracefully (process shutdown). Trio thread.

        New messages are no longer spawned into trees; replies already in flight
        get up to ``grace_s`` to go out; then each tree is asked to stop and
        awaited (bounded). Messages still waiting stay stored, unanswered.
        """
        self._closing = True
        with trio.move_on_after(grace_s):
            while any(s.inflight and s.tree is not None for s in self._sessions.values()):
                await trio.sleep(0.02)
        trees = []
        for session in list(self._sessions.values()):
            if session.tree is not None:
                session.state = "stopping"
                trees.append(session.tree)
                session.tree.request_stop()
        with trio.move_on_after(grace_s):
            for tree in trees:
                await tree.wait_finished()

    # ---- public API -------------------------------------------------------------------

    def channel(self, name: str) -> ChatChannel | None:
        return self.channels.get(name)

    def deliver(self, msg: ChatInbound) -> bool:
        """Queue ``msg`` for its chat (activating the chat's tree). Never blocks.

        Returns False when the message will not be answered: over the chat's
        rate limit, or the chat's inbox is full (both counted).
        """
        if self._rate_limited(msg.chat_id):
            self.runtime.metrics.count("whatsapp_rate_limited")
            return False
        session = self._sessions.get(msg.chat_id)
        if session is None:
            session = self._sessions[msg.chat_id] = ChatSession(msg.chat_id, msg.business_id)
        if msg.message_id in session.inflight:
            return True
        try:
            session.inbox_send.send_nowait(msg)
        except trio.WouldBlock:
            self.runtime.metrics.count("whatsapp_inbox_full")
            return False
        session.inflight[msg.message_id] = msg
        self._activate(session)
        return True

    def finished(self, session: ChatSession, msg: ChatInbound) -> None:
        """The sender is done with ``msg`` (answered, or failed and counted).

        Progress of the chat's tree: a failure after it does not count toward
        giving the chat up (``MAX_TREE_FAILURES``)."""
        session.inflight.pop(msg.message_id, None)
        session.answered += 1
        if session.tree is not None:  # attached to its context before its sender runs
            session.tree.ctx.report_progress()

    def abandon(self, session: ChatSession, msg: ChatInbound, where: str) -> None:
        """``msg`` crashed its actor twice: give it up (counted), keep the chat going."""
        self.runtime.metrics.count("whatsapp_reply_abandoned")
        log.error("message abandoned after a retry", extra={"chat_id": msg.chat_id, "message_id": msg.message_id, "actor": where})
        session.inflight.pop(msg.message_id, None)

    def try_passivate(self, session: ChatSession) -> bool:
        """Stop ``session``'s tree if nothing of the chat is in flight. True when stopping."""
        if session.tree is None or session.state != "running" or session.inflight or self._closing:
            return False
        chats = self.runtime.chats
        if chats is None or not chats.passivate(session.role):
            return False
        session.state = "stopping"
        self.runtime.metrics.count("whatsapp_chat_passivated")
        return True

    def live_chats(self) -> int:
        return sum(1 for s in self._sessions.values() if s.tree is not None)

    def sessions(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self._sessions.values()]

    def session(self, chat_id: str) -> ChatSession | None:
        return self._sessions.get(chat_id)

    # ---- internals ----------------------------------------------------------------------

    def _rate_limited(self, chat_id: str) -> bool:
        if self.rate_per_min <= 0:
            return False
        now = trio.current_time()
        window = self._rates.setdefault(chat_id, deque())
        while window and now - window[0] >= RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self.rate_per_min:
            return True
        window.append(now)
        return False

    def _sweep_rates(self) -> None:
        now = trio.current_time()
        for chat_id in [c for c, w in self._rates.items() if not w or now - w[-1] >= RATE_WINDOW_S]:
            del self._rates[chat_id]

    def _activate(self, session: ChatSession) -> None:
        """Have the chat's tree running (``DynamicSupervisor.activate``: never blocks, idempotent)."""
        if self._closing:
            if session.tree is None:
                self.runtime.metrics.count("whatsapp_chat_not_started")
            return
        chats = self.runtime.chats
        if chats is None or not chats.activate(
            session.role,
            lambda: self._tree_spec(session),
            give_up_after=MAX_TREE_FAILURES,
            on_give_up=self._tree_given_up,
        ):
            self.runtime.metrics.count("whatsapp_chat_not_started")
            log.error("chat tree not started", extra={"chat_id": session.chat_id})

    def _tree_spec(self, session: ChatSession) -> ChildSpec:
        return ChildSpec(
            session.role,
            lambda ctx: self._new_tree(session),
            restart=Restart.TRANSIENT,
            backoff=Backoff(base=0.05, max=1.0),
            shutdown=5.0,
        )

    def _new_tree(self, session: ChatSession) -> Supervisor:
        """A fresh tree per start: a restarted supervisor must not reuse state."""
        tree = Supervisor(
            session.role,
            [
                ChildSpec(
                    "planner",
                    lambda ctx: ChatPlanner(session, self),
                    restart=Restart.PERMANENT,
                    backoff=Backoff(base=0.05, max=2.0),
                    shutdown=2.0,
                ),
                ChildSpec(
                    "sender",
                    lambda ctx: ChatSender(session, self),
                    restart=Restart.PERMANENT,
                    backoff=Backoff(base=0.05, max=2.0),
                    shutdown=2.0,
                ),
            ],
            intensity=5,
            period=30.0,
            env={"chat_id": session.chat_id},
            on_exit=lambda sup, error: self._on_tree_exit(session, sup, error),
        )
        session.tree = tree
        session.state = "running"
        return tree

    def _on_tree_exit(self, session: ChatSession, tree: Supervisor, error: BaseException | None) -> None:
        """Runs in the tree's ``on_stop`` (trio thread). ``chats`` restarts a failed
        tree (or gives it up: ``_tree_given_up``) and starts a passivated chat's
        next tree when a message arrives; the router only keeps its session."""
        if session.tree is not tree:
            return
        session.tree = None
        session.state = "idle"
        session.conversation = None  # the next tree restores from the store
        if error is not None:
            self.runtime.metrics.count("whatsapp_chat_tree_failed")
            log.warning("chat tree exited", extra={"chat_id": session.chat_id, "error": repr(error)})
            return
        # Passivated, or stopped from above (process shutdown, ``chats`` stopping).
        # Messages still waiting stay stored; the chat's next message activates a
        # tree that answers them.
        if not session.inflight:
            self._drop(session)

    def _tree_given_up(self, role: str, error: BaseException | None) -> None:
        """``chats`` gave the chat's tree up after repeated failures: so do we."""
        session = self._sessions.get(role.removeprefix("chat:"))
        if session is None:
            return
        lost = len(session.inflight)
        if lost:
            self.runtime.metrics.count("whatsapp_reply_abandoned", lost)
        log.error("chat given up after repeated tree failures", extra={"chat_id": session.chat_id, "lost": lost})
        self._drop(session)

    def _drop(self, session: ChatSession) -> None:
        if self._sessions.get(session.chat_id) is session:
            del self._sessions[session.chat_id]
        session.inbox_send.close()
        session.outbox_send.close()
