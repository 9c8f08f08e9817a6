"""One serving process: the front listener on the public socket, hypercorn behind it.

``serve`` runs both in one trio run (see ``engine.front``): hypercorn, through
its public ``hypercorn.trio.serve``, on a private ephemeral port of 127.0.0.1,
with the app wrapped in :class:`engine.front.RealClient`; the front on the
public listening socket. The shutdown trigger (``engine.drain``: SIGTERM/SIGINT
or the multi-process runner's event) drains the host while both keep serving;
hypercorn then stops, and the front with it.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import trio

__all__ = ["hypercorn_config", "listen_socket", "serve", "worker_main"]


class ShieldedResponseEnd:
    """ASGI middleware: the last message of an HTTP response is sent shielded
    from cancellation.

    Why: with quart-trio, a request with ``Connection: close`` got its response
    but its socket was never closed. The server closes the connection inside
    the app's ``send`` of the response's end, and quart-trio has cancelled the
    nursery that call runs in by then, so the close is aborted before it
    reaches the socket. The send is bounded all the same: the front ends a
    relay whose client does not read (``engine.front``), which fails the write.
    """

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_end_shielded(message: Any) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_end_shielded)


def hypercorn_config(settings: Any) -> Any:
    """hypercorn's settings for the private port."""
    from hypercorn.config import Config

    hc = Config()
    hc.bind = ["127.0.0.1:0"]
    hc.worker_class = "trio"
    hc.graceful_timeout = 15.0
    hc.keep_alive_timeout = 30.0
    hc.websocket_max_message_size = media_max_message(settings)
    hc.accesslog = None
    hc.errorlog = "-"
    hc.loglevel = settings.log_level
    return hc


def media_max_message(settings: Any) -> int:
    # The transport counts and drops messages over max_message_bytes itself; a
    # larger socket limit keeps an oversized message from closing the call.
    return max(16 * settings.max_message_bytes, 1 << 20)


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The public listening socket (IPv4 or IPv6 by ``host``), non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve(
    app: Any, settings: Any, sock: socket.socket, shutdown_trigger: Callable[[], Awaitable[None]]
) -> None:
    """Serve ``app`` on ``sock`` until ``shutdown_trigger`` returns and hypercorn stopped."""
    from hypercorn.trio import serve as hypercorn_serve

    from engine.front import Front, Peers, RealClient

    peers = Peers()
    async with trio.open_nursery() as nursery:

        async def run_hypercorn(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await hypercorn_serve(
                RealClient(ShieldedResponseEnd(app), peers), hypercorn_config(settings),
                shutdown_trigger=shutdown_trigger, task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # hypercorn stopped: so does the front

        binds = await nursery.start(run_hypercorn)
        port = urlsplit(binds[0]).port
        media = app.extensions["callengine"]["media"]
        front = Front(media, ("127.0.0.1", port), peers, max_message=media_max_message(settings))
        await nursery.start(front.serve, sock)


async def _event_set(event: Any) -> None:
    while not event.is_set():
        await trio.sleep(0.1)


def worker_main(sock: socket.socket, shutdown_event: Any) -> None:
    """A worker process of ``callengine serve --workers N`` (``callengine.workers``):
    settings from the environment, its own app and private hypercorn port, the
    shared public socket. The runner's event (or a signal) drains it first."""
    from engine import drain
    from engine.config import load_settings
    from callengine.host import create_app

    settings = load_settings()
    app = create_app(settings)
    trio.run(serve, app, settings, sock, drain.shutdown_trigger(app, partial(_event_set, shutdown_event)))
