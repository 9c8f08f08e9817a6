"""Transport actor: the call's Twilio Media Stream, both directions.

Runs on the trio thread (``TrioActor``). It owns the call's ``TwilioStream``
protocol state; it does not own the socket: the WebSocket handler does (one
named owner per resource), and hands the transport two channels:

- ``raw_in``: ``(text, t)`` for each WebSocket message, ``t`` = monotonic time
  at read. Closed by the handler when the socket closes.
- ``raw_out``: serialized outbound messages; the handler's writer task sends
  them. The transport closes it to end the call from our side.

In: ``media`` -> ``CallerFrame`` to the decoder; ``dtmf`` -> planner; ``mark``
echoes -> pacer; ``stop`` or a closed socket -> the transport exits normally,
and because it is the tree's *significant* child, the whole call tree stops.
Bad input (non-JSON, unknown events, bad base64, wrong order, oversized) is
counted by kind and dropped; it never ends the call.

Out (mailbox): ``OutboundMedia``, ``OutboundMark``, ``OutboundClear``,
``Hangup``. A full outbound channel drops and counts (the peer stopped
reading); it never blocks the pacer.
"""

from __future__ import annotations

from typing import Any

import trio

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


class Transport(TrioActor):
    mailbox_size = 2048

    def __init__(
        self,
        stream: tw.TwilioStream,
        raw_in: trio.MemoryReceiveChannel[tuple[Any, float]],
        raw_out: trio.MemorySendChannel[str],
        *,
        metrics: Any = None,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._raw_in = raw_in
        self._raw_out = raw_out
        self._metrics = metrics
        self.out_dropped = 0
        self.stop_reason = ""

    async def run(self) -> None:
        self.nursery.start_soon(self._read_loop)
        await super().run()

    async def receive(self, msg: Any) -> None:
        stream = self._stream
        try:
            if isinstance(msg, OutboundMedia):
                self._out(stream.media(msg.mulaw))
            elif isinstance(msg, OutboundMark):
                self._out(stream.mark(msg.name))
            elif isinstance(msg, OutboundClear):
                self._out(stream.clear())
            elif isinstance(msg, Hangup):
                self.stop_reason = msg.reason
                self._raw_out.close()
                self.stop_self()
        except tw.LocalProtocolError:
            pass  # the stream already stopped: nothing more to say to it

    def _out(self, text: str) -> None:
        try:
            self._raw_out.send_nowait(text)
        except trio.WouldBlock:
            self.out_dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _read_loop(self) -> None:
        send = self.ctx.send
        metrics = self._metrics
        async for data, t in self._raw_in:
            for ev in self._stream.receive(data):
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

    def _ended(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_self()  # significant child: its normal exit ends the call tree
