"""Two kinds of actor behind one API: trio tasks and pykka threads.

Why two kinds (measured on 2 cores; docs/architecture.md): one pykka thread per stage on
the 20 ms path cannot hold 50 calls, while trio tasks hold 200. So every actor on
the 20 ms path (transport, decoder, pacer) is a ``TrioActor``; actors that must
block (a vendor SDK's streaming session, a synchronous TTS call, the database)
are ``PykkaActor`` threads that receive audio in 40-100 ms batches.

Both kinds are started by a ``Supervisor`` (``engine.supervisor``) from a child
spec whose factory takes an ``ActorContext`` and returns either a ``TrioActor``
instance or the ``ActorRef`` of a started ``PykkaActor``. Both report readiness
and exit to their ``Parent`` (the supervisor) through the context; neither kind
ever lets an exception escape silently (pykka would only log a failure in
``on_start``; here it is forwarded). This module knows its parent only as the
``Parent`` protocol, and the supervisor drives a trio actor only through
``TrioActor.attach``, ``run_supervised`` and ``begin_stop``: the mechanics of
running an actor live here, the decisions about it in the supervisor.

Which thread runs what:

- ``TrioActor``: every method runs on the trio thread, inside the actor's own
  nursery (``self.nursery``), which the supervisor's nursery owns. Tasks the
  actor starts in ``self.nursery`` die with it; an exception in any of them
  fails the actor.
- ``PykkaActor``: ``started``, ``receive`` and ``stopping`` run on the actor's
  own thread. It talks to trio only through ``self.ctx.send`` (thread-safe).

Messages: any frozen dataclass from ``engine.messages``. Siblings address each
other by role through ``ctx.send(role, msg)``, never by instance, so a restarted
actor receives the next message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping, Protocol

import pykka
import trio

from engine.bridge import call_soon_in_trio

__all__ = ["ActorContext", "Parent", "TrioActor", "PykkaActor", "ActorFailed", "unwrap_group"]

log = logging.getLogger("callengine.actor")


class ActorFailed(Exception):
    """Raised inside a PykkaActor's thread to fail it on purpose (e.g. a session died)."""


class Parent(Protocol):
    """What an actor's context reports to (a supervisor). Trio thread only."""

    def tell_role(self, role: str, msg: Any) -> None:
        """Deliver ``msg`` to the sibling in slot ``role``."""

    def child_ready(self, role: str, generation: int) -> None:
        """Incarnation ``generation`` of ``role`` finished starting."""

    def child_exited(self, role: str, generation: int, error: BaseException | None) -> None:
        """Incarnation ``generation`` of ``role`` ended (``error`` None: normally)."""


