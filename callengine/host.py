"""The host: a QuartTrio app served by hypercorn's trio worker.

Routes (the public contract; see README):
- ``POST /twilio/voice``  TwiML ``<Connect><Stream>`` with the call's context as
  ``<Parameter>``s (a webhook and its WebSocket may land in different worker
  processes, so nothing is kept in memory between them).
- ``WS /twilio/media``    the bidirectional Media Stream; one call tree each.
- ``POST /twilio/status`` Twilio's status callbacks (accepted and counted).
- ``GET /healthz``, ``GET /metrics``, ``GET /`` (the console, ``engine.console``),
  ``/admin/...`` behind ``Authorization: Bearer $CALLENGINE_ADMIN_TOKEN``.
- WhatsApp routes are added by ``whatsapp_bridge.routes`` when present.

``WS /twilio/media`` is not a Quart route. ``callengine serve`` takes its
upgrades on the public port itself (``engine.front``) and hands the connected
socket to ``state["media"]``; hypercorn serves everything else from a private
port. Served by plain hypercorn, the same handler runs over ASGI, installed in
front of Quart (``transports.asgi_ws.MediaRoute`` wrapping ``app.asgi_app``),
because each Quart layer cost a task switch per media message. Everything
else, lifespan included, goes to Quart.

The media handler (``_serve_media``) is the socket's one owner. It checks the
upgrade (signature, then admission: ``engine.admission`` counts a call from
here, with its caps on calls and on upgrades that have not started) and
refuses it with 403 / 503 where the server supports HTTP refusals (else closes
with 1008 / 1013, or 1001 while draining), accepts, reads until ``start``
(``admission.start_timeout_s``), then spawns the call tree and waits for it to
end. While the tree lives, the tree's transport reads and writes the socket
through the handler's ``MediaSocket`` directly (no parsing, decoding or
logging per frame here, and no task or channel in between). When the tree
ends the handler plays the apology if the tree escalated, or the closing line
if a drain ended the call (``engine.drain``), and closes the socket; when the
socket closes, the transport sees it and the tree ends. If
the handler itself is cancelled while the tree lives (server shutdown), it
detaches the socket and stops the tree before it leaves, so nothing uses the
socket after its owner is gone.

``create_app()`` is the factory hypercorn loads in each worker process.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from functools import partial
from typing import Any

import trio
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio

from actors.call import build_call_tree
from engine import testcall
from callengine.admin import register_admin
from engine.config import Settings, load_settings
from engine.console import register_routes as register_console_routes
from engine.logs import call_sid_var, setup_logging
from engine.messages import CallInfo
from engine.admission import Ticket
from engine.runtime import Runtime
from transports import signature as twsig
from transports import twilio as tw
from transports.asgi_ws import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    MediaRoute,
    MediaSocket,
)
from transports.twiml import connect_stream_twiml, say_and_hangup_twiml
from whatsapp_bridge.routes import register_routes as register_whatsapp_routes
from whatsapp_bridge.routes import get_service as get_whatsapp_service
from whatsapp_bridge.routes import start_whatsapp

log = logging.getLogger("callengine.host")

_WEBHOOKS = frozenset({"/twilio/voice", "/twilio/status", "/whatsapp/baileys", "/whatsapp/cloud"})
TREE_STOP_TIMEOUT_S = 5.0  # how long a cancelled handler waits for its call tree to stop


def create_app(settings: Settings | None = None) -> QuartTrio:
    settings = settings or load_settings()
    setup_logging(settings.log_level, settings.log_format)
    app = QuartTrio("callengine")
    app.config["MAX_CONTENT_LENGTH"] = 1 * 1024 * 1024
    state: dict[str, Any] = {"runtime": None}

    def rt() -> Runtime:
        runtime = state["runtime"]
        if runtime is None:
            raise RuntimeError("runtime not started")
        return runtime

    app.extensions["callengine"] = state

    def chats_in_flight() -> int:
        svc = get_whatsapp_service(app)
        router = svc.router if svc is not None else None
        return sum(s["inflight"] for s in router.sessions()) if router is not None else 0

    state["chats_in_flight"] = chats_in_flight
    register_whatsapp_routes(app)
    register_console_routes(app)
    testcall.register_routes(app, settings, rt)

    # ---- lifecycle ---------------------------------------------------------------------

    @app.before_serving
    async def _start() -> None:
        for var in settings.unknown_env:
            log.warning("unknown setting in the environment", extra={"variable": var})
        runtime = await trio.to_thread.run_sync(partial(Runtime.create, settings, call_tree=build_call_tree))
        state["runtime"] = runtime
        # Everything loaded so far (modules, the app, models, providers) lives as
        # long as the process: move it out of the cyclic collector's reach. A full
        # collection then scans only what calls create, not the whole start-up
        # heap; it took 88 ms with every call stalled (measured at 50 calls, a
        # stall heard as an underrun on every call).
        gc.collect()
        gc.freeze()
        await app.nursery.start(runtime.run)
        await start_whatsapp(app, runtime)

    @app.after_serving
    async def _stop() -> None:
        runtime = state["runtime"]
        if runtime is not None:
            runtime.stop()
            with trio.move_on_after(15):
                if runtime.root is not None:
                    await runtime.root.wait_finished()
            await trio.to_thread.run_sync(runtime.close)

    # ---- helpers -----------------------------------------------------------------------

    def public_host() -> str:
        return settings.public_host or request.headers.get("Host", "localhost")

    async def webhook_signature_ok(endpoint: str) -> bool:
        token = settings.secret("twilio_auth_token")
        if not token:
            return True
        form = await request.form
        sig = request.headers.get("X-Twilio-Signature", "")
        host = public_host()
        path = request.full_path if request.query_string else request.path
        ok = any(
            twsig.valid_webhook(token, f"{scheme}://{host}{path}", form, sig)
            for scheme in ("https", "http")
        )
        if not ok:
            rt().metrics.signature_failures.labels(endpoint).inc()
        return ok

    # ---- health, metrics, dashboard -----------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> Any:
        runtime = state["runtime"]
        if runtime is None or runtime.root is None:
            return jsonify({"status": "starting"}), 503
        admission = runtime.admission
        return jsonify(
            {
                # Draining (SIGTERM): 503, so a load balancer stops routing here
                # while the calls in progress finish.
                "status": "draining" if admission.draining else "ok",
                "pid": os.getpid(),
                "calls_live": runtime.live_call_count,
                "admission": admission.snapshot(),
                "stt": settings.stt,
                "tts": settings.tts,
                "llm": settings.llm,
                "store": runtime.store.backend,
                "journal_pending": runtime.writer.pending,
                "uptime_s": round(time.time() - runtime.started_at, 1),
            }
        ), (503 if admission.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Any:
        runtime = rt()
        runtime.metrics.journal_pending.set(runtime.writer.pending)
        body, ctype = runtime.metrics.render()
        return Response(body, content_type=ctype)

    @app.before_request
    async def _webhook_started() -> None:
        if request.path in _WEBHOOKS:
            g.received = time.monotonic()

    @app.after_request
    async def _webhook_answered(resp: Any) -> Any:
        received = g.get("received")
        runtime = state["runtime"]
        if received is not None and runtime is not None:
            runtime.metrics.webhook_ack.labels(request.path).observe((time.monotonic() - received) * 1000.0)
        return resp

    # ---- admin (every process and host merged; callengine.admin) --------------------------

    register_admin(app, settings, rt)

    # ---- Twilio webhooks ------------------------------------------------------------------

    @app.post("/twilio/voice")
    async def twilio_voice() -> Any:
        if not await webhook_signature_ok("voice"):
            return Response("invalid signature", status=403)
        runtime = rt()
        form = await request.form
        to = form.get("To", "")
        biz = runtime.business_for_number(to)
        if not runtime.admission.can_take_call():
            if runtime.admission.draining:
                runtime.metrics.calls_rejected.labels("draining").inc()
                text = biz.prompt("draining", default="We are updating our system. Please call again in a minute.")
            else:
                runtime.metrics.calls_rejected.labels("capacity").inc()
                text = biz.prompt("busy", default="All our lines are busy right now. Please call again in a few minutes.")
            return Response(say_and_hangup_twiml(text, biz.language), content_type="text/xml")
        params = {
            "business": biz.id,
            "from": form.get("From", ""),
            "to": to,
            "call_sid": form.get("CallSid", ""),
        }
        ws_url = f"wss://{public_host()}/twilio/media"
        status_cb = f"https://{public_host()}/twilio/status"
        return Response(connect_stream_twiml(ws_url, params, status_cb), content_type="text/xml")

    @app.post("/twilio/status")
    async def twilio_status() -> Any:
        if not await webhook_signature_ok("status"):
            return Response("invalid signature", status=403)
        form = await request.form
        rt().metrics.count(f"twilio_status_{(form.get('StreamEvent') or form.get('CallStatus') or 'unknown')[:32]}")
        return Response("", status=204)

    # ---- the media stream -------------------------------------------------------------------

    async def twilio_media(scope: Any, receive: Any, send: Any) -> None:
        await _serve_media(MediaSocket(scope, receive, send), rt(), settings)

    async def serve_media_socket(sock: MediaSocket) -> None:
        await _serve_media(sock, rt(), settings)

    state["media"] = serve_media_socket  # engine.front's media handler
    app.asgi_app = MediaRoute(app.asgi_app, "/twilio/media", twilio_media)  # type: ignore[method-assign]

    @app.get("/twilio/media")
    async def twilio_media_http() -> Any:
        # Plain HTTP on the WebSocket path: 400, as when it was a Quart WebSocket route.
        return Response("WebSocket only", status=400)

    return app


async def _serve_media(sock: MediaSocket, runtime: Runtime, settings: Settings) -> None:
    """Own one media socket for the life of its call (see the module docstring)."""
    if not await sock.connect():
        return
    metrics = runtime.metrics
    token = settings.secret("twilio_auth_token")
    if token and not testcall.admitted(settings, sock.path_and_query):  # a browser test call has no signature
        sig = sock.header(b"x-twilio-signature")
        host = settings.public_host or sock.header(b"host", "localhost")
        path = sock.path_and_query
        if not any(twsig.valid_ws_upgrade(token, f"{s}://{host}{path}", sig) for s in ("wss", "ws")):
            metrics.signature_failures.labels("media").inc()
            await sock.refuse(403, "invalid signature", CLOSE_POLICY_VIOLATION)
            return
    # Counted from here (the upgrade), not from `start`: see engine.admission.
    ticket = runtime.admission.admit(sock.client_ip)
    if isinstance(ticket, str):
        metrics.calls_rejected.labels(ticket).inc()
        if ticket == "draining":
            await sock.refuse(503, "shutting down", CLOSE_GOING_AWAY)
        else:
            await sock.refuse(503, "too many calls", CLOSE_TRY_AGAIN_LATER)
        return
    try:
        await _serve_admitted(sock, runtime, settings, ticket)
    finally:
        ticket.release()


async def _serve_admitted(sock: MediaSocket, runtime: Runtime, settings: Settings, ticket: Ticket) -> None:
    metrics = runtime.metrics
    await sock.accept()
    info: CallInfo | None = None
    try:
        if not sock.direct:
            metrics.count("media_not_direct")  # over ASGI: served by plain hypercorn
        started = await _await_start(sock, runtime, settings)
        if started is None:
            return
        info, stream = started
        call_sid_var.set(info.call_sid)  # the call's tasks inherit it: their log lines carry it
        ticket.started()
        live = await runtime.start_call(info, stream, sock)
        await live.ended.wait()
        if live.escalated and sock.open:
            await _play_apology(sock, stream, runtime.apology_audio(info.business_id))
        elif live.end_reason == "shutdown" and sock.open:
            # The drain timeout ended the call: a word to the caller, then hang up.
            with trio.move_on_after(settings.drain.closing_grace_s):
                await sock.send_text(stream.clear())
                await _play_apology(sock, stream, runtime.closing_audio(info.business_id))
            await sock.close(CLOSE_GOING_AWAY)
    finally:
        with trio.CancelScope(shield=True):
            live = runtime.live.get(info.call_sid) if info is not None else None
            if live is not None and live.info is info and not live.ended.is_set():
                # Only when this handler is cancelled (server shutdown) or failed
                # while its tree lives: the transport must not use the socket
                # after its owner left.
                sock.detach()
                live.tree.request_stop()
                with trio.move_on_after(TREE_STOP_TIMEOUT_S):
                    await live.ended.wait()
                if not live.ended.is_set():
                    return  # the tree outlived its bound: leave the socket to the server
            await sock.close()


async def _await_start(
    sock: MediaSocket, runtime: Runtime, settings: Settings
) -> tuple[CallInfo, tw.TwilioStream] | None:
    """Read until ``start`` (within ``admission.start_timeout_s``): the new call's
    info and its stream, or None when there is no call to run (counted)."""
    connected_at = time.monotonic()
    stream = tw.TwilioStream(max_message_bytes=settings.max_message_bytes)
    metrics = runtime.metrics
    start: tw.Start | None = None
    with trio.move_on_after(settings.admission.start_timeout_s):
        while start is None:
            got = await sock.receive()
            if got is None:
                return None
            for ev in stream.receive(got[0]):
                if isinstance(ev, tw.Start):
                    start = ev
                elif isinstance(ev, tw.ProtocolViolation):
                    metrics.violation(ev.kind)
                elif isinstance(ev, tw.Stop):
                    return None
    if start is None:
        metrics.count("media_no_start")
        return None
    params = dict(start.custom_parameters)
    business = runtime.businesses.get(params.get("business", "")) or runtime.business_for_number(
        params.get("to", "")
    )
    info = CallInfo(
        call_sid=start.call_sid,
        stream_sid=start.stream_sid,
        business_id=business.id,
        from_number=params.get("from", ""),
        to_number=params.get("to", ""),
        custom=params,
        started_at=time.time(),
        connected_at=connected_at,
        start_event_at=time.monotonic(),
    )
    if info.call_sid in runtime.live:
        metrics.violation("duplicate_call_sid")
        return None
    return info, stream


async def _play_apology(sock: MediaSocket, stream: tw.TwilioStream, audio: bytes) -> None:
    """The tree gave up: say sorry in real time, then let the handler close.

    The tree no longer reads the socket, so a task drains it meanwhile: a caller
    who hangs up during the apology ends it at once."""
    from engine.audio import frames

    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                while await sock.receive() is not None:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(drain)
            deadline = trio.current_time()
            for frame in frames(audio):
                try:
                    text = stream.media(frame)
                except tw.LocalProtocolError:
                    break
                if not await sock.send_text(text):
                    break
                deadline += 0.02
                await trio.sleep_until(deadline)
            nursery.cancel_scope.cancel()
