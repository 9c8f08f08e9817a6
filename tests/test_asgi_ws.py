"""The media socket without Quart: ``transports.asgi_ws``, the transport actor
reading and writing it, and the host's handler that owns it.

Everything runs against a fake ASGI server (``FakeServer``: a queue of events
for ``receive``, a list of what was ``send``-ed, and a switch that makes sends
hang, as a peer that stops reading does), under trio's ``MockClock``
(``autojump_clock``), so the send timeout and the start deadline cost no wall
time. The wire itself (hypercorn, a real client) is covered by
``tests/test_call_e2e.py``. The fake's hanging send can be cancelled; hypercorn's
socket write is shielded (see ``transports.asgi_ws``), so over hypercorn a call
whose peer stopped reading ends only once that write is bounded on hypercorn's
side.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

from actors.transport import Transport
from callengine import host
from engine.actor import TrioActor
from engine.admission import Admission
from engine.messages import CallerFrame, Hangup, OutboundMedia
from engine.metrics import Metrics
from engine.runtime import LiveCall
from engine.supervisor import ChildSpec, Restart, Supervisor, SupervisorEscalation, run_root
from transports import twilio as tw
from transports.asgi_ws import SEND_TIMEOUT_S, MediaRoute, MediaSocket, SocketState
from transports.signature import compute

TOKEN = "test-token"
URL_PATH = "/twilio/media"


class FakeServer:
    """The server end of one ASGI WebSocket."""

    def __init__(self, *, http_response: bool = True, headers: list[tuple[bytes, bytes]] | None = None,
                 query: bytes = b"") -> None:
        self.events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](1000)
        self.sent: list[dict[str, Any]] = []
        self.stalled = False  # the peer stopped reading: every send hangs
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "path": URL_PATH,
            "query_string": query,
            "headers": headers or [],
            "extensions": {"websocket.http.response": {}} if http_response else {},
        }

    async def receive(self) -> dict[str, Any]:
        return await self._events_out.receive()

    async def send(self, msg: dict[str, Any]) -> None:
        if self.stalled and msg["type"] == "websocket.send":
            await trio.sleep_forever()
        self.sent.append(msg)

    def put(self, msg: dict[str, Any]) -> None:
        self.events_in.send_nowait(msg)

    def text(self, text: str) -> None:
        self.put({"type": "websocket.receive", "text": text, "bytes": None})

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]

    def begin(self, peer: tw.CallerSideStream, params: dict[str, str]) -> None:
        """The upgrade, then Twilio's ``connected`` and ``start`` (with ``params``)."""
        self.put({"type": "websocket.connect"})
        self.text(peer.connected())
        self.text(peer.start(params))

    def socket(self, **kw: Any) -> MediaSocket:
        return MediaSocket(self.scope, self.receive, self.send, **kw)


class Sink(TrioActor):
    """Stands in for the decoder, pacer and planner: keeps what it is sent."""

    def __init__(self, got: list[Any]) -> None:
        super().__init__()
        self.got = got

    async def receive(self, msg: Any) -> None:
        self.got.append(msg)


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.violations: dict[str, int] = {}

    def count(self, event: str, n: int = 1) -> None:
        self.counts[event] = self.counts.get(event, 0) + n

    def violation(self, kind: str) -> None:
        self.violations[kind] = self.violations.get(kind, 0) + 1


def streaming(call_sid: str = "CA" + "1" * 32) -> tuple[tw.TwilioStream, tw.CallerSideStream]:
    """Our stream already past ``start``, and the peer's matching end."""
    peer = tw.CallerSideStream(call_sid, "MZ" + call_sid[2:])
    ours = tw.TwilioStream()
    ours.receive(peer.connected())
    ours.receive(peer.start({"from": "+1555"}))
    return ours, peer


def caller(call_sid: str) -> tw.CallerSideStream:
    """Twilio's end of a new stream (nothing sent yet)."""
    return tw.CallerSideStream(call_sid, "MZ" + call_sid[2:])