def unwrap_group(exc: BaseException) -> BaseException:
    """A nursery wraps a single failure in an ExceptionGroup; report the cause."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class ActorContext:
    """What an actor incarnation knows about its place in the tree.

    Created by the supervisor for each start of a slot (each incarnation gets a
    new context with a new ``generation``). ``env`` holds the tree's shared,
    read-only dependencies (providers, the business profile, call info, the
    recorder); it is the same mapping for every sibling.
    """

    __slots__ = (
        "role",
        "generation",
        "supervisor",
        "env",
        "_token",
        "_trio_thread",
        "_ready",
        "_exited",
        "handled",
        "progressed",
    )

    def __init__(
        self,
        role: str,
        generation: int,
        supervisor: Parent,
        env: Mapping[str, Any],
    ) -> None:
        self.role = role
        self.generation = generation
        self.supervisor = supervisor
        self.env = env
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        self._ready = False
        self._exited = False
        self.handled = 0  # messages handled by a pykka incarnation (its thread writes)
        self.progressed = False  # see report_progress

    # ---- messaging (any thread) -----------------------------------------------

    def send(self, role: str, msg: Any) -> None:
        """Send ``msg`` to the sibling in slot ``role``. Never blocks; any thread.

        On the trio thread it is delivered (or buffered by the slot) at once; from
        another thread it is scheduled onto the trio thread, preserving order.
        """
        if threading.get_ident() == self._trio_thread:
            self.supervisor.tell_role(role, msg)
        else:
            call_soon_in_trio(self._token, self.supervisor.tell_role, role, msg)

    def on_trio(self) -> bool:
        return threading.get_ident() == self._trio_thread

    # ---- lifecycle reports (used by the runtime) ---------------------------------

    def report_ready(self) -> None:
        if not self._ready:
            self._ready = True
            self._post(self.supervisor.child_ready, self.role, self.generation)

    def report_progress(self) -> None:
        """This incarnation did useful work: if it fails now, the supervisor treats
        the failure as it treats one after a stable run (``stable_after``): the
        consecutive-failure count starts again, so the restart waits the first
        backoff step and counts neither toward the fallback nor toward the
        restart intensity. Any thread; call it before failing (the exit report
        that follows carries it)."""
        self.progressed = True

    def report_exit(self, error: BaseException | None) -> None:
        if not self._exited:
            self._exited = True
            self._post(self.supervisor.child_exited, self.role, self.generation, error)

    def _post(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._trio_thread:
            fn(*args)
        else:
            call_soon_in_trio(self._token, fn, *args)


class TrioActor:
    """An actor that is a trio task with a bounded mailbox.

    Subclasses override ``receive`` (and optionally ``on_start``, ``on_stop``, or
    ``run`` for a custom main loop). All run on the trio thread.

    Guarantees:
    - ``on_start`` completes before the supervisor reports the actor ready and
      before any message is handled (OTP's synchronous start).
    - Messages are handled one at a time in arrival order.
    - ``on_stop`` runs on every exit (normal, failure, or stop by the
      supervisor), shielded from cancellation and bounded by the slot's shutdown
      timeout.
    - An exception from any method or from a task in ``self.nursery`` fails the
      actor; the supervisor decides what happens next.

    Inline delivery (opt-in). A stage on the 20 ms path whose handling never
    waits can define ``receive_inline(msg)`` (synchronous) and set ``inline =
    True`` (on the class, or per instance at any time). ``deliver`` then calls
    ``receive_inline`` directly, in the sender's task, instead of queueing the
    message for the actor's own task. Why: a message through the mailbox wakes
    the actor's task, which trio must then schedule, once per message per stage;
    at 50 calls these task switches are a large share of the trio thread, and
    200 calls were measured once the per-frame stages are plain calls
    inside one task. What still holds:
    - Order and one-at-a-time: a message goes inline only while the actor is
      running (``on_start`` done, not stopping, not failed) and nothing it was
      given earlier is still unhandled (queued before it was running, queued
      while ``inline`` was off, or the message being handled when a re-entrant
      send comes back to it); otherwise it is queued, and the default ``run``
      hands it to ``receive``, which by default calls ``receive_inline``.
      Inline delivery needs that default loop: it counts queued messages down.
      A subclass's own ``run`` must end in ``await super().run()`` (as the
      transport's does) or leave ``inline`` off; otherwise, once one message
      has been queued, nothing more goes inline.
    - ``handled`` counts messages handled either way.
    - Failure isolation: an exception from ``receive_inline`` run inline fails
      this actor exactly as one from ``receive`` would (the supervisor sees it
      exit with that error and applies its restart policy) and never reaches the
      sender, which is another actor. From then on nothing is handled inline;
      later messages are lost as for any failed actor until the supervisor marks
      the slot stopped, after which the slot buffers them for the restart.
      ``BaseException`` other than ``KeyboardInterrupt`` (e.g. a ``Cancelled``
      that cannot legitimately come out of synchronous code, ``SystemExit``) is
      a failure of this actor too, reported as ``ActorFailed``;
      ``KeyboardInterrupt`` is the process being interrupted, not a fault of
      this actor, and is re-raised in the sender's task as it would have been
      in the actor's own.
    - ``receive_inline`` runs on the trio thread inside some other task, so it
      must not await (it cannot) and must stay short; ``self.ctx`` and
      ``self.nursery`` (to start tasks that belong to this actor) work as in
      ``receive``.
    """

    kind = "trio"
    mailbox_size = 512
    #: Deliver to ``receive_inline`` in the sender's task (see class docstring).
    inline = False

    ctx: ActorContext
    nursery: trio.Nursery

    def __init__(self) -> None:
        self._send: trio.MemorySendChannel[Any] | None = None
        self._recv: trio.MemoryReceiveChannel[Any] | None = None
        self.handled = 0
        self.dropped = 0
        # Inline delivery state (trio thread only). ``_inline_open``: running,
        # defines receive_inline, not stopping or failed. ``_pending``: messages
        # accepted but not yet fully handled (queued ones until ``run`` has handled
        # them; an inline one while its handler runs). ``_failure``: what
        # receive_inline raised inline, for the supervisor to report.
        self._inline_open = False
        self._pending = 0
        self._failure: BaseException | None = None

    # ---- overridable ---------------------------------------------------------------

    async def on_start(self) -> None:
        """Prepare. Runs before the actor is reported ready."""

    async def receive(self, msg: Any) -> None:
        """Handle one message from the mailbox. By default: ``receive_inline``."""
        self.receive_inline(msg)

    def receive_inline(self, msg: Any) -> None:
        """Handle one message synchronously (inline actors; see class docstring).

        Runs either in the sender's task (inline) or in this actor's task (via
        ``receive`` when the message was queued). By default ignores ``msg``.
        """

    async def on_stop(self) -> None:
        """Release what the actor owns. Shielded and time-bounded."""

    async def run(self) -> None:
        """The main loop; by default handle mailbox messages until stopped."""
        assert self._recv is not None
        async for msg in self._recv:
            await self.receive(msg)
            self.handled += 1
            self._pending -= 1

    # ---- used by the supervisor --------------------------------------------------------

    def attach(self, ctx: ActorContext) -> None:
        """Give this (new) actor its context and a fresh mailbox, before ``run_supervised``."""
        self.ctx = ctx
        self._open_mailbox()

    async def run_supervised(self, scope: trio.CancelScope, shutdown: float) -> None:
        """Run this actor's whole life inside ``scope`` and report its exit to the parent.

        ``on_start``, then ready, then ``run`` in the actor's own nursery; on
        any exit (``run`` returning, a failure, ``scope`` cancelled by the
        parent) ``on_stop`` runs shielded and bounded by ``shutdown`` seconds,
        and ``ctx.report_exit`` carries the first error (a failure of
        ``receive_inline`` in a sender's task is the cause when there is one).
        Also when a Cancelled passes ``scope`` (the parent itself is being
        cancelled, so an enclosing scope claims it) the exit is reported: the
        parent waits for that report and must not wait out the whole shutdown
        bound for an actor that has already stopped.
        """
        error: BaseException | None = None
        ctx = self.ctx
        try:
            with scope:
                try:
                    async with trio.open_nursery() as nursery:
                        self.nursery = nursery
                        await self.on_start()
                        self._open_inline()
                        ctx.report_ready()
                        await self.run()
                        nursery.cancel_scope.cancel()
                except* Exception as group:  # reported to the parent; Cancelled passes
                    error = unwrap_group(group)
                finally:
                    self.begin_stop()
                    if self._failure is not None:
                        error = self._failure
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(shutdown):
                            try:
                                await self.on_stop()
                            except Exception as exc:  # noqa: BLE001
                                if error is None:
                                    error = exc
        finally:
            ctx.report_exit(error)

    def begin_stop(self) -> None:
        """The actor is stopping: nothing more is handled inline (idempotent)."""
        self._inline_open = False

    def _open_mailbox(self) -> None:
        self._send, self._recv = trio.open_memory_channel(self.mailbox_size)
        self._inline_open = False
        self._pending = 0
        self._failure = None

    def _open_inline(self) -> None:
        """The actor is running (``on_start`` done): inline delivery may begin."""
        self._inline_open = type(self).receive_inline is not TrioActor.receive_inline

    def deliver(self, msg: Any) -> bool:
        """Hand ``msg`` to the actor (trio thread). False when refused.

        Inline (see class docstring) when possible: ``receive_inline`` has run
        when this returns, and its failure fails this actor, never the caller.
        Otherwise into the mailbox: False when full (counted in ``dropped``) or
        closed.
        """
        if self.inline and self._inline_open and not self._pending:
            self._pending = 1  # a re-entrant send to this actor queues behind this one
            try:
                self.receive_inline(msg)
            except KeyboardInterrupt:
                self._pending -= 1
                raise
            except BaseException as exc:  # noqa: BLE001 - fails this actor, see class docstring
                self._fail_inline(exc)
                return True
            self._pending -= 1
            self.handled += 1
            return True
        assert self._send is not None
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            self.dropped += 1
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._pending += 1
        return True

    def _fail_inline(self, exc: BaseException) -> None:
        """Fail this actor with ``exc`` from an inline ``receive_inline``.

        Runs in the sender's task: record the error, stop inline delivery, and
        cancel the actor's nursery; the supervisor's runner then reports the
        recorded error as this actor's exit (``run_supervised``).
        """
        if not isinstance(exc, Exception):
            failure: BaseException = ActorFailed(f"{type(exc).__name__}: {exc}")
            failure.__cause__ = exc
            exc = failure
        self._inline_open = False
        if self._failure is None:
            self._failure = exc
        self.nursery.cancel_scope.cancel()

    def mailbox_depth(self) -> int:
        if self._send is None:
            return 0
        return self._send.statistics().current_buffer_used

    def stop_self(self) -> None:
        """End the actor normally (a ``transient`` child is then not restarted)."""
        self._inline_open = False
        self.nursery.cancel_scope.cancel()


class PykkaActor(pykka.ThreadingActor):
    """An actor with its own thread, for work that blocks.

    Subclasses override ``started``, ``receive`` and ``stopping`` (all run on the
    actor's thread) and construct themselves with the ``ActorContext``::

        spec = ChildSpec("stt", lambda ctx: SttActor.start(ctx))

    Guarantees:
    - A failure in ``started`` or ``receive`` is reported to the supervisor
      (``Parent.child_exited``) with the error (pykka alone would only log
      ``on_start`` failures); the actor then handles no further message.
    - A normal stop (``ref.stop()``) reports ``Parent.child_exited`` with no error.
    - ``BaseException`` never escapes into pykka (it would stop every actor in
      the process): it is converted into a failure of this actor only.
    """

    kind = "pykka"

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._failed = False
        self.started_at = time.monotonic()

    # ---- overridable -------------------------------------------------------------

    def started(self) -> None:
        """Prepare (open sessions). Runs on the actor thread before it is ready."""

    def receive(self, msg: Any) -> None:
        """Handle one message on the actor thread."""

    def stopping(self) -> None:
        """Release what the actor owns. Runs on the actor thread; must not block long."""

    # ---- pykka hooks, sealed -----------------------------------------------------

    def on_start(self) -> None:
        try:
            self.started()
        except BaseException as exc:  # noqa: BLE001 - see class docstring
            self._fail(exc)
            return
        self.ctx.report_ready()

    def on_receive(self, message: Any) -> Any:
        if self._failed:
            return None
        try:
            self.receive(message)
            self.ctx.handled += 1
        except BaseException as exc:  # noqa: BLE001 - see class docstring
            self._fail(exc)
        return None

    def on_stop(self) -> None:
        if self._failed:
            return
        try:
            self.stopping()
        except BaseException as exc:  # noqa: BLE001 - see class docstring
            # pykka runs on_stop inside its message loop, whose BaseException
            # handler calls ActorRegistry.stop_all(): never let one escape.
            self.ctx.report_exit(exc if isinstance(exc, Exception) else ActorFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.ctx.report_exit(None)

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            exc = ActorFailed(f"{type(exc).__name__}: {exc}")
        self._failed = True
        try:
            self.stopping()
        except BaseException:  # noqa: BLE001 - a BaseException here would reach pykka's stop_all()
            log.debug("stopping() failed after a failure", exc_info=True)
        self.ctx.report_exit(exc)
        # Stop this actor's loop without pykka's error log; the inbox remainder is
        # dropped (the supervisor's slot buffers new messages while it restarts).
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def mailbox_depth(self) -> int:
        return self.actor_inbox.qsize()  # type: ignore[attr-defined]
