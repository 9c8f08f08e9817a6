"""Fake WhatsApp peers for tests: a Baileys sidecar and Meta's Graph API, over real HTTP.

Both are small ASGI apps served by hypercorn's trio worker on a free loopback
port, so the host under test talks to them with its real HTTP client, real
sockets and real keep-alive. They record every request (``Hit``: arrival time
on ``time.monotonic()``, method, path, headers, decoded JSON body) and answer
the way the real peers do (the sidecar per ``whatsapp_bridge/sidecar/src/api.js``,
the Graph API per Meta's Cloud API reference), with fault injection: answer
the next ``n`` sends with 503.

The fake sidecar is also the inbound side: ``FakeSidecar.post_inbound`` POSTs a
message to the host's ``/whatsapp/baileys`` exactly as the Node sidecar does and
records when it was posted and when the host acknowledged it, so tests can
measure webhook-ack and receipt-to-typing latency from the sidecar's side.

Everything runs on the test's trio thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx2
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["Hit", "FakeSidecar", "FakeGraph", "Posted", "serve_asgi"]


@dataclass
class Hit:
    t: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or None
    status: int = 0  # what the fake answered (0 while it has not yet)


@dataclass
class Posted:
    """One inbound delivery as the sidecar saw it."""

    id: str
    chat: str
    t_post: float  # monotonic, just before the request
    t_ack: float = 0.0
    status: int = 0
    answer: Any = None


async def serve_asgi(nursery: trio.Nursery, app: Any) -> tuple[str, trio.Event]:
    """Serve ``app`` on 127.0.0.1:<free port> in ``nursery``; returns (base URL, shutdown event)."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    shutdown = trio.Event()
    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
    return binds[0], shutdown


class _JsonApp:
    """A minimal ASGI app: JSON in, JSON out, every request recorded."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.by_to: dict[str, list[Hit]] = {}  # requests naming a recipient, by recipient
        self.changed = trio.Event()
        self.url = ""
        self._shutdown: trio.Event | None = None

    async def start(self, nursery: trio.Nursery) -> str:
        self.url, self._shutdown = await serve_asgi(nursery, self)
        return self.url

    def stop(self) -> None:
        if self._shutdown is not None:
            self._shutdown.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        hit = Hit(time.monotonic(), scope["method"], scope["path"], headers, body)
        self.hits.append(hit)  # in arrival order
        if isinstance(body, dict) and isinstance(body.get("to"), str):
            self.by_to.setdefault(body["to"], []).append(hit)
        status, obj = await self.handle(hit)
        hit.status = status
        self.changed.set()
        self.changed = trio.Event()
        data = json.dumps(obj).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def handle(self, hit: Hit) -> tuple[int, Any]:
        raise NotImplementedError

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true (re-checked on every recorded request)."""
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