def call_tree(name: str, stream: tw.TwilioStream, sock: MediaSocket, metrics: Any, got: list[Any],
              **kw: Any) -> tuple[Supervisor, list[Transport]]:
    """A call-shaped tree: the real transport (significant) and sinks for the rest."""
    made: list[Transport] = []

    def transport(ctx: Any) -> Transport:
        made.append(Transport(stream, sock, metrics=metrics))
        return made[-1]

    children = [ChildSpec("transport", transport, restart=Restart.TRANSIENT, significant=True)]
    children += [ChildSpec(role, lambda ctx: Sink(got)) for role in ("pacer", "decoder", "planner")]
    children += kw.pop("extra", [])
    return Supervisor(name, children, auto_shutdown="any_significant", **kw), made


async def accepted(server: FakeServer, **kw: Any) -> MediaSocket:
    sock = server.socket(**kw)
    server.put({"type": "websocket.connect"})
    assert await sock.connect()
    await sock.accept()
    return sock


# ---------------------------------------------------------------- MediaSocket


async def test_receive_stamps_each_message_and_returns_none_from_disconnect_on() -> None:
    server = FakeServer()
    sock = await accepted(server)
    server.text("hello")
    server.put({"type": "websocket.receive", "bytes": b"\x00\x01", "text": None})
    server.put({"type": "websocket.connect"})  # stray: carries no message
    server.put({"type": "websocket.receive", "bytes": None, "text": ""})
    server.put({"type": "websocket.disconnect", "code": 1001})
    got = [await sock.receive() for _ in range(3)]
    assert [g[0] for g in got if g is not None] == ["hello", b"\x00\x01", ""]
    assert all(isinstance(g[1], float) for g in got if g is not None)
    assert await sock.receive() is None
    assert await sock.receive() is None  # does not wait on the server again
    assert sock.close_code == 1001 and sock.state is SocketState.CLOSED
    assert not await sock.send_text("late")
    await sock.close()
    assert [m["type"] for m in server.sent] == ["websocket.accept"]


async def test_close_is_sent_once_and_sends_after_it_are_refused() -> None:
    server = FakeServer()
    sock = await accepted(server)
    assert await sock.send_text("one")
    await sock.close()
    await sock.close()
    assert not await sock.send_text("two")
    assert [m["type"] for m in server.sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert server.sent[-1]["code"] == 1000


async def test_a_detached_socket_is_left_to_its_owner() -> None:
    server = FakeServer()
    sock = await accepted(server)
    server.text("unread")
    sock.detach()
    assert await sock.receive() is None
    assert not await sock.send_text("x")
    await sock.close()
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}


@pytest.mark.parametrize(
    "http_response, expected",
    [
        (True, [("websocket.http.response.start", 403), ("websocket.http.response.body", b"invalid signature")]),
        (False, [("websocket.close", 1008)]),
    ],
)
async def test_refusal_is_an_http_response_where_the_server_offers_one(
    http_response: bool, expected: list[tuple[str, Any]]
) -> None:
    server = FakeServer(http_response=http_response)
    sock = server.socket()
    server.put({"type": "websocket.connect"})
    assert await sock.connect()
    await sock.refuse(403, "invalid signature", 1008)
    await sock.refuse(403, "invalid signature", 1008)  # once only
    await sock.accept()  # too late: refused
    seen = [(m["type"], m.get("status", m.get("body", m.get("code")))) for m in server.sent]
    assert seen == expected
    assert sock.state is SocketState.REFUSED


async def test_wait_send_stalled_fires_only_for_one_send_that_takes_too_long(autojump_clock: Any) -> None:
    server = FakeServer()
    sock = await accepted(server)
    fired_at: list[float] = []

    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await sock.wait_send_stalled(5.0)
            fired_at.append(trio.current_time())

        nursery.start_soon(watch)
        t0 = trio.current_time()
        for _ in range(1000):  # 20 s of healthy sends: never fires
            assert await sock.send_text("frame")
            await trio.sleep(0.02)
        assert fired_at == []
        server.stalled = True
        stalled_at = trio.current_time()
        nursery.start_soon(sock.send_text, "stuck")
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert fired_at and fired_at[0] - stalled_at == pytest.approx(5.0, abs=0.01)
    assert stalled_at - t0 == pytest.approx(20.0)


