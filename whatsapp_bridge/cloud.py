"""Meta's WhatsApp Cloud API: webhook verification, signature, payload parsing (sans-IO), and sending.

Inbound (Meta -> us), all pure functions, no I/O:

- ``verify_subscription(params, verify_token)``: the ``GET`` handshake; returns
  ``hub.challenge`` when ``hub.mode == "subscribe"`` and ``hub.verify_token``
  matches (constant-time), else None.
- ``signature_ok(app_secret, body, header)``: ``X-Hub-Signature-256`` is
  ``sha256=<hex HMAC-SHA256(raw body, app secret)>``; compared in constant time.
  An empty app secret never verifies (a webhook nobody can authenticate is refused).
- ``parse_webhook(obj, max_text_chars)``: Meta's standard payload
  (``object: whatsapp_business_account``, ``entry[].changes[].value`` with
  ``metadata``, ``contacts``, ``messages[]`` and ``statuses[]``) into a flat
  ``CloudWebhook`` of ``CloudText`` messages, status names and the types of the
  messages we do not answer (images, reactions, ...), which are counted, not
  refused. A structurally broken payload raises ``PayloadError`` naming the path
  of the bad field (``entry[0].changes[1].value.messages[0].id``).

Outbound (us -> Meta): ``CloudChannel`` posts to ``{graph_url}/{phone_number_id}/messages``
with ``Authorization: Bearer <token>``: a text reply, and before it the typing
indicator (which Meta attaches to a "read" receipt of the inbound message and
clears by itself when the reply arrives or after 25 s, so there is no "paused").
Runs on the trio thread through the shared ``JsonPoster``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.messages import ChatInbound
from whatsapp_bridge.baileys import PayloadError, string_field, unix_seconds_field
from whatsapp_bridge.senders import SEND_POLICY, TYPING_POLICY, JsonPoster

__all__ = [
    "PayloadError",
    "CloudText",
    "CloudWebhook",
    "verify_subscription",
    "signature_ok",
    "sign",
    "parse_webhook",
    "text_body",
    "typing_body",
    "CloudChannel",
    "SIGNATURE_HEADER",
]

SIGNATURE_HEADER = "X-Hub-Signature-256"
_MAX_ID = 512


@dataclass(frozen=True, slots=True)
class CloudText:
    """One inbound text message."""

    message_id: str  # wamid
    wa_id: str  # the sender's WhatsApp id (phone digits)
    phone_number_id: str  # our business number's Graph id: where replies are posted
    display_phone_number: str
    name: str  # the sender's profile name, '' if not given
    text: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class CloudWebhook:
    texts: tuple[CloudText, ...] = ()
    statuses: tuple[str, ...] = ()  # "sent", "delivered", "read", "failed", ...
    ignored: tuple[str, ...] = ()  # message types we do not answer: "image", "reaction", ...
    fields: tuple[str, ...] = field(default=())  # change fields other than "messages"


def verify_subscription(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid subscription request, else None."""
    if not verify_token or params.get("hub.mode") != "subscribe":
        return None
    given = params.get("hub.verify_token", "")
    if not hmac.compare_digest(given.encode("utf-8"), verify_token.encode("utf-8")):
        return None
    challenge = params.get("hub.challenge")
    return challenge if challenge is not None else None


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_ok(app_secret: str, body: bytes, header: str | None) -> bool:
    if not app_secret or not header:
        return False
    return hmac.compare_digest(header.strip().lower().encode("ascii", "replace"), sign(app_secret, body).encode("ascii"))


