"""The browser test call: admission to ``/twilio/media`` without a Twilio signature.

A business talks to its agent from the console before it buys a number: the
browser captures the microphone, speaks the Twilio Media Streams protocol over
``/twilio/media`` itself, and plays the agent's audio back. A browser cannot
sign the upgrade with ``X-Twilio-Signature`` (it has no Twilio auth token and
must not get one), so the console asks for a test-call ticket first:

- ``GET /admin/testcall`` -> ``{"businesses": [{"id", "name", "language"}], "default"}``
- ``POST /admin/testcall`` ``{"business": id}`` (optional) ->
  ``{"url": "ws(s)://host/twilio/media?testcall=<ticket>", "business", "expires_in"}``

Both sit under ``/admin/`` and so behind the admin bearer check. The ticket is
what the upgrade accepts in place of a signature (:func:`admitted`).

Guarantees of a ticket:

- **Authentic**: ``payload.mac`` where the MAC is HMAC-SHA256 over the payload
  with a key derived from ``CALLENGINE_ADMIN_TOKEN``. Every worker and every
  host of one deployment shares that secret, so a ticket issued by one process
  is accepted by any other (the POST and the WebSocket may land on different
  workers or hosts behind the proxy). Nothing is kept in memory to issue one.
- **Short-lived**: valid for ``TICKET_TTL_S`` after issue (the console connects
  at once).
- **Single-use**: a process remembers the nonces it admitted until they expire
  and refuses them again. Across processes the lifetime is the bound: a ticket
  replayed to another worker within ``TICKET_TTL_S`` would be admitted there.
  The ticket only ever grants what its holder could already do with the admin
  token, so this is a bound on misuse of a leaked URL, not a privilege gap.

A test call is otherwise an ordinary call: same protocol, same tree, same
records (its ``from`` is ``browser``; ``customParameters`` carry
``testcall=1``), and the capacity check still applies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from quart import jsonify, request

__all__ = ["TICKET_TTL_S", "admitted", "issue", "register_routes", "verify"]

TICKET_TTL_S = 30.0
_QUERY_KEY = "testcall"
_MAX_TICKET_CHARS = 512

# nonce -> expiry (epoch seconds) of tickets this process has admitted.
_used: dict[str, float] = {}


def _key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"callengine testcall ticket v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(admin_token: str, business: str, *, now: float | None = None, ttl: float = TICKET_TTL_S) -> str:
    """A new ticket for one test call to ``business``, valid for ``ttl`` seconds."""
    if not admin_token:
        raise ValueError("no admin token configured")
    now = time.time() if now is None else now
    payload = _b64(json.dumps({"b": business, "n": secrets.token_hex(12), "e": round(now + ttl, 3)}).encode())
    mac = _b64(hmac.new(_key(admin_token), payload.encode("ascii"), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def verify(admin_token: str, ticket: str, *, now: float | None = None, used: dict[str, float] | None = None) -> dict[str, Any] | None:
    """The ticket's claims (``b`` business, ``n`` nonce, ``e`` expiry) if it is
    authentic, unexpired and not used before in this process; else None. A
    ticket that passes is marked used. Never raises on bad input."""
    used = _used if used is None else used
    now = time.time() if now is None else now
    if not admin_token or not ticket or len(ticket) > _MAX_TICKET_CHARS or ticket.count(".") != 1:
        return None
    payload, mac = ticket.split(".")
    want = _b64(hmac.new(_key(admin_token), payload.encode("ascii", "replace"), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode("ascii", "replace"), want.encode("ascii")):
        return None
    try:
        claims = json.loads(_unb64(payload))
        nonce, expires = str(claims["n"]), float(claims["e"])
    except (ValueError, KeyError, TypeError):
        return None
    for n, exp in list(used.items()):  # forget what has expired anyway
        if exp < now:
            del used[n]
    if expires < now or nonce in used:
        return None
    used[nonce] = expires
    return claims


def admitted(settings: Any, path_and_query: str) -> bool:
    """Whether a ``/twilio/media`` upgrade carries a valid test-call ticket
    (``?testcall=<ticket>``): the host accepts it in place of a Twilio signature."""
    query = urlsplit(path_and_query).query
    if _QUERY_KEY not in query:
        return False
    tickets = parse_qs(query).get(_QUERY_KEY) or [""]
    return verify(settings.secret("admin_token"), tickets[0]) is not None


def _ws_base(settings: Any) -> str:
    """``ws(s)://host`` as the browser reaches this host (a public host is TLS)."""
    if settings.public_host:
        return f"wss://{settings.public_host}"
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host") or request.headers.get("Host", "localhost")
    return f"{'wss' if proto in ('https', 'wss') else 'ws'}://{host.split(',')[0].strip()}"


def register_routes(app: Any, settings: Any, runtime: Callable[[], Any]) -> None:
    """Add ``GET|POST /admin/testcall`` (behind the host's admin bearer check)."""

    @app.get("/admin/testcall")
    async def testcall_options() -> Any:
        rt = runtime()
        return jsonify(
            {
                "businesses": [
                    {"id": b.id, "name": b.name, "language": b.language} for b in rt.businesses.values()
                ],
                "default": rt.default_business().id,
                "ttl_s": TICKET_TTL_S,
            }
        )

    @app.post("/admin/testcall")
    async def testcall_ticket() -> Any:
        rt = runtime()
        body = await request.get_json(force=True, silent=True)
        wanted = body.get("business") if isinstance(body, dict) else None
        if wanted is not None and (not isinstance(wanted, str) or wanted not in rt.businesses):
            return jsonify({"error": f"no business {str(wanted)[:64]!r}"}), 400
        biz = rt.businesses[wanted] if wanted else rt.default_business()
        ticket = issue(settings.secret("admin_token"), biz.id)
        return jsonify(
            {
                "url": f"{_ws_base(settings)}/twilio/media?{_QUERY_KEY}={ticket}",
                "business": biz.id,
                "language": biz.language,
                "expires_in": TICKET_TTL_S,
            }
        )
