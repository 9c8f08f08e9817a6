"""Outbound HTTP for WhatsApp: one shared client, bounded time, retries that are counted.

Why one module for both channels: the Baileys sidecar and Meta's Graph API are
both "POST a small JSON body, get a small JSON body back", and what a chat
needs from either is the same: a typing indicator now, and a reply that is not
lost silently. So the retry policy, the timeouts and the failure counters live
here once; ``whatsapp_bridge.baileys`` and ``whatsapp_bridge.cloud`` only build
URLs and bodies.

Ownership: one ``httpx2.AsyncClient`` per process (keep-alive pool), created and
closed by ``whatsapp_bridge.routes.WhatsAppService.run`` (a task in the app's
nursery). ``JsonPoster`` borrows it; nothing here opens or closes sockets by
itself. ``httpx2`` is the fork ``openai`` 3.x depends on (installed with it);
it runs on trio through anyio.

Time limits (DESIGN: "never goes quiet because a cloud service hiccupped"):
connect 2 s and a total of 10 s per attempt (``trio.fail_after`` around the
whole request; httpx's own timeouts are per phase). Sends are retried on
connection errors, timeouts, 429 and 5xx with exponential backoff and jitter
(0.25 s doubling, 4 attempts in all); other 4xx are final (the peer says the
request is wrong and will say so again). Typing indicators get one attempt: a
late "typing..." is worthless.

Delivery is at-least-once: a send whose answer was lost (a timeout after the
peer accepted it) is sent again, so the user may rarely see a reply twice. The
alternative, at-most-once, loses replies silently, which is worse here.

Everything runs on the trio thread (async methods of request handlers and chat
actors).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import httpx2
import trio

from engine.messages import ChatInbound

__all__ = [
    "SendFailed",
    "JsonPoster",
    "RetryPolicy",
    "ChatChannel",
    "new_http_client",
    "split_text",
    "CONNECT_TIMEOUT_S",
    "TOTAL_TIMEOUT_S",
]

log = logging.getLogger("callengine.whatsapp.http")

CONNECT_TIMEOUT_S = 2.0
TOTAL_TIMEOUT_S = 10.0


class SendFailed(Exception):
    """An outbound request failed for good (after its retries). ``status`` is 0 when
    no HTTP answer was received."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        super().__init__(f"{what} failed: {'HTTP ' + str(status) if status else 'no answer'}: {detail}")
        self.what = what
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    base_s: float = 0.25
    max_s: float = 4.0
    jitter: float = 0.2

    def delay(self, n: int) -> float:
        """Delay before retry ``n`` (1-based)."""
        d = min(self.max_s, self.base_s * (2 ** (n - 1)))
        return d * (1.0 + self.jitter * random.random())


SEND_POLICY = RetryPolicy()
TYPING_POLICY = RetryPolicy(attempts=1)


def new_http_client(*, max_connections: int = 32) -> httpx2.AsyncClient:
    """The process's shared client: keep-alive pool, connect 2 s, each phase 10 s.

    The caller owns it and must ``aclose()`` it (``WhatsAppService.run`` does).
    """
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(TOTAL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max(10, max_connections // 2)),
        follow_redirects=False,
    )


def _retryable(status: int) -> bool:
    return status == 408 or status == 429 or status >= 500


class JsonPoster:
    """POST/GET JSON with the retry policy above, over a borrowed shared client.

    ``metrics`` is the process's ``engine.metrics.Metrics``; every retry and every
    final failure is counted (``whatsapp_http_retry``, ``whatsapp_http_failed``),
    never only logged. Trio thread only.
    """

    def __init__(self, client: httpx2.AsyncClient, metrics: Any, *, total_timeout_s: float = TOTAL_TIMEOUT_S) -> None:
        self._client = client
        self._metrics = metrics
        self._total = total_timeout_s

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None = None,
        policy: RetryPolicy = SEND_POLICY,
    ) -> dict[str, Any]:
        """Send one request; return the decoded JSON object of a 2xx answer ({} if not JSON).

        Raises ``SendFailed`` once the policy's attempts are spent or at the first
        non-retryable answer. Cancellation propagates at once (nothing is retried
        after it).
        """
        content = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        hdrs = dict(headers)
        if content is not None:
            hdrs["Content-Type"] = "application/json"
        last_status = 0
        last_detail = ""
        for attempt in range(1, policy.attempts + 1):
            if attempt > 1:
                self._metrics.count("whatsapp_http_retry")
                await trio.sleep(policy.delay(attempt - 1))
            try:
                with trio.fail_after(self._total):
                    resp = await self._client.request(method, url, content=content, headers=hdrs)
            except (httpx2.TransportError, trio.TooSlowError) as exc:
                last_status, last_detail = 0, f"{type(exc).__name__}: {exc}"[:300]
                continue
            if 200 <= resp.status_code < 300:
                try:
                    data = resp.json()
                except ValueError:
                    return {}
                return data if isinstance(data, dict) else {}
            last_status, last_detail = resp.status_code, resp.text[:300]
            if not _retryable(resp.status_code):
                break
        self._metrics.count("whatsapp_http_failed")
        raise SendFailed(what, last_status, last_detail)


class ChatChannel(Protocol):
    """How a chat tree talks back to one kind of WhatsApp connection.

    Implemented by ``baileys.SidecarChannel`` and ``cloud.CloudChannel``. Both
    methods run on the trio thread (the chat's sender actor) and raise
    ``SendFailed`` when the peer did not take the request.
    """

    name: str
    max_text_chars: int

    async def typing(self, msg: ChatInbound, composing: bool) -> None:
        """Show (``composing=True``) or clear the typing indicator for ``msg``'s chat."""
        ...

    async def send_text(self, msg: ChatInbound, text: str) -> str:
        """Send one text (at most ``max_text_chars``) to ``msg``'s chat; returns its message id ('' if unknown)."""
        ...


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters, at whitespace when possible."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    text = text.strip()
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        out.append(text)
    return out