class FakeSidecar(_JsonApp):
    """The sidecar's API (``POST /send``, ``POST /typing``, ``GET /health``) plus the inbound poster."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.fail_sends = 0  # answer this many next sends with 503
        self.send_delay = 0.0
        self.sent = 0
        self.posted: dict[str, Posted] = {}

    async def handle(self, hit: Hit) -> tuple[int, Any]:
        if hit.headers.get("x-callengine-secret") != self.secret:
            return 401, {"error": "missing or wrong X-Callengine-Secret"}
        if hit.method == "GET" and hit.path == "/health":
            return 200, {"connected": True, "me": "15550001111@s.whatsapp.net", "queue": 0, "qr": False}
        body = hit.body if isinstance(hit.body, dict) else {}
        to = body.get("to")
        if hit.method != "POST" or hit.path not in ("/send", "/typing"):
            return 404, {"error": "no such route"}
        if not isinstance(to, str) or not to:
            return 400, {"error": 'field "to" must be a non-empty string'}
        if hit.path == "/typing":
            if body.get("state") not in ("composing", "paused"):
                return 400, {"error": 'field "state" must be "composing" or "paused"'}
            return 200, {"ok": True}
        if not isinstance(body.get("text"), str) or not body["text"].strip():
            return 400, {"error": 'field "text" must be a non-empty string'}
        if self.send_delay:
            await trio.sleep(self.send_delay)
        if self.fail_sends > 0:
            self.fail_sends -= 1
            return 503, {"error": "whatsapp not connected"}
        self.sent += 1
        return 200, {"id": f"3EB0OUT{self.sent:06d}"}

    # ---- what a chat saw ----------------------------------------------------------------

    def events(self, to: str) -> list[tuple[str, str, float]]:
        """The successful requests for chat ``to`` in arrival order: (kind, value, t).

        kind "typing" -> value "composing"/"paused"; kind "send" -> value the text.
        Sends answered with an error are left out.
        """
        out: list[tuple[str, str, float]] = []
        for h in self.by_to.get(to, ()):
            if h.status != 200:
                continue
            if h.path == "/typing":
                out.append(("typing", h.body.get("state", ""), h.t))
            elif h.path == "/send":
                out.append(("send", h.body.get("text", ""), h.t))
        return out

    def replies(self, to: str) -> list[str]:
        return [v for k, v, _ in self.events(to) if k == "send"]

    def failed_sends(self) -> int:
        return sum(1 for h in self.hits if h.path == "/send" and h.status >= 400)

    # ---- inbound ------------------------------------------------------------------------

    async def post_inbound(
        self,
        client: httpx2.AsyncClient,
        host_url: str,
        payload: dict[str, Any] | bytes,
        *,
        secret: str | None = None,
    ) -> Posted:
        """POST one inbound message to the host as the sidecar does; record timing and answer."""
        is_dict = isinstance(payload, dict)
        rec = Posted(
            id=str(payload.get("id", "")) if is_dict else "",
            chat=str(payload.get("chat", "")) if is_dict else "",
            t_post=time.monotonic(),
        )
        headers = {"X-Callengine-Secret": self.secret if secret is None else secret, "Content-Type": "application/json"}
        if secret == "":
            headers.pop("X-Callengine-Secret")
        content = json.dumps(payload).encode() if is_dict else payload
        resp = await client.post(f"{host_url}/whatsapp/baileys", content=content, headers=headers)
        rec.t_ack = time.monotonic()
        rec.status = resp.status_code
        try:
            rec.answer = resp.json()
        except ValueError:
            rec.answer = resp.text
        if rec.id and rec.status == 200:
            self.posted.setdefault(rec.id, rec)
        return rec


class FakeGraph(_JsonApp):
    """``POST /{phone_number_id}/messages`` of Meta's Graph API (texts and typing indicators)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.fail_sends = 0
        self.sent = 0

    async def handle(self, hit: Hit) -> tuple[int, Any]:
        if hit.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}
        parts = hit.path.strip("/").split("/")  # [<version>/]<phone_number_id>/messages
        if hit.method != "POST" or len(parts) < 2 or parts[-1] != "messages":
            return 404, {"error": {"message": "Unknown path", "code": 100}}
        body = hit.body if isinstance(hit.body, dict) else {}
        if body.get("messaging_product") != "whatsapp":
            return 400, {"error": {"message": "messaging_product must be whatsapp", "code": 100}}
        if body.get("status") == "read":
            if not body.get("message_id"):
                return 400, {"error": {"message": "message_id is required", "code": 100}}
            return 200, {"success": True}
        if body.get("type") != "text" or not isinstance(body.get("text"), dict) or not body.get("to"):
            return 400, {"error": {"message": "bad text message", "code": 100}}
        if self.fail_sends > 0:
            self.fail_sends -= 1
            return 500, {"error": {"message": "An unknown error occurred", "code": 1}}
        self.sent += 1
        to = body["to"]
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.OUT{self.sent:06d}"}],
        }

    def events(self, phone_number_id: str, to: str) -> list[tuple[str, str, float]]:
        """(kind, value, t): ("typing", <wamid>, t) or ("send", <text>, t), in arrival order."""
        out: list[tuple[str, str, float]] = []
        for h in self.hits:
            if not h.path.endswith(f"/{phone_number_id}/messages") or not isinstance(h.body, dict) or h.status != 200:
                continue
            if h.body.get("status") == "read":
                out.append(("typing", str(h.body.get("message_id")), h.t))
            elif h.body.get("to") == to:
                out.append(("send", str(h.body.get("text", {}).get("body", "")), h.t))
        return out
