"""The host: a QuartTrio app served by hypercorn's trio worker.

Routes (the public contract; see README):
- ``POST /twilio/voice``  TwiML ``<Connect><Stream>`` with the call's context as
  ``<Parameter>``s (a webhook and its WebSocket may land in different worker
  processes, so nothing is kept in memory between them).
- ``WS /twilio/media``    the bidirectional Media Stream; one call tree each.
- ``POST /twilio/status`` Twilio's status callbacks (accepted and counted).
- ``GET /healthz``, ``GET /metrics``, ``GET /`` (dashboard),
  ``/admin/...`` behind ``Authorization: Bearer $CALLENGINE_ADMIN_TOKEN``.
- WhatsApp routes are added by ``whatsapp_bridge.routes`` when present.

The WebSocket handler is the socket's one owner. It reads until ``start``,
spawns the call tree, then only moves messages between the socket and the
tree's transport through two channels (no parsing, decoding or logging per
frame here). When the tree ends the handler closes the socket; when the socket
closes, the handler closes the transport's input and the tree ends.

``create_app()`` is the factory hypercorn loads in each worker process.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import trio
from quart import Response, jsonify, request, websocket
from quart_trio import QuartTrio

from engine import hypercorn_fixes
from engine.auth import admin_denied, admin_ok
from engine.config import Settings, load_settings
from engine.logs import setup_logging
from engine.messages import CallInfo
from engine.runtime import Runtime
from transports import signature as twsig
from transports import twilio as tw
from transports.twiml import connect_stream_twiml, say_and_hangup_twiml
from whatsapp_bridge.routes import register_routes as register_whatsapp_routes
from whatsapp_bridge.routes import start_whatsapp

hypercorn_fixes.apply()

log = logging.getLogger("callengine.host")

START_TIMEOUT_S = 15.0  # how long a new media socket may take to send `start`
_DASHBOARD = Path(__file__).resolve().parent / "dashboard.html"


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
    register_whatsapp_routes(app)

    # ---- lifecycle ---------------------------------------------------------------------

    @app.before_serving
    async def _start() -> None:
        for var in settings.unknown_env:
            log.warning("unknown setting in the environment", extra={"variable": var})
        runtime = await trio.to_thread.run_sync(Runtime.create, settings)
        state["runtime"] = runtime
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
        return jsonify(
            {
                "status": "ok",
                "pid": os.getpid(),
                "calls_live": runtime.live_call_count,
                "stt": settings.stt,
                "tts": settings.tts,
                "llm": settings.llm,
                "store": runtime.store.backend,
                "journal_pending": runtime.writer.pending,
                "uptime_s": round(time.time() - runtime.started_at, 1),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Any:
        body, ctype = rt().metrics.render()
        return Response(body, content_type=ctype)

    @app.get("/")
    async def dashboard() -> Any:
        return Response(_DASHBOARD.read_text(encoding="utf-8"), content_type="text/html; charset=utf-8")

    # ---- admin -----------------------------------------------------------------------

    @app.get("/admin/tree")
    async def admin_tree() -> Any:
        if not admin_ok(settings, request.headers):
            return admin_denied()
        runtime = rt()
        if runtime.root is None:
            return jsonify({"error": "not running"}), 503
        return jsonify({"pid": os.getpid(), "tree": runtime.root.snapshot()})

    @app.get("/admin/calls")
    async def admin_calls() -> Any:
        if not admin_ok(settings, request.headers):
            return admin_denied()
        runtime = rt()
        limit = min(int(request.args.get("limit", "100") or 100), 1000)
        rows = await runtime.read_store(runtime.store.list_calls, limit)
        calls = []
        for row in rows:
            row = _public_call(row)
            row["state"] = "live" if row["call_sid"] in runtime.live else "ended"
            calls.append(row)
        known = {c["call_sid"] for c in calls}
        for sid, live in runtime.live.items():
            if sid not in known:  # not yet flushed to the store
                calls.insert(0, _live_row(live))
        return jsonify({"calls": calls})

    @app.get("/admin/calls/<call_sid>")
    async def admin_call(call_sid: str) -> Any:
        if not admin_ok(settings, request.headers):
            return admin_denied()
        runtime = rt()
        row = await runtime.read_store(runtime.store.get_call, call_sid)
        live = runtime.live.get(call_sid)
        if row is None and live is None:
            return jsonify({"error": f"no call {call_sid}"}), 404
        out = _public_call(row) if row is not None else {**_live_row(live), "turns": [], "leads": []}
        out["state"] = "live" if live is not None else "ended"
        return jsonify(out)

    @app.get("/admin/calls/<call_sid>/tree")
    async def admin_call_tree(call_sid: str) -> Any:
        if not admin_ok(settings, request.headers):
            return admin_denied()
        live = rt().live.get(call_sid)
        if live is None:
            return jsonify({"error": f"no live call {call_sid}"}), 404
        return jsonify(live.tree.snapshot())

    @app.get("/admin/leads")
    async def admin_leads() -> Any:
        if not admin_ok(settings, request.headers):
            return admin_denied()
        runtime = rt()
        return jsonify({"leads": await runtime.read_store(runtime.store.list_leads, 200)})

    # ---- Twilio webhooks ------------------------------------------------------------------

    @app.post("/twilio/voice")
    async def twilio_voice() -> Any:
        if not await webhook_signature_ok("voice"):
            return Response("invalid signature", status=403)
        runtime = rt()
        form = await request.form
        to = form.get("To", "")
        biz = runtime.business_for_number(to)
        if runtime.live_call_count >= settings.max_calls:
            runtime.metrics.calls_rejected.labels("capacity").inc()
            busy = biz.prompt("busy", default="All our lines are busy right now. Please call again in a few minutes.")
            return Response(say_and_hangup_twiml(busy, biz.language), content_type="text/xml")
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

    @app.websocket("/twilio/media")
    async def twilio_media() -> Any:
        runtime = rt()
        token = settings.secret("twilio_auth_token")
        if token:
            sig = websocket.headers.get("X-Twilio-Signature", "")
            host = settings.public_host or websocket.headers.get("Host", "localhost")
            path = websocket.full_path if websocket.query_string else websocket.path
            if not any(twsig.valid_ws_upgrade(token, f"{s}://{host}{path}", sig) for s in ("wss", "ws")):
                runtime.metrics.signature_failures.labels("media").inc()
                return Response("invalid signature", status=403)
        if runtime.live_call_count >= settings.max_calls:
            runtime.metrics.calls_rejected.labels("capacity").inc()
            return Response("too many calls", status=503)
        ws = websocket._get_current_object()
        await ws.accept()
        await _serve_media(ws, runtime, settings)

    return app


def _public_call(row: Any) -> dict[str, Any]:
    """A stored call as the admin API shows it (``business``, ``from``, ``to`` as well)."""
    out = dict(row)
    out.setdefault("business", out.get("business_id"))
    out.setdefault("from", out.get("from_number"))
    out.setdefault("to", out.get("to_number"))
    return out


def _live_row(live: Any) -> dict[str, Any]:
    info = live.info
    return {
        "call_sid": info.call_sid,
        "stream_sid": info.stream_sid,
        "business": info.business_id,
        "business_id": info.business_id,
        "from": info.from_number,
        "to": info.to_number,
        "started_at": info.started_at,
        "ended_at": None,
        "state": "live",
    }


async def _serve_media(ws: Any, runtime: Runtime, settings: Settings) -> None:
    """Own one media socket for the life of its call (see the module docstring)."""
    connected_at = time.monotonic()
    stream = tw.TwilioStream(max_message_bytes=settings.max_message_bytes)
    metrics = runtime.metrics
    start: tw.Start | None = None
    with trio.move_on_after(START_TIMEOUT_S):
        while start is None:
            data = await ws.receive()
            for ev in stream.receive(data):
                if isinstance(ev, tw.Start):
                    start = ev
                elif isinstance(ev, tw.ProtocolViolation):
                    metrics.violation(ev.kind)
                elif isinstance(ev, tw.Stop):
                    return
    if start is None:
        metrics.count("media_no_start")
        return
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
        return
    raw_in_send, raw_in_recv = trio.open_memory_channel[tuple[Any, float]](1024)
    raw_out_send, raw_out_recv = trio.open_memory_channel[str](4096)
    live = await runtime.start_call(info, stream, raw_in_recv, raw_out_send)
    try:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                monotonic = time.monotonic
                try:
                    while True:
                        data = await ws.receive()
                        try:
                            raw_in_send.send_nowait((data, monotonic()))
                        except trio.WouldBlock:
                            metrics.count("media_in_dropped")
                finally:
                    raw_in_send.close()

            async def writer() -> None:
                async for text in raw_out_recv:
                    await ws.send(text)
                nursery.cancel_scope.cancel()  # the transport hung up

            nursery.start_soon(reader)
            nursery.start_soon(writer)
            await live.ended.wait()
            if live.escalated:
                await _play_apology(ws, stream, runtime.apology_audio(info.business_id))
            nursery.cancel_scope.cancel()
    finally:
        raw_in_send.close()


async def _play_apology(ws: Any, stream: tw.TwilioStream, audio: bytes) -> None:
    """The tree gave up: say sorry in real time, then let the handler close."""
    from engine.audio import frames

    deadline = trio.current_time()
    with trio.move_on_after(10):
        for frame in frames(audio):
            try:
                await ws.send(stream.media(frame))
            except tw.LocalProtocolError:
                return
            deadline += 0.02
            await trio.sleep_until(deadline)