def _at(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _list(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> list[Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError(_at(path, key), f"field '{_at(path, key)}' is missing")
        return []
    if not isinstance(value, list):
        raise PayloadError(_at(path, key), f"field '{_at(path, key)}' must be a list, got {type(value).__name__}")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(where, f"field '{where}' must be an object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str, *, max_len: int = _MAX_ID, required: bool = True) -> str:
    return string_field(obj, key, required=required, max_len=max_len, where=_at(path, key))


def parse_webhook(obj: Any, *, max_text_chars: int) -> CloudWebhook:
    """Flatten one webhook delivery (see the module docstring). Pure; raises ``PayloadError``."""
    if not isinstance(obj, dict):
        raise PayloadError("body", f"body must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("object")
    if kind != "whatsapp_business_account":
        shown = repr(kind)[:40] if isinstance(kind, (str, int, float, bool)) or kind is None else type(kind).__name__
        raise PayloadError("object", f"field 'object' must be 'whatsapp_business_account', got {shown}")
    texts: list[CloudText] = []
    statuses: list[str] = []
    ignored: list[str] = []
    other_fields: list[str] = []
    for i, entry in enumerate(_list(obj, "entry", "", required=True)):
        epath = f"entry[{i}]"
        entry = _dict(entry, epath)
        for j, change in enumerate(_list(entry, "changes", epath)):
            cpath = f"{epath}.changes[{j}]"
            change = _dict(change, cpath)
            fld = change.get("field", "messages")
            if fld != "messages":
                other_fields.append(fld[:64] if isinstance(fld, str) else type(fld).__name__)
                continue
            vpath = f"{cpath}.value"
            value = _dict(change.get("value"), vpath)
            metadata = _dict(value.get("metadata"), f"{vpath}.metadata") if "metadata" in value else {}
            names: dict[str, str] = {}
            for k, contact in enumerate(_list(value, "contacts", vpath)):
                contact = _dict(contact, f"{vpath}.contacts[{k}]")
                profile = contact.get("profile")
                name = profile.get("name") if isinstance(profile, dict) else None
                wa = contact.get("wa_id")
                if isinstance(wa, str) and isinstance(name, str):
                    names[wa] = name
            messages = _list(value, "messages", vpath)
            if messages:
                phone_id = _str(metadata, "phone_number_id", f"{vpath}.metadata")
                display = _str(metadata, "display_phone_number", f"{vpath}.metadata", required=False)
            for k, message in enumerate(messages):
                mpath = f"{vpath}.messages[{k}]"
                message = _dict(message, mpath)
                mtype = message.get("type")
                if not isinstance(mtype, str) or not mtype:
                    raise PayloadError(f"{mpath}.type", f"field '{mpath}.type' must be a non-empty string")
                if mtype != "text":
                    ignored.append(mtype[:32])
                    continue
                msg_id = _str(message, "id", mpath)
                sender = _str(message, "from", mpath)
                body = _dict(message.get("text"), f"{mpath}.text")
                text = _str(body, "body", f"{mpath}.text", max_len=max_text_chars)
                ts = unix_seconds_field(message, "timestamp", where=f"{mpath}.timestamp")
                texts.append(
                    CloudText(
                        message_id=msg_id.strip(),
                        wa_id=sender.strip(),
                        phone_number_id=phone_id.strip(),
                        display_phone_number=display,
                        name=names.get(sender, ""),
                        text=text,
                        timestamp=ts,
                    )
                )
            for k, status in enumerate(_list(value, "statuses", vpath)):
                status = _dict(status, f"{vpath}.statuses[{k}]")
                name = status.get("status")
                statuses.append(name[:32] if isinstance(name, str) and name else "unknown")
    return CloudWebhook(tuple(texts), tuple(statuses), tuple(ignored), tuple(other_fields))


def text_body(to: str, text: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}


def typing_body(message_id: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
        "typing_indicator": {"type": "text"},
    }


def chat_id_for(text: CloudText) -> str:
    """A chat is one user talking to one of our numbers: ``cloud:<phone_number_id>:<wa_id>``."""
    return f"cloud:{text.phone_number_id}:{text.wa_id}"


class CloudChannel:
    """``ChatChannel`` over the Graph API. ``msg.reply_to`` carries ``phone_number_id``,
    ``to`` (wa_id) and ``message_id`` (the inbound wamid). Trio thread only."""

    name = "cloud"
    max_text_chars = 4096

    def __init__(self, poster: JsonPoster, graph_url: str, token: str) -> None:
        self._poster = poster
        self._base = graph_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    def _url(self, msg: ChatInbound) -> str:
        return f"{self._base}/{msg.reply_to.get('phone_number_id', '')}/messages"

    async def typing(self, msg: ChatInbound, composing: bool) -> None:
        if not composing:
            return  # Meta clears the indicator itself when the reply arrives
        await self._poster.request(
            "POST",
            self._url(msg),
            what="graph typing",
            headers=self._headers,
            body=typing_body(str(msg.reply_to.get("message_id") or msg.message_id)),
            policy=TYPING_POLICY,
        )

    async def send_text(self, msg: ChatInbound, text: str) -> str:
        data = await self._poster.request(
            "POST",
            self._url(msg),
            what="graph send",
            headers=self._headers,
            body=text_body(str(msg.reply_to.get("to", "")), text),
            policy=SEND_POLICY,
        )
        messages = data.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            out_id = messages[0].get("id")
            if isinstance(out_id, str):
                return out_id
        return ""