async def test_media_route_sends_only_its_websocket_path_to_the_handler() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"app {scope['type']} {scope.get('path')}")

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"handler {scope['path']}")

    route = MediaRoute(app, URL_PATH, handler)
    for scope in (
        {"type": "websocket", "path": URL_PATH},
        {"type": "websocket", "path": "/other"},
        {"type": "http", "path": URL_PATH},
        {"type": "lifespan"},
    ):
        await route(scope, None, None)  # type: ignore[arg-type]
    assert seen == [f"handler {URL_PATH}", "app websocket /other", f"app http {URL_PATH}", "app lifespan None"]


# ---------------------------------------------------------------- the transport on the socket


async def test_transport_reads_the_socket_and_counts_bad_input(autojump_clock: Any) -> None:
    server = FakeServer()
    sock = await accepted(server)
    stream, peer = streaming()
    metrics = FakeMetrics()
    got: list[Any] = []
    tree, made = call_tree("call:a", stream, sock, metrics, got)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree)
        server.text(peer.media(b"\x7f" * 160, 0))
        server.text("not json")
        server.put({"type": "websocket.receive", "bytes": b"\x00", "text": None})
        server.text(peer.media(b"\x7f" * 160, 20))
        made[0].deliver(OutboundMedia(mulaw=b"\xff" * 160))
        await trio.sleep(1)
        frames = [m for m in got if isinstance(m, CallerFrame)]
        assert len(frames) == 2 and all(f.mulaw == b"\x7f" * 160 for f in frames)
        assert metrics.violations == {"not_json": 1, "binary_frame": 1}
        assert len(server.texts()) == 1 and '"event":"media"' in server.texts()[0].replace(" ", "")
        server.text(peer.stop())
        await tree.wait_finished()
    assert made[0].stop_reason == "stop"
    assert sock.open  # the transport never closes the socket: its owner does


async def test_hangup_and_a_disconnect_end_the_tree(autojump_clock: Any) -> None:
    for end in ("hangup", "disconnect"):
        server = FakeServer()
        sock = await accepted(server)
        stream, _ = streaming()
        tree, made = call_tree(f"call:{end}", stream, sock, FakeMetrics(), [])
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, tree)
            if end == "hangup":
                made[0].deliver(Hangup(reason="goodbye"))
            else:
                server.put({"type": "websocket.disconnect", "code": 1000})
            await tree.wait_finished()
        assert made[0].stop_reason == ("goodbye" if end == "hangup" else "socket closed")


async def test_a_peer_that_stops_reading_ends_its_call_only(autojump_clock: Any) -> None:
    """Call A's peer stops reading: A's tree ends SEND_TIMEOUT_S after its send
    stuck, counted; call B, on the same trio thread, keeps sending and reading."""
    servers = {name: FakeServer() for name in "ab"}
    socks = {name: await accepted(s) for name, s in servers.items()}
    metrics = FakeMetrics()
    got: dict[str, list[Any]] = {"a": [], "b": []}
    trees: dict[str, Supervisor] = {}
    made: dict[str, list[Transport]] = {}
    peers: dict[str, tw.CallerSideStream] = {}
    for name in "ab":
        stream, peers[name] = streaming("CA" + name * 32)
        trees[name], made[name] = call_tree(f"call:{name}", stream, socks[name], metrics, got[name])
    async with trio.open_nursery() as nursery:
        for name in "ab":
            await nursery.start(run_root, trees[name])
        servers["a"].stalled = True
        t0 = trio.current_time()
        ended_at: dict[str, float] = {}

        async def note_end(name: str) -> None:
            await trees[name].wait_finished()
            ended_at[name] = trio.current_time()

        for name in "ab":
            nursery.start_soon(note_end, name)
        for i in range(500):  # 10 s of 20 ms frames to both
            for name in "ab":
                made[name][0].deliver(OutboundMedia(mulaw=b"\xff" * 160))
                servers[name].text(peers[name].media(b"\x7f" * 160, i * 20))
            await trio.sleep(0.02)
        assert list(ended_at) == ["a"] and ended_at["a"] - t0 == pytest.approx(SEND_TIMEOUT_S, abs=0.05)
        assert made["a"][0].stop_reason == "send timeout"
        assert metrics.counts == {"media_send_timeout": 1}
        assert len(servers["b"].texts()) == 500
        assert sum(isinstance(m, CallerFrame) for m in got["b"]) == 500
        servers["b"].put({"type": "websocket.disconnect", "code": 1000})
        await trees["b"].wait_finished()
    assert made["b"][0].stop_reason == "socket closed"


