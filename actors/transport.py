"""Transport actor: the call's Twilio Media Stream, both directions.

Runs on the trio thread (``TrioActor``). It owns the call's ``TwilioStream``
protocol state; it does not own the socket: the host's WebSocket handler does
(one named owner per resource). While the call tree lives, the transport reads
and writes the socket directly through the handler's ``MediaSocket``
(``transports.asgi_ws``), with no task or channel in between:

- its read loop (a task in the actor's nursery) awaits ``sock.receive()``,
  ``(text, t)`` per message with ``t`` = monotonic time at read, and ``None``
  once the peer disconnected;
- its mailbox loop (``receive``) serializes each outbound message and awaits
  ``sock.send_text`` for it, in mailbox order.

In: ``media`` -> ``CallerFrame`` to the decoder; ``dtmf`` -> planner; ``mark``
echoes -> pacer; ``stop`` or a closed socket -> the transport exits normally,
and because it is the tree's *significant* child, the whole call tree stops.
Bad input (non-JSON, unknown events, bad base64, wrong order, oversized,
binary) is counted by kind and dropped; it never ends the call.

Out: ``OutboundMedia``, ``OutboundMark``, ``OutboundClear``, ``Hangup``;
through the mailbox, or inline in the sender's task when the host borrowed the
connection from the server (``MediaSocket.direct``: a send is then a
non-blocking write, so the pacer's frame reaches the socket without a task
switch). Senders never block: a full mailbox (the peer reads slower than the
pacer writes) drops and counts in ``dropped``, as for every actor.
``Hangup`` ends the transport, hence the tree; the handler then closes the
socket.

A peer that stops reading: a send that has been in progress for
``sock.send_timeout`` seconds (``SEND_TIMEOUT_S``, 5 s) is counted
(``media_send_timeout``) and ends the transport (``stop_reason`` "send
timeout"), hence only this call's tree. A third task watches for it
(``MediaSocket.wait_send_stalled``) instead of a cancel scope per message.
Ending the transport cancels its stalled send; hypercorn shields the socket
write itself, so ending relies on that write being bounded on hypercorn's
side (see ``transports.asgi_ws``).
"""

from __future__ import annotations

from typing import Any

from engine.actor import TrioActor
from engine.messages import (
    CallerFrame,
    DtmfPressed,
    Hangup,
    MarkEchoed,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
)
from transports import twilio as tw
from transports.asgi_ws import MediaSocket


class Transport(TrioActor):
    mailbox_size = 2048

    def __init__(
        self,
        stream: tw.TwilioStream,
        sock: MediaSocket,
        *,
        metrics: Any = None,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._sock = sock
        self._metrics = metrics
        self.stop_reason = ""
        # Direct mode (the host borrowed the connection from the server): a send
        # is a non-blocking write, so outbound messages are handled inline, in the
        # sender's task (the pacer's), with no task switch per frame.
        self.inline = sock.direct

    async def run(self) -> None:
        self.nursery.start_soon(self._read_loop)
        self.nursery.start_soon(self._watch_sends)
        await super().run()

    def _serialize(self, msg: Any) -> str | None:
        """The Twilio message for ``msg``, or None (nothing to send; Hangup acted on)."""
        stream = self._stream
        try:
            if isinstance(msg, OutboundMedia):
                return stream.media(msg.mulaw)
            if isinstance(msg, OutboundMark):
                return stream.mark(msg.name)
            if isinstance(msg, OutboundClear):
                return stream.clear()
        except tw.LocalProtocolError:
            return None  # the stream already stopped: nothing more to say to it
        if isinstance(msg, Hangup):
            self.stop_reason = msg.reason
            self.stop_self()
        return None

    def receive_inline(self, msg: Any) -> None:
        """Direct mode: serialize and write now (see ``MediaSocket.send_text_nowait``)."""
        text = self._serialize(msg)
        if text is not None and not self._sock.send_text_nowait(text):
            self._ended("socket closed")

    async def receive(self, msg: Any) -> None:
        if self._sock.direct:
            self.receive_inline(msg)
            return
        text = self._serialize(msg)
        if text is not None and not await self._sock.send_text(text):
            self._ended("socket closed")

    async def _read_loop(self) -> None:
        send = self.ctx.send
        metrics = self._metrics
        receive = self._sock.receive
        parse = self._stream.receive
        while True:
            got = await receive()
            if got is None:
                break
            data, t = got
            for ev in parse(data):
                if isinstance(ev, tw.Media):
                    send("decoder", CallerFrame(mulaw=ev.payload, t=t))
                elif isinstance(ev, tw.Mark):
                    send("pacer", MarkEchoed(name=ev.name, t=t))
                elif isinstance(ev, tw.Dtmf):
                    send("planner", DtmfPressed(digit=ev.digit, t=t))
                elif isinstance(ev, tw.Stop):
                    self._ended("stop")
                    return
                elif isinstance(ev, tw.ProtocolViolation):
                    if metrics is not None:
                        metrics.violation(ev.kind)
        self._ended("socket closed")

    async def _watch_sends(self) -> None:
        await self._sock.wait_send_stalled()
        if self._metrics is not None:
            self._metrics.count("media_send_timeout")
        self._ended("send timeout")

    def _ended(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_self()  # significant child: its normal exit ends the call tree
