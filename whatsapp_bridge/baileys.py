"""The Baileys sidecar's contract, Python side: inbound payload validation and the sidecar client.

The Node sidecar (``whatsapp_bridge/sidecar/``, its own owner) holds the
WhatsApp Web session. It POSTs each inbound text to ``/whatsapp/baileys`` as::

    {"id": "<msg id>", "chat": "<remoteJid>", "from": "<jid>", "push_name": "...",
     "text": "...", "timestamp": <unix s int>, "to": "<our jid/number>"}

with ``X-Callengine-Secret``, and exposes ``POST /send``, ``POST /typing`` and
``GET /health`` behind the same header. Its delivery loop treats 2xx as done,
408/429/5xx as "retry the same item later" and any other 4xx as poison
(dropped and counted), so the host answers 400 only for a payload that will
never be valid, and 5xx while it cannot store durably.

``parse_inbound`` is sans-IO (a dict in, a frozen ``BaileysInbound`` or a
``PayloadError`` naming the field out); ``SidecarChannel`` does the HTTP through
the shared ``JsonPoster`` and runs on the trio thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from engine.messages import ChatInbound
from whatsapp_bridge.senders import SEND_POLICY, TYPING_POLICY, JsonPoster

__all__ = ["PayloadError", "BaileysInbound", "parse_inbound", "SidecarChannel", "SECRET_HEADER"]

SECRET_HEADER = "X-Callengine-Secret"
MAX_ID_CHARS = 256
MAX_JID_CHARS = 256
#: The latest timestamp accepted (9999-12-31T23:59:59Z): any later one is a forgery or a bug.
MAX_UNIX_SECONDS = 253_402_300_799


class PayloadError(ValueError):
    """A webhook payload is malformed; ``field`` names the offending key ("body" for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class BaileysInbound:
    id: str
    chat: str
    sender: str
    push_name: str
    text: str
    timestamp: int
    to: str


def string_field(obj: Mapping[str, Any], key: str, *, required: bool, max_len: int, where: str = "") -> str:
    """``obj[key]`` as a string of at most ``max_len`` characters. Required: present
    and not blank; otherwise an absent or null field is ``""``. ``where`` names the
    field in the error (default ``key``). Raises ``PayloadError``. Shared by the
    Baileys and Cloud API parsers, so both word their errors alike."""
    where = where or key
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError(where, f"field '{where}' is missing")
        return ""
    if not isinstance(value, str):
        raise PayloadError(where, f"field '{where}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise PayloadError(where, f"field '{where}' must not be empty")
    if len(value) > max_len:
        raise PayloadError(where, f"field '{where}' is longer than {max_len} characters")
    return value


def unix_seconds_field(obj: Mapping[str, Any], key: str, *, where: str = "") -> int:
    """``obj[key]`` as whole unix seconds in ``0..MAX_UNIX_SECONDS``; 0 when absent
    or null. An integer, a string of digits (Meta sends ``"1700000000"``) or a
    finite whole float is accepted; anything else (``1e999``, ``NaN``, a
    fraction, a negative, a boolean, a string of 5,000 digits) raises
    ``PayloadError``, never ``OverflowError``. Shared by both parsers."""
    where = where or key
    value = obj.get(key)
    number: int | None = None
    if value is None:
        return 0
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if math.isfinite(value) and value.is_integer() else None
    elif isinstance(value, str):
        text = value.strip()
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None
    if number is None or not 0 <= number <= MAX_UNIX_SECONDS:
        shown = repr(value)[:40] if isinstance(value, (str, int, float, bool)) else type(value).__name__
        raise PayloadError(where, f"field '{where}' must be unix seconds (a non-negative integer), got {shown}")
    return number


def parse_inbound(obj: Any, *, max_text_chars: int) -> BaileysInbound:
    """Validate one decoded sidecar payload. Pure; raises ``PayloadError``.

    Required: ``id``, ``chat``, ``text`` (non-empty strings; ``text`` at most
    ``max_text_chars``). Optional: ``from`` (defaults to ``chat``),
    ``push_name``, ``to`` (strings) and ``timestamp`` (a non-negative integer,
    0 when absent). Unknown keys are ignored (the sidecar may grow).
    """
    if not isinstance(obj, dict):
        raise PayloadError("body", f"body must be a JSON object, got {type(obj).__name__}")
    msg_id = string_field(obj, "id", required=True, max_len=MAX_ID_CHARS)
    chat = string_field(obj, "chat", required=True, max_len=MAX_JID_CHARS)
    text = string_field(obj, "text", required=True, max_len=max_text_chars)
    sender = string_field(obj, "from", required=False, max_len=MAX_JID_CHARS) or chat
    push_name = string_field(obj, "push_name", required=False, max_len=MAX_JID_CHARS)
    to = string_field(obj, "to", required=False, max_len=MAX_JID_CHARS)
    ts = unix_seconds_field(obj, "timestamp")
    return BaileysInbound(
        id=msg_id.strip(), chat=chat.strip(), sender=sender, push_name=push_name, text=text, timestamp=ts, to=to
    )


def parse_qr(obj: Any) -> str:
    """``{"qr": "<non-empty string>"}`` -> the QR text; raises ``PayloadError``."""
    if not isinstance(obj, dict):
        raise PayloadError("body", f"body must be a JSON object, got {type(obj).__name__}")
    return string_field(obj, "qr", required=True, max_len=8192)


class SidecarChannel:
    """``ChatChannel`` over the sidecar's HTTP API (``settings.whatsapp.sidecar_url``).

    ``typing`` posts ``composing``/``paused`` once (no retry); ``send_text`` posts
    ``/send`` with the send retry policy and returns the sidecar's message id.
    The recipient is the chat's JID (``msg.reply_to["to"]``, else ``msg.chat_id``).
    Trio thread only.
    """

    name = "baileys"
    max_text_chars = 4096

    def __init__(self, poster: JsonPoster, base_url: str, secret: str) -> None:
        self._poster = poster
        self._base = base_url.rstrip("/")
        self._headers = {SECRET_HEADER: secret}

    @staticmethod
    def _to(msg: ChatInbound) -> str:
        return str(msg.reply_to.get("to") or msg.chat_id)

    async def typing(self, msg: ChatInbound, composing: bool) -> None:
        await self._poster.request(
            "POST",
            f"{self._base}/typing",
            what="sidecar typing",
            headers=self._headers,
            body={"to": self._to(msg), "state": "composing" if composing else "paused"},
            policy=TYPING_POLICY,
        )

    async def send_text(self, msg: ChatInbound, text: str) -> str:
        data = await self._poster.request(
            "POST",
            f"{self._base}/send",
            what="sidecar send",
            headers=self._headers,
            body={"to": self._to(msg), "text": text},
            policy=SEND_POLICY,
        )
        out_id = data.get("id")
        return out_id if isinstance(out_id, str) else ""

    async def health(self) -> dict[str, Any]:
        """The sidecar's ``/health`` object; raises ``SendFailed`` when it does not answer."""
        return await self._poster.request(
            "GET", f"{self._base}/health", what="sidecar health", headers=self._headers, policy=TYPING_POLICY
        )