# ---------------------------------------------------------------- the host's handler


class FakeRuntime:
    """What ``callengine.host._serve_media`` uses of ``Runtime``; call trees are the
    real transport plus sinks, run under ``nursery`` as the calls supervisor would."""

    def __init__(self, nursery: trio.Nursery, *, fail_stt: bool = False) -> None:
        self.nursery = nursery
        self.metrics = Metrics()
        self.live: dict[str, LiveCall] = {}
        self.fail_stt = fail_stt
        self.transports: list[Transport] = []
        biz = SimpleNamespace(id="biz")
        self.businesses = {"biz": biz}
        self.business_for_number = lambda number: biz
        self.admission = Admission(max_calls=10, max_pending=32)

    @property
    def live_call_count(self) -> int:
        return len(self.live)

    def apology_audio(self, business_id: str) -> bytes:
        return b"\xff" * 800  # five frames

    async def start_call(self, info: Any, stream: Any, sock: MediaSocket) -> LiveCall:
        extra = []
        if self.fail_stt:

            class Failing(TrioActor):
                async def on_start(self) -> None:
                    raise RuntimeError("stt down")

            extra = [ChildSpec("stt", lambda ctx: Failing())]
        tree, made = call_tree(f"call:{info.call_sid}", stream, sock, self.metrics, [], extra=extra,
                               intensity=0, period=10.0)
        live = LiveCall(info=info, tree=tree)

        def on_exit(sup: Supervisor, error: BaseException | None) -> None:
            live.escalated = error is not None
            self.live.pop(info.call_sid, None)
            live.ended.set()

        tree._on_exit = on_exit
        self.live[info.call_sid] = live

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await run_root(tree, task_status=task_status)
            except SupervisorEscalation:
                pass

        if self.fail_stt:
            self.nursery.start_soon(run)
        else:
            await self.nursery.start(run)
        self.transports += made
        return live

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def settings(max_calls: int = 10, token: str = TOKEN) -> Any:
    return SimpleNamespace(
        secret=lambda key: token if key == "twilio_auth_token" else "",
        public_host="",
        max_calls=max_calls,
        max_message_bytes=65536,
        admission=SimpleNamespace(start_timeout_s=5.0, max_pending=32, max_pending_per_ip=16),
        drain=SimpleNamespace(timeout_s=60.0, closing_grace_s=8.0),
    )


def signed(query: bytes = b"", host_name: bytes = b"engine.example", scheme: str = "wss") -> FakeServer:
    path = URL_PATH + (f"?{query.decode()}" if query else "")
    sig = compute(TOKEN, f"{scheme}://{host_name.decode()}{path}")
    return FakeServer(headers=[(b"host", host_name), (b"x-twilio-signature", sig.encode())], query=query)


@pytest.mark.parametrize("query, scheme", [(b"", "wss"), (b"a=1&b=two", "wss"), (b"x=1", "ws")])
async def test_a_signed_upgrade_is_accepted(query: bytes, scheme: str, autojump_clock: Any) -> None:
    server = signed(query, scheme=scheme)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        server.put({"type": "websocket.connect"})
        server.put({"type": "websocket.disconnect", "code": 1000})
        await host._serve_media(server.socket(), runtime, settings())  # type: ignore[arg-type]
    assert server.sent[0]["type"] == "websocket.accept"


