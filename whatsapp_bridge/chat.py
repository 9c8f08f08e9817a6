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

Where it lives: this module is the router (``ChatRouter``); the chat's state
is ``whatsapp_bridge.chat_session``, its planner ``chat_planner``, its sender
``chat_sender``.

Threads: everything here runs on the trio thread, except the planner's
generation (the blocking planner ``reply`` + ``commit``), which runs on a
worker thread under ``runtime.llm_limiter``. A ``ChatSession``'s conversation is only touched by one
thread at a time: its planner's worker thread while generating.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Mapping

import trio

from engine.messages import ChatInbound
from engine.supervisor import Backoff, ChildSpec, Restart, Supervisor
from whatsapp_bridge.chat_planner import ChatPlanner
from whatsapp_bridge.chat_sender import ChatSender
from whatsapp_bridge.chat_session import ChatSession
from whatsapp_bridge.retry_worker import MAX_ATTEMPTS
from whatsapp_bridge.senders import ChatChannel

# The session, planner and sender (their own modules) are part of this module's
# documented API, as is the retry bound they share.
__all__ = ["ChatRouter", "ChatSession", "ChatPlanner", "ChatSender", "MAX_ATTEMPTS", "MAX_TREE_FAILURES"]

log = logging.getLogger("callengine.whatsapp.chat")

MAX_TREE_FAILURES = 3  # consecutive tree failures before a chat's waiting messages are given up
RATE_WINDOW_S = 60.0


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
