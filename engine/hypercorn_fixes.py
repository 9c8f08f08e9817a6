"""Work-arounds for two known hypercorn/quart-trio pitfalls (DESIGN.md).

1. With quart-trio on hypercorn, a request sent with ``Connection: close`` gets
   its response but the socket is never closed: the app's nursery cancellation
   reaches hypercorn's unshielded ``TCPServer._close`` and aborts it before
   ``aclose()``. The fix runs that close inside a shielded ``trio.CancelScope``
   (bounded, so a dead peer cannot hold it forever). Applied by ``apply()``,
   which the host calls at import, so every worker process gets it.
2. ``hypercorn.trio.serve`` does not handle signals; ``engine.serve`` passes a
   ``shutdown_trigger`` that waits on SIGTERM/SIGINT.

Both are tested in ``tests/test_host.py``.
"""

from __future__ import annotations

import trio

_applied = False


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
    _applied = True