@pytest.mark.parametrize("http_response", [True, False])
async def test_a_bad_signature_is_refused_with_403_and_counted(http_response: bool) -> None:
    server = signed(b"a=1")
    server.scope["query_string"] = b"a=2"  # signed for another URL
    if not http_response:
        server.scope["extensions"] = {}
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        server.put({"type": "websocket.connect"})
        await host._serve_media(server.socket(), runtime, settings())  # type: ignore[arg-type]
    if http_response:
        assert server.sent[0] == {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"17")],
        }
        assert server.sent[1]["body"] == b"invalid signature"
    else:
        assert server.sent == [{"type": "websocket.close", "code": 1008}]
    assert runtime.sample("callengine_signature_failures_total", endpoint="media") == 1


@pytest.mark.parametrize("http_response", [True, False])
async def test_over_capacity_is_refused_with_503_and_counted(http_response: bool) -> None:
    server = FakeServer(http_response=http_response)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        runtime.admission = Admission(max_calls=1, max_pending=32)
        assert not isinstance(runtime.admission.admit("10.0.0.1"), str)  # the one line is taken
        server.put({"type": "websocket.connect"})
        await host._serve_media(server.socket(), runtime, settings(max_calls=1, token=""))  # type: ignore[arg-type]
    if http_response:
        assert [m["type"] for m in server.sent] == ["websocket.http.response.start", "websocket.http.response.body"]
        assert server.sent[0]["status"] == 503 and server.sent[1]["body"] == b"too many calls"
    else:
        assert server.sent == [{"type": "websocket.close", "code": 1013}]
    assert runtime.sample("callengine_calls_rejected_total", reason="capacity") == 1


async def test_no_start_in_time_is_counted_and_closed(autojump_clock: Any) -> None:
    server = FakeServer()
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        server.put({"type": "websocket.connect"})
        t0 = trio.current_time()
        await host._serve_media(server.socket(), runtime, settings(token=""))  # type: ignore[arg-type]
    assert trio.current_time() - t0 == pytest.approx(settings(token="").admission.start_timeout_s)
    assert runtime.sample("callengine_events_total", event="media_no_start") == 1
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_a_duplicate_call_sid_is_a_violation(autojump_clock: Any) -> None:
    server = FakeServer()
    peer = caller("CA" + "d" * 32)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        runtime.live[peer.call_sid] = None  # type: ignore[assignment]
        server.begin(peer, {})
        await host._serve_media(server.socket(), runtime, settings(token=""))  # type: ignore[arg-type]
    assert runtime.sample("callengine_protocol_violations_total", kind="duplicate_call_sid") == 1
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_a_call_runs_until_stop_and_the_handler_closes_the_socket(autojump_clock: Any) -> None:
    server = FakeServer()
    peer = caller("CA" + "c" * 32)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        server.begin(peer, {"business": "biz"})
        server.text(peer.media(b"\x7f" * 160, 0))
        server.text(peer.stop())
        await host._serve_media(server.socket(), runtime, settings(token=""))  # type: ignore[arg-type]
    assert runtime.transports[0].stop_reason == "stop"
    assert runtime.live == {}
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_an_escalated_tree_gets_the_apology_then_a_close(autojump_clock: Any) -> None:
    server = FakeServer()
    peer = caller("CA" + "e" * 32)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery, fail_stt=True)
        server.begin(peer, {})
        await host._serve_media(server.socket(), runtime, settings(token=""))  # type: ignore[arg-type]
    apology = [t for t in server.texts() if '"media"' in t]
    assert len(apology) == 5
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_a_cancelled_handler_stops_its_tree_before_leaving(autojump_clock: Any) -> None:
    server = FakeServer()
    peer = caller("CA" + "x" * 32)
    async with trio.open_nursery() as nursery:
        runtime = FakeRuntime(nursery)
        server.begin(peer, {})
        with trio.move_on_after(3):  # the server shuts down mid-call
            await host._serve_media(server.socket(), runtime, settings(token=""))  # type: ignore[arg-type]
        assert runtime.live == {}  # the tree ended before the handler returned
    assert runtime.transports[0].stop_reason == ""  # stopped by its supervisor, not by the socket
    assert server.sent[-1] == {"type": "websocket.close", "code": 1000}
