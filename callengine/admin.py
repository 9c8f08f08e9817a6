"""The admin API: one view over every process of every host (README, docs/console.md).

Every ``/admin/...`` request passes one bearer check first (``engine.auth``),
the WhatsApp routes' included, so no route can be added without it. Reads go
to the store on worker threads bounded by ``admin_timeout_s``: a database that
is away answers 503 ``database unavailable`` at once, a malformed parameter
400; never a 500, never a hang.

Across processes. This process publishes what it holds (its live calls with
their trees, chats, counters, the WhatsApp sidecar) through
``engine.presence`` every ``[admin] heartbeat_s``, and every answer merges what
all live processes published (``engine.admin_view``), so with ``--workers N``
or several hosts on one PostgreSQL any process answers for all. A live call's
tree comes from memory when this process holds the call, else as its holder
last published it (at most ``heartbeat_s`` old). Ending a call or restarting
one of its actors is done here when this process holds it, else queued for its
holder, which runs it within ``[admin] command_poll_s``; both answer 202.

``GET /admin/events`` is a Server-Sent Events stream (``calls`` and
``processes`` events, at most every ``[admin] events_interval_s`` and only when
they changed, plus a comment every 15 s to keep proxies from closing it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, AsyncIterator, Callable

import trio
from quart import Response, jsonify, request

from engine import admin_view as view
from engine.auth import admin_denied, admin_ok
from engine.config import Settings
from engine.presence import Presence, PresenceReader
from engine.store import StoreUnavailable
from whatsapp_bridge.routes import get_service

__all__ = ["register_admin", "BadParameter", "int_arg"]

log = logging.getLogger("callengine.admin")

_EXT = "callengine_admin"
_STATES = ("live", "ended", "all")


class BadParameter(ValueError):
    """A query parameter is malformed (answered 400 with this message)."""


def int_arg(name: str, *, default: int, maximum: int) -> int:
    """The request's ``name`` as an int in 0..``maximum`` (clamped above);
    ``default`` when absent or empty; ``BadParameter`` when not a whole number
    or negative."""
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParameter(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if value < 0:
        raise BadParameter(f"{name} must not be negative, got {value}")
    return min(value, maximum)


def _setting(settings: Settings, dotted: str, default: Any) -> Any:
    try:
        value = settings.get(dotted)
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def register_admin(app: Any, settings: Settings, get_runtime: Callable[[], Any]) -> None:
    """Add the bearer check, the admin routes and the presence task to ``app``
    (call in ``create_app``, after the hook that starts the runtime)."""
    timeout = float(_setting(settings, "admin_timeout_s", 2.0))
    heartbeat_s = float(_setting(settings, "admin.heartbeat_s", 1.0))
    dead_after_s = float(_setting(settings, "admin.dead_after_s", 5.0))
    poll_s = float(_setting(settings, "admin.command_poll_s", 0.25))
    events_s = float(_setting(settings, "admin.events_interval_s", 1.0))
    state: dict[str, Any] = {"presence": None, "reader": None}
    app.extensions[_EXT] = state

    def presence() -> Presence:
        p = state["presence"]
        if p is None:
            raise StoreUnavailable("presence not started")
        return p

    async def read(fn: Callable[..., Any], *args: Any) -> Any:
        return await get_runtime().read_store(fn, *args, timeout=timeout)

    # ---- this process's state and commands (trio thread) --------------------------------

    def whatsapp_local() -> dict[str, Any]:
        svc = get_service(app)
        qr = getattr(svc, "qr", None) if svc is not None else None
        out: dict[str, Any] = {"qr": qr["qr"] if qr else None, "qr_at": qr["at"] if qr else None}
        sidecar = getattr(svc, "sidecar", None) if svc is not None else None
        if sidecar is not None:
            out["sidecar"] = sidecar.view()
        return out

    def chats_local() -> list[dict[str, Any]]:
        svc = get_service(app)
        router = svc.router if svc is not None else None
        return router.sessions() if router is not None else []

    def local_state() -> dict[str, Any]:
        runtime = get_runtime()
        calls = []
        for sid, live in list(runtime.live.items()):
            info = live.info
            stamps = live.tree.env.get("stamps") or {}
            calls.append(
                {
                    "sid": sid,
                    "stream_sid": info.stream_sid,
                    "business": info.business_id,
                    "from": info.from_number,
                    "to": info.to_number,
                    "started_at": info.started_at,
                    "turns": int(stamps.get("_turns", 0)),
                    "tree": live.tree.snapshot(),
                }
            )
        tree = runtime.root.snapshot() if runtime.root is not None else None
        if tree is not None:
            for child in tree["children"]:
                if child["role"] == "calls":  # each call's own tree is published with the call
                    child["children"] = [
                        {k: c.get(k) for k in ("role", "kind", "status", "restarts")} for c in child["children"]
                    ]
        chats = chats_local()
        runtime.metrics.journal_pending.set(runtime.writer.pending)
        runtime.metrics.chats_live.set(len(chats))
        return {
            "calls": calls,
            "chats": chats,
            "tree": tree,
            "whatsapp": whatsapp_local(),
            "counters": {
                "journal_pending": runtime.writer.pending,
                "uptime_s": round(time.time() - runtime.started_at, 1),
            },
        }

    def act(call_sid: str, action: str, role: str) -> str:
        """End a call or restart one of its actors, if this process holds it."""
        live = get_runtime().live.get(call_sid)
        if live is None:
            return "no such call"
        if action == "end":
            live.tree.request_stop()
            return "ok"
        if action == "restart":
            sup = live.tree.find(role)
            if sup is None:
                return "no such role"
            return "ok" if sup.restart_child(role) else "not running"
        return "unknown action"

    # ---- lifecycle ---------------------------------------------------------------------

    @app.before_serving
    async def _start_presence() -> None:
        runtime = get_runtime()
        p = Presence(
            runtime.store,
            state_fn=local_state,
            on_command=act,
            heartbeat_s=heartbeat_s,
            dead_after_s=dead_after_s,
            command_poll_s=poll_s,
            store_timeout_s=timeout,
            on_skip=lambda: runtime.metrics.count("presence_skipped"),
            live_ids=lambda: frozenset(runtime.live),
        )
        state["reader"] = p.reader
        await app.nursery.start(p.run)
        state["presence"] = p

        async def leave() -> None:
            with trio.move_on_after(2):
                await p.leave()

        app.after_serving_funcs.insert(0, leave)  # before the runtime closes the store

    # ---- errors and the one bearer check -----------------------------------------------------

    @app.before_request
    async def _admin_bearer() -> Any:
        if request.path.startswith("/admin/") and not admin_ok(settings, request.headers):
            return admin_denied()
        return None

    @app.after_request
    async def _answered_by(resp: Any) -> Any:
        p = state["presence"]
        if p is not None and request.path.startswith("/admin/"):
            resp.headers["X-Callengine-Process"] = p.id  # which process answered (they all answer alike)
        return resp

    @app.errorhandler(StoreUnavailable)
    async def _store_unavailable(exc: StoreUnavailable) -> Any:
        return jsonify({"error": "database unavailable", "detail": str(exc)}), 503

    @app.errorhandler(BadParameter)
    async def _bad_parameter(exc: BadParameter) -> Any:
        return jsonify({"error": str(exc)}), 400

    # ---- shared reads ------------------------------------------------------------------------

    async def alive() -> list[dict[str, Any]]:
        reader: PresenceReader | None = state["reader"]
        if reader is None:
            raise StoreUnavailable("presence not started")
        return await read(reader.alive)

    async def calls_view(limit: int, which: str) -> list[dict[str, Any]]:
        runtime = get_runtime()
        store = runtime.store
        reader: PresenceReader = state["reader"]

        def blocking() -> tuple[list, list, dict, dict]:
            procs = reader.alive()
            rows = store.list_calls(limit)
            sids = [r["call_sid"] for r in rows] + [c["sid"] for p in procs for c in p["state"].get("calls", [])]
            counts: dict[str, int] = {}
            if sids:
                marks = ", ".join(f"${i + 1}" for i in range(len(sids)))
                for r in store.query(
                    f"SELECT call_sid, COUNT(*) AS n FROM turns WHERE call_sid IN ({marks}) GROUP BY call_sid", *sids
                ):
                    counts[r["call_sid"]] = int(r["n"])
            return procs, rows, counts, reader.holders([r["call_sid"] for r in rows])

        if reader is None:
            raise StoreUnavailable("presence not started")
        procs, rows, counts, holders = await read(blocking)
        live = view.live_calls(procs)
        for sid, lc in runtime.live.items():  # this process: fresher than its last heartbeat
            if sid not in live:
                live[sid] = {"sid": sid, "business": lc.info.business_id, "from": lc.info.from_number,
                             "to": lc.info.to_number, "started_at": lc.info.started_at,
                             "stream_sid": lc.info.stream_sid, "process": presence().id}
        return view.merge_calls(rows, live, turn_counts=counts, holders=holders, state=which, limit=limit,
                                grace_s=dead_after_s + 2 * heartbeat_s)

    def state_arg() -> str:
        which = (request.args.get("state") or "all").strip()
        if which not in _STATES:
            raise BadParameter(f"state must be one of {', '.join(_STATES)}, got {which[:40]!r}")
        return which

    # ---- calls ---------------------------------------------------------------------------

    @app.get("/admin/tree")
    async def admin_tree() -> Any:
        runtime = get_runtime()
        if runtime.root is None:
            return jsonify({"error": "not running"}), 503
        p = state["presence"]
        return jsonify({"pid": p.pid if p else None, "process": p.id if p else None, "tree": runtime.root.snapshot()})

    @app.get("/admin/calls")
    async def admin_calls() -> Any:
        limit = int_arg("limit", default=100, maximum=1000)
        return jsonify({"calls": await calls_view(limit, state_arg())})

    @app.get("/admin/calls/<call_sid>")
    async def admin_call(call_sid: str) -> Any:
        runtime = get_runtime()
        store = runtime.store
        reader: PresenceReader | None = state["reader"]
        if reader is None:
            raise StoreUnavailable("presence not started")

        def blocking() -> tuple[Any, list, dict]:
            return store.get_call(call_sid), reader.alive(), reader.holders([call_sid])

        row, procs, holders = await read(blocking)
        local = runtime.live.get(call_sid)
        published = view.find_tree(procs, call_sid)
        live_entry = view.live_calls(procs).get(call_sid)
        if local is not None:
            tree = local.tree.snapshot()
            live_entry = {**(live_entry or {}), "sid": call_sid, "started_at": local.info.started_at,
                          "business": local.info.business_id, "from": local.info.from_number,
                          "to": local.info.to_number, "process": presence().id}
        else:
            tree = published[1] if published is not None else None
        if row is None and live_entry is None:
            return jsonify({"error": f"no call {call_sid}"}), 404
        turns = view.turn_entries((row or {}).get("turns", []))
        call = view.call_entry(row, live_entry, turns=len(turns), process=holders.get(call_sid),
                               grace_s=dead_after_s + 2 * heartbeat_s)
        leads = (row or {}).get("leads", [])
        # The call's fields at the top level as well (the CLI and older readers use them).
        return jsonify({**call, "call": call, "turns": turns, "leads": leads,
                        "lead": leads[-1] if leads else None, "tree": tree})

    @app.get("/admin/calls/<call_sid>/tree")
    async def admin_call_tree(call_sid: str) -> Any:
        local = get_runtime().live.get(call_sid)
        if local is not None:
            return jsonify({**local.tree.snapshot(), "process": presence().id})
        found = view.find_tree(await alive(), call_sid)
        if found is None:
            return jsonify({"error": f"no live call {call_sid}"}), 404
        return jsonify({**found[1], "process": found[0]})

    async def command(call_sid: str, action: str, role: str = "") -> Any:
        local = get_runtime().live.get(call_sid)
        if local is not None:
            result = act(call_sid, action, role)
            if result == "no such role":
                return jsonify({"error": f"call {call_sid} has no actor {role!r}"}), 400
            if result != "ok":
                return jsonify({"error": result}), 409
            return jsonify({"status": "accepted", "process": presence().id}), 202
        procs = await alive()
        found = view.find_tree(procs, call_sid)
        if found is None:
            return jsonify({"error": f"no live call {call_sid}"}), 404
        holder, tree = found
        if action == "restart" and role not in view.tree_roles(tree):
            return jsonify({"error": f"call {call_sid} has no actor {role!r}"}), 400
        cid = await read(state["reader"].command, holder, call_sid, action, role)
        return jsonify({"status": "queued", "process": holder, "command": cid}), 202

    @app.post("/admin/calls/<call_sid>/end")
    async def admin_call_end(call_sid: str) -> Any:
        return await command(call_sid, "end")

    @app.post("/admin/calls/<call_sid>/restart")
    async def admin_call_restart(call_sid: str) -> Any:
        body = await request.get_json(force=True, silent=True)
        role = body.get("role") if isinstance(body, dict) else None
        if not isinstance(role, str) or not role:
            raise BadParameter('send a JSON body {"role": "<actor role>"}, e.g. {"role": "stt"}')
        return await command(call_sid, "restart", role)

    # ---- processes, chats, leads, WhatsApp -----------------------------------------------------

    @app.get("/admin/processes")
    async def admin_processes() -> Any:
        self_id = presence().id
        return jsonify({"processes": [view.process_entry(p, self_id) for p in await alive()]})

    @app.get("/admin/chats")
    async def admin_chats() -> Any:
        limit = int_arg("limit", default=100, maximum=1000)
        store = get_runtime().store
        rows, procs = await read(
            lambda: (
                store.query(
                    "SELECT c.chat_id, c.business_id, c.last_at,"
                    " (SELECT COUNT(*) FROM whatsapp_messages m WHERE m.chat_id = c.chat_id) AS messages"
                    " FROM chats c ORDER BY c.last_at DESC, c.chat_id LIMIT $1",
                    limit,
                ),
                state["reader"].alive(),
            )
        )
        live_ids = {s.get("chat_id") for p in procs for s in p["state"].get("chats", [])}
        return jsonify({"chats": [view.chat_entry(r, live_ids) for r in rows]})

    @app.get("/admin/chats/<path:chat_id>")
    async def admin_chat(chat_id: str) -> Any:
        limit = int_arg("limit", default=500, maximum=5000)
        store = get_runtime().store
        rows, messages, procs = await read(
            lambda: (
                store.query(
                    "SELECT c.chat_id, c.business_id, c.last_at,"
                    " (SELECT COUNT(*) FROM whatsapp_messages m WHERE m.chat_id = c.chat_id) AS messages"
                    " FROM chats c WHERE c.chat_id = $1",
                    chat_id,
                ),
                store.chat_history(chat_id, limit),
                state["reader"].alive(),
            )
        )
        if not rows:
            return jsonify({"error": f"no chat {chat_id}"}), 404
        live_ids = {s.get("chat_id") for p in procs for s in p["state"].get("chats", [])}
        return jsonify(
            {
                "chat": view.chat_entry(rows[0], live_ids),
                "messages": [
                    {"direction": m["direction"], "text": m["text"], "at": m["at"], "message_id": m["message_id"]}
                    for m in messages
                ],
            }
        )

    @app.get("/admin/leads")
    async def admin_leads() -> Any:
        limit = int_arg("limit", default=200, maximum=1000)
        return jsonify({"leads": await read(get_runtime().store.list_leads, limit)})

    @app.get("/admin/leads.csv")
    async def admin_leads_csv() -> Any:
        limit = int_arg("limit", default=1000, maximum=100_000)
        leads = await read(get_runtime().store.list_leads, limit)
        return Response(
            view.leads_csv(leads),
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="leads.csv"'},
        )

    @app.get("/admin/whatsapp")
    async def admin_whatsapp() -> Any:
        wa = settings.whatsapp
        enabled = bool(
            wa.start_sidecar or settings.secret("sidecar_secret") or settings.secret("whatsapp_token")
        )
        procs = await alive()
        me = presence().id
        # This process's own state is fresher than its last heartbeat.
        procs = [p for p in procs if p["id"] != me] + [{"id": me, "state": {"whatsapp": whatsapp_local()}}]
        return jsonify(view.whatsapp_view(enabled, procs))

    # ---- server-sent events ------------------------------------------------------------------

    @app.get("/admin/events")
    async def admin_events() -> Any:
        limit = int_arg("limit", default=50, maximum=1000)
        self_id = presence().id

        async def stream() -> AsyncIterator[bytes]:
            last: dict[str, str] = {}
            quiet_since = trio.current_time()
            yield b"retry: 2000\n\n"
            while True:
                out = []
                try:
                    calls = await calls_view(limit, "all")
                    procs = [view.process_entry(p, self_id) for p in await alive()]
                except StoreUnavailable:
                    out.append(b'event: error\ndata: {"error": "database unavailable"}\n\n')
                else:
                    for name, payload in (("calls", {"calls": calls}), ("processes", {"processes": procs})):
                        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
                        key = data if name == "processes" else json.dumps(
                            [{k: v for k, v in c.items() if k != "duration_s"} for c in calls], default=str
                        )
                        if last.get(name) != key or any(c["state"] == "live" for c in calls) and name == "calls":
                            last[name] = key
                            out.append(f"event: {name}\ndata: {data}\n\n".encode())
                if out:
                    quiet_since = trio.current_time()
                    yield b"".join(out)
                elif trio.current_time() - quiet_since > 15:
                    quiet_since = trio.current_time()
                    yield b": keep-alive\n\n"
                await trio.sleep(events_s)

        resp = Response(stream(), content_type="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        resp.timeout = None
        return resp
