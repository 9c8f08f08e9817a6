"""Work-arounds for two known hypercorn/quart-trio pitfalls (DESIGN.md).

1. With quart-trio on hypercorn, a request sent with ``Connection: close`` gets
   its response but the socket is never closed: the app's nursery cancellation
   reaches hypercorn's unshielded ``TCPServer._close`` and aborts it before
   ``aclose()``. The fix runs that close inside a shielded ``trio.CancelScope``
   (bounded, so a dead peer cannot hold it forever). Applied by ``apply()``,
   which the host calls at import, so every worker process gets it.
2. ``hypercorn.trio.serve`` does not handle signals; ``engine.cli`` passes a
   ``shutdown_trigger`` that waits on SIGTERM/SIGINT.
3. An exception inside one connection's ``TCPServer.run`` propagates into the
   server's handler nursery and stops the whole server: one malformed client
   (e.g. a binary WebSocket frame interleaved with a fragmented text message,
   which makes hypercorn's ``ws_stream`` raise ``TypeError``) would end every
   call in the process. Each connection's ``run`` is wrapped so such a failure
   closes that connection only, and is logged once.
4. ``TCPServer.protocol_send`` writes each chunk inside a *shielded* cancel
   scope with no bound: once a peer stops reading and the kernel's buffers are
   full, the write blocks for as long as the peer keeps the connection open,
   and no timeout of the application can interrupt it. A call whose caller
   stops reading would then never end (its transport is the task blocked in
   the write). The write is bounded by ``WRITE_TIMEOUT_S``; when it expires the
   connection is closed as if the peer had reset it (the application sees
   ``websocket.disconnect``; later sends return at once).

All are tested in ``tests/test_host.py``.
"""

from __future__ import annotations

import logging

import trio

_applied = False

#: Longest one chunk's socket write may take (4.). A peer that takes longer to
#: accept a few kB is not reading; real-time media cannot wait that long anyway.
WRITE_TIMEOUT_S = 5.0


def apply() -> None:
    global _applied
    if _applied:
        return
    from hypercorn.trio import tcp_server

    original = tcp_server.TCPServer._close

    async def _close_shielded(self: tcp_server.TCPServer) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await original(self)

    tcp_server.TCPServer._close = _close_shielded  # type: ignore[method-assign]

    original_run = tcp_server.TCPServer.run

    async def _run_isolated(self: tcp_server.TCPServer) -> None:
        try:
            await original_run(self)
        except Exception:  # noqa: BLE001 - one connection must never stop the server
            logging.getLogger("callengine.host").warning("connection failed", exc_info=True)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    try:
                        await self.stream.aclose()
                    except Exception:  # noqa: BLE001
                        pass

    tcp_server.TCPServer.run = _run_isolated  # type: ignore[method-assign]

    from hypercorn.events import Closed, RawData

    original_send = tcp_server.TCPServer.protocol_send

    async def _protocol_send_bounded(self: tcp_server.TCPServer, event: object) -> None:
        if not isinstance(event, RawData):
            await original_send(self, event)
            return
        async with self.send_lock:
            try:
                # One scope, as before, now with a deadline (a nested move_on_after
                # would cost a second scope per message).
                with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT_S) as bound:
                    await self.stream.send_all(event.data)
                if bound.cancelled_caught:
                    # A cancelled send_all leaves the stream unusable: close it,
                    # which also ends the connection's read loop.
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(self.stream)
                    raise trio.BrokenResourceError("peer stopped reading")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    tcp_server.TCPServer.protocol_send = _protocol_send_bounded  # type: ignore[method-assign]
    _applied = True
