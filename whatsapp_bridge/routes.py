"""WhatsApp on the host: the webhooks, the durable accept, and the service that owns the rest.

Routes (``register_routes``):

- ``POST /whatsapp/baileys``      the sidecar's inbound messages (``X-Callengine-Secret``)
- ``POST /whatsapp/baileys/qr``   the sidecar's latest pairing QR (same secret; kept in memory)
- ``GET  /whatsapp/cloud``        Meta's subscription handshake (``hub.verify_token``)
- ``POST /whatsapp/cloud``        Meta's webhook (``X-Hub-Signature-256`` over the raw body)
- ``GET  /admin/whatsapp/qr``     the latest QR, behind the admin bearer token
- ``GET  /admin/whatsapp/chats``  active chats (state, in flight), behind the admin bearer token

The acknowledgement is the promise (DESIGN: "an inbound WhatsApp message is
durable before its webhook is acknowledged"): a 200 is sent only after the
message is in the store, or, while the store is unreachable, fsynced in the
runtime's journal (``runtime.writer``), which the recorder replays later.
Idempotency: the store's ``apply`` returns False for a message id it has; a
redelivery answers ``{"status": "duplicate"}`` and is not delivered again.
While the database is down the store cannot say so, so the service also
remembers the ids it accepted (the last ``RECENT_IDS`` of them) and
serialises concurrent deliveries of one id. Limit: a redelivery that arrives
after a process restart *while* the database is still down is answered twice
(the store dedupes the row on replay).

After the durable write the handler hands the message to the ``ChatRouter``
(``whatsapp_bridge.chat``; never blocks) and answers at once; typing and the
reply happen in the chat's tree.

Ownership: ``WhatsAppService.run`` is a task in the app's nursery (started by
``start_whatsapp`` in ``before_serving``). It owns the shared HTTP client, the
router (and through it the spawning of chat trees under ``runtime.chats``). When
``[whatsapp] start_sidecar`` is true it adds the Node sidecar to the engine's
supervision tree (``whatsapp_bridge.sidecar_process``). All handlers and service methods run on the trio
thread; store writes run on worker threads through ``runtime.read_store``.

Wiring (``callengine/host.py``): ``register_routes(app)`` in ``create_app`` (before
serving), and ``await start_whatsapp(app, runtime)`` in ``before_serving``
(which also registers the routes itself if that was not done: Quart accepts
routes until the first request).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import trio
from quart import Response, jsonify, request

from engine.messages import ChatInbound, RecordChatMessage
from engine.store import StoreUnavailable
from whatsapp_bridge import baileys, cloud
from whatsapp_bridge.chat import ChatRouter
from whatsapp_bridge.senders import JsonPoster, new_http_client
from whatsapp_bridge.sidecar_process import SidecarStatus, sidecar_tree_spec

__all__ = ["WhatsAppService", "register_routes", "start_whatsapp", "get_service"]

log = logging.getLogger("callengine.whatsapp")

RECENT_IDS = 100_000
_EXT = "whatsapp"


def _digits(s: str) -> str:
    # A JID's user part only ("972501234567:12@s.whatsapp.net" -> "972501234567").
    user = s.split("@", 1)[0].split(":", 1)[0]
    return "".join(ch for ch in user if ch.isdigit())


class StoreDown(Exception):
    """Neither the store nor the journal took the message: answer 503 (the sender retries)."""


class WhatsAppService:
    """The process's WhatsApp side (see the module docstring). Trio thread only."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.wa = runtime.settings.whatsapp
        self.metrics = runtime.metrics
        self.router: ChatRouter | None = None
        self.qr: dict[str, Any] | None = None
        self.sidecar: SidecarStatus | None = None  # when this process supervises the sidecar
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, trio.Event] = {}
        self._ready = trio.Event()

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus["WhatsAppService"] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the HTTP client, the router and (optionally) the sidecar until cancelled."""
        client = new_http_client()
        try:
            poster = JsonPoster(client, self.metrics)
            channels: dict[str, Any] = {}
            secret = self.settings.secret("sidecar_secret")
            if secret:
                channels["baileys"] = baileys.SidecarChannel(poster, self.wa.sidecar_url, secret)
            token = self.settings.secret("whatsapp_token")
            if token:
                channels["cloud"] = cloud.CloudChannel(poster, self.wa.graph_url, token)
            for ch in channels.values():
                ch.max_text_chars = min(ch.max_text_chars, max(1, self.wa.max_text_chars))
            router = ChatRouter(
                self.runtime,
                channels,
                idle_s=self.wa.idle_passivate_s,
                history_turns=self.wa.history_turns,
                rate_per_min=self.wa.rate_per_chat_per_min,
            )
            async with trio.open_nursery() as nursery:
                self.router = await nursery.start(router.run)
                if self.wa.start_sidecar:
                    await self._start_sidecar(client)
                self._ready.set()
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self.router = None
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await client.aclose()

    async def _start_sidecar(self, client: Any) -> None:
        """Add the Node sidecar under the engine's tree (``whatsapp_bridge.sidecar_process``)."""
        secret = self.settings.secret("sidecar_secret")
        if not secret:
            log.error("start_sidecar is true but CALLENGINE_SIDECAR_SECRET is not set; sidecar not started")
            return
        root = self.runtime.root
        if root is None:
            return
        self.sidecar = SidecarStatus()
        await root.start_child(sidecar_tree_spec(self.settings, secret, self.sidecar, client))

    async def shutdown(self) -> None:
        """Stop the chat trees gracefully before the runtime stops (an ``after_serving`` hook).

        Runs before the host's own ``after_serving`` (``start_whatsapp`` puts it
        first): chat trees stopped from inside get to finish their replies in
        flight, rather than being cancelled from above with the ``chats``
        supervisor.
        """
        router = self.router
        if router is not None:
            await router.close(grace_s=2.0)

    # ---- inbound ------------------------------------------------------------------------

    def business_for(self, *numbers: str) -> Any:
        """The business whose ``whatsapp_numbers`` contain one of ``numbers``, else the default."""
        wanted = {d for d in (_digits(n) for n in numbers) if d}
        if wanted:
            for biz in self.runtime.businesses.values():
                if any(_digits(n) in wanted for n in biz.whatsapp_numbers):
                    return biz
        return self.runtime.default_business()

    def _remember(self, message_id: str) -> None:
        self._recent[message_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    async def accept(self, record: RecordChatMessage) -> bool:
        """Make ``record`` durable; True if new, False if already accepted (a duplicate).

        Raises ``StoreDown`` when neither the store nor the journal took it.
        Concurrent calls for one message id are serialised: the second waits
        for the first and then sees a duplicate (or retries if the first failed).
        """
        mid = record.message_id
        while True:
            if mid in self._recent:
                return False
            pending = self._pending.get(mid)
            if pending is None:
                break
            await pending.wait()
        done = self._pending[mid] = trio.Event()
        try:
            try:
                inserted = await self.runtime.read_store(self.runtime.store.apply, record)
            except StoreUnavailable:
                try:
                    await self.runtime.read_store(self.runtime.writer.write, record)
                except Exception as exc:  # journal disk failure: not durable, say so
                    self.metrics.count("whatsapp_store_down")
                    raise StoreDown(str(exc)) from exc
                self.metrics.count("whatsapp_journaled")
                inserted = True
            self._remember(mid)
            return bool(inserted)
        finally:
            del self._pending[mid]
            done.set()

    def deliver(self, msg: ChatInbound) -> bool:
        router = self.router
        if router is None:
            self.metrics.count("whatsapp_not_delivered")
            return False
        return router.deliver(msg)


# ---------------------------------------------------------------- routes


def get_service(app: Any) -> WhatsAppService | None:
    return app.extensions.get(_EXT, {}).get("service")


def _error(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    resp = jsonify(body)
    resp.status_code = status
    return resp


def _json_body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise baileys.PayloadError("body", f"body is not valid JSON: {type(exc).__name__}: {str(exc)[:80]}") from None


def register_routes(app: Any, get_runtime: Callable[[], Any] | None = None) -> None:
    """Add the WhatsApp routes to ``app``. Idempotent; call before serving.

    ``get_runtime`` returns the started ``Runtime`` (default: the host's
    ``app.extensions["callengine"]["runtime"]``).
    """
    state = app.extensions.setdefault(_EXT, {})
    if state.get("routes"):
        return
    state["routes"] = True

    def runtime_or_none() -> Any:
        if get_runtime is not None:
            try:
                return get_runtime()
            except RuntimeError:
                return None
        return app.extensions.get("callengine", {}).get("runtime")

    def service() -> WhatsAppService | None:
        return state.get("service")

    def unavailable() -> Response:
        resp = _error(503, "whatsapp not started")
        resp.headers["Retry-After"] = "1"
        return resp

    def sidecar_auth(svc: WhatsAppService) -> Response | None:
        secret = svc.settings.secret("sidecar_secret")
        if not secret:
            svc.metrics.count("whatsapp_sidecar_unconfigured")
            return _error(403, "sidecar secret not configured")
        given = request.headers.get(baileys.SECRET_HEADER)
        if given is None or not hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8")):
            svc.metrics.count("whatsapp_bad_secret")
            return _error(401, f"missing or wrong {baileys.SECRET_HEADER}")
        return None

    async def accept_and_deliver(svc: WhatsAppService, record: RecordChatMessage, msg: ChatInbound) -> str:
        if not await svc.accept(record):
            svc.metrics.count("whatsapp_duplicate")
            return "duplicate"
        svc.metrics.whatsapp.labels("in", msg.channel).inc()
        svc.metrics.observe("whatsapp_ack", (time.time() - msg.received_at) * 1000.0)
        return "accepted" if svc.deliver(msg) else "accepted_unanswered"

    @app.post("/whatsapp/baileys")
    async def whatsapp_baileys() -> Any:
        received = time.time()
        svc = service()
        if svc is None:
            return unavailable()
        denied = sidecar_auth(svc)
        if denied is not None:
            return denied
        try:
            payload = baileys.parse_inbound(_json_body(await request.get_data()), max_text_chars=svc.wa.max_text_chars)
        except baileys.PayloadError as exc:
            svc.metrics.count("whatsapp_bad_payload")
            return _error(400, str(exc), exc.field)
        biz = svc.business_for(payload.to)
        record = RecordChatMessage(
            chat_id=payload.chat,
            business_id=biz.id,
            message_id=payload.id,
            direction="in",
            text=payload.text,
            at=received,
        )
        msg = ChatInbound(
            chat_id=payload.chat,
            business_id=biz.id,
            message_id=payload.id,
            text=payload.text,
            received_at=received,
            channel="baileys",
            reply_to={"to": payload.chat, "name": payload.push_name},
        )
        try:
            status = await accept_and_deliver(svc, record, msg)
        except StoreDown:
            resp = _error(503, "message could not be stored; retry")
            resp.headers["Retry-After"] = "2"
            return resp
        return jsonify({"status": "duplicate" if status == "duplicate" else "accepted"})

    @app.post("/whatsapp/baileys/qr")
    async def whatsapp_baileys_qr() -> Any:
        svc = service()
        if svc is None:
            return unavailable()
        denied = sidecar_auth(svc)
        if denied is not None:
            return denied
        try:
            qr = baileys.parse_qr(_json_body(await request.get_data()))
        except baileys.PayloadError as exc:
            return _error(400, str(exc), exc.field)
        svc.qr = {"qr": qr, "at": time.time()}
        svc.metrics.count("whatsapp_qr")
        return jsonify({"status": "ok"})

    @app.get("/whatsapp/cloud")
    async def whatsapp_cloud_verify() -> Any:
        runtime = runtime_or_none()
        token = runtime.settings.secret("whatsapp_verify_token") if runtime is not None else ""
        challenge = cloud.verify_subscription(request.args, token)
        if challenge is None:
            return Response("verification failed", status=403, content_type="text/plain")
        return Response(challenge, status=200, content_type="text/plain")

    @app.post("/whatsapp/cloud")
    async def whatsapp_cloud() -> Any:
        received = time.time()
        svc = service()
        if svc is None:
            return unavailable()
        body = await request.get_data()
        app_secret = svc.settings.secret("whatsapp_app_secret")
        if not app_secret:
            svc.metrics.count("whatsapp_cloud_unconfigured")
            return _error(403, "whatsapp app secret not configured")
        if not cloud.signature_ok(app_secret, body, request.headers.get(cloud.SIGNATURE_HEADER)):
            svc.metrics.count("whatsapp_bad_signature")
            return _error(403, f"missing or wrong {cloud.SIGNATURE_HEADER}")
        try:
            hook = cloud.parse_webhook(_json_body(body), max_text_chars=svc.wa.max_text_chars)
        except baileys.PayloadError as exc:
            svc.metrics.count("whatsapp_bad_payload")
            return _error(400, str(exc), exc.field)
        for status in hook.statuses:
            svc.metrics.count(f"whatsapp_status_{status}")
        for mtype in hook.ignored:
            svc.metrics.count(f"whatsapp_ignored_{mtype}")
        accepted = duplicates = 0
        for text in hook.texts:
            biz = svc.business_for(text.display_phone_number, text.phone_number_id)
            chat_id = cloud.chat_id_for(text)
            record = RecordChatMessage(
                chat_id=chat_id,
                business_id=biz.id,
                message_id=text.message_id,
                direction="in",
                text=text.text,
                at=received,
            )
            msg = ChatInbound(
                chat_id=chat_id,
                business_id=biz.id,
                message_id=text.message_id,
                text=text.text,
                received_at=received,
                channel="cloud",
                reply_to={
                    "phone_number_id": text.phone_number_id,
                    "to": text.wa_id,
                    "message_id": text.message_id,
                    "name": text.name,
                },
            )
            try:
                status = await accept_and_deliver(svc, record, msg)
            except StoreDown:
                resp = _error(503, "message could not be stored; retry")
                resp.headers["Retry-After"] = "2"
                return resp
            if status == "duplicate":
                duplicates += 1
            else:
                accepted += 1
        return jsonify(
            {
                "status": "ok",
                "accepted": accepted,
                "duplicates": duplicates,
                "statuses": len(hook.statuses),
                "ignored": len(hook.ignored),
            }
        )

    @app.get("/admin/whatsapp/qr")
    async def admin_whatsapp_qr() -> Any:
        if runtime_or_none() is None:
            return unavailable()
        svc = service()
        if svc is None or svc.qr is None:
            return _error(404, "no pairing QR received from the sidecar")
        return jsonify(svc.qr)

    @app.get("/admin/whatsapp/chats")
    async def admin_whatsapp_chats() -> Any:
        if runtime_or_none() is None:
            return unavailable()
        svc = service()
        router = svc.router if svc is not None else None
        return jsonify({"chats": router.sessions() if router is not None else []})


async def start_whatsapp(app: Any, runtime: Any) -> WhatsAppService:
    """Start the WhatsApp service in the app's nursery (call from ``before_serving``).

    Registers the routes if ``register_routes`` was not called, and puts
    ``WhatsAppService.shutdown`` first among the app's ``after_serving`` hooks.
    Returns once the router is ready to take messages.
    """
    register_routes(app)
    svc = WhatsAppService(runtime)
    await app.nursery.start(svc.run)
    app.extensions[_EXT]["service"] = svc
    app.after_serving_funcs.insert(0, svc.shutdown)  # before the host stops the runtime
    return svc
