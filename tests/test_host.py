"""The host process: health, admin auth, settings errors, shutdown, known pitfalls."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tests.conftest_host import ADMIN_TOKEN, ROOT, TWILIO_TOKEN, HostProcess, start_host  # noqa: F401

CLI = str(Path(sys.executable).parent / "callengine")


def test_healthz_answers(host: HostProcess) -> None:
    status, body = host.get("/healthz", admin=False)
    assert status == 200
    assert body["status"] == "ok"
    assert body["stt"] == "whisper" and body["tts"] == "piper" and body["llm"] == "rules"


@pytest.mark.parametrize(
    "path", ["/admin/calls", "/admin/calls/CAnone", "/admin/leads", "/admin/whatsapp/qr",
             "/admin/whatsapp/chats", "/admin/no-such-route"]
)
def test_every_admin_path_needs_the_bearer_token(host: HostProcess, path: str) -> None:
    status, _ = host.get(path, admin=False)
    assert status == 401  # one check in front of /admin/..., even where no route exists
    status, _ = host.get(path)
    assert status != 401


def test_admin_tree_needs_the_bearer_token(host: HostProcess) -> None:
    status, body = host.get("/admin/tree", admin=False)
    assert status == 401
    import urllib.error
    import urllib.request

    req = urllib.request.Request(host.http + "/admin/tree", headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401
    status, body = host.get("/admin/tree")
    assert status == 200
    tree = body["tree"]
    assert tree["role"] == "engine" and tree["kind"] == "supervisor"
    roles = {c["role"]: c for c in tree["children"]}
    assert set(roles) >= {"recorder", "calls", "chats"}
    assert roles["recorder"]["kind"] == "pykka" and roles["recorder"]["status"] == "running"
    for key in ("restarts", "fallback", "mailbox_depth", "handled", "last_error", "uptime_s", "children"):
        assert key in roles["recorder"]


def test_connection_close_closes_the_socket(host: HostProcess) -> None:
    """A known pitfall: with quart-trio, `Connection: close` left the socket open."""
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        data = b""
        while True:
            chunk = s.recv(65536)  # a timeout here means the server never closed
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_plain_http_on_the_media_path_is_a_bad_request(host: HostProcess) -> None:
    """The media WebSocket is served in front of Quart; plain HTTP there still gets 400."""
    status, _ = host.get("/twilio/media", admin=False)
    assert status == 400


def test_metrics_are_exposed(host: HostProcess) -> None:
    status, text = host.get("/metrics", admin=False)
    assert status == 200
    assert "callengine_calls_total" in text and "callengine_latency_ms" in text


def test_console_is_served(host: HostProcess) -> None:
    status, text = host.get("/", admin=False)
    assert status == 200 and "<title>callengine · console</title>" in text and "/console/app.js" in text
    status, js = host.get("/console/vendor/qrcodegen/qrcodegen.js", admin=False)
    assert status == 200 and "encodeText" in js
    for outside in ("/console/__init__.py", "/console/../host.py", "/console/%2e%2e/host.py", "/console/nope.js"):
        assert host.get(outside, admin=False)[0] == 404, outside


def _serve_fails(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLENGINE_")}
    env.update({"CALLENGINE_DATA_DIR": str(tmp_path / "var")}, **env_extra)
    return subprocess.run(
        [CLI, "serve", "--port", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_bad_setting_in_the_environment_refuses_to_start(tmp_path: Path) -> None:
    proc = _serve_fails({"CALLENGINE_VAD_HANGOVER_MS": "soon"}, tmp_path)
    assert proc.returncode == 2
    assert "CALLENGINE_VAD_HANGOVER_MS" in proc.stderr and "vad.hangover_ms" in proc.stderr


def test_bad_setting_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "extra.toml"
    cfg.write_text('[pacer]\nlead_ms = "fast"\n')
    proc = _serve_fails({"CALLENGINE_CONFIG": str(cfg)}, tmp_path)
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr and "pacer.lead_ms" in proc.stderr


def test_secret_in_a_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "extra.toml"
    cfg.write_text('admin_token = "hunter2"\n')
    proc = _serve_fails({"CALLENGINE_CONFIG": str(cfg)}, tmp_path)
    assert proc.returncode == 2 and "secret" in proc.stderr


def test_bad_business_profile_refuses_to_start(tmp_path: Path) -> None:
    biz = tmp_path / "biz"
    biz.mkdir()
    (biz / "shop.toml").write_text('id = "shop"\nname = "Shop"\ngreeting = 42\n')
    proc = _serve_fails({"CALLENGINE_BUSINESSES_DIR": str(biz)}, tmp_path)
    assert proc.returncode == 2
    assert "shop.toml" in proc.stderr and "greeting" in proc.stderr


# The signal tests run the embedded providers but need neither whisper's partials (a
# second, niced copy of the model per process) nor the Piper sentence cache warmed at
# start-up: without them a host is healthy ~2 s sooner, a two-worker one ~4 s.
LEAN_START = {"CALLENGINE_WHISPER_PARTIAL_INTERVAL_MS": "0", "CALLENGINE_PIPER_WARM_LINES": "false"}


def test_sigterm_shuts_down_gracefully_with_two_workers(tmp_path: Path) -> None:
    h = start_host(tmp_path, LEAN_START, args=["--workers", "2"])
    try:
        pids = set()
        for _ in range(20):
            status, body = h.get("/healthz", admin=False)
            assert status == 200
            pids.add(body["pid"])
        h.proc.send_signal(signal.SIGTERM)
        assert h.proc.wait(30) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", h.port), timeout=2).close()
    finally:
        h.stop()


def test_sigint_stops_a_single_worker_host(tmp_path: Path) -> None:
    h = start_host(tmp_path, LEAN_START)
    try:
        t0 = time.monotonic()
        h.proc.send_signal(signal.SIGINT)
        assert h.proc.wait(30) == 0
        assert time.monotonic() - t0 < 25
    finally:
        h.stop()


async def test_a_caller_that_stops_reading_is_hung_up_on_and_no_other_call_is_touched(tmp_path: Path) -> None:
    """A media socket whose peer stopped reading (its receive window is full)
    but keeps sending: the transport's send stalls, the send watchdog resets
    the connection, and the call ends (recorded, counted). A second
    call on the same host runs to its end without an error or an underrun."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from transports.asgi_ws import SEND_TIMEOUT_S as WRITE_TIMEOUT_S
    from callsim import Pause, SimulatedCaller
    from transports.signature import compute
    from transports.twilio import CallerSideStream

    stubs = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}
    h = await trio.to_thread.run_sync(lambda: start_host(tmp_path, stubs))
    try:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills in about a second
        await sock.connect(("127.0.0.1", h.port))
        ws = WSConnection(ConnectionType.CLIENT)
        signature = compute(TWILIO_TOKEN, h.ws).encode()
        await sock.send(ws.send(Request(host=f"127.0.0.1:{h.port}", target="/twilio/media",
                                        extra_headers=[(b"x-twilio-signature", signature)])))
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(await sock.recv(4096))
        proto = CallerSideStream("CA" + "s" * 32, "MZ" + "s" * 32)
        reset: list[float] = []

        async def send(text: str) -> None:
            if not reset:
                with trio.move_on_after(1):
                    try:
                        await sock.send(ws.send(TextMessage(data=text)))
                    except OSError:  # the server closed the connection on us
                        reset.append(time.monotonic())

        await send(proto.connected())
        await send(proto.start({"from": "+1555"}))
        # The other call spans the stall: the stalled call ends ~7 s in (its socket
        # buffers fill, then the send timeout), the other after its greeting and
        # this pause; it is asserted to be live still when the stalled call ends.
        other = SimulatedCaller(h.ws, [Pause(seconds=WRITE_TIMEOUT_S + 8)], auth_token=TWILIO_TOKEN,
                                keep_audio=False)
        results = []
        ended_after = None
        other_live_when_ended = False
        async with trio.open_nursery() as nursery:

            async def run_other() -> None:
                results.append(await other.run())

            nursery.start_soon(run_other)
            t0 = time.monotonic()
            for i in range(int((WRITE_TIMEOUT_S + 12) / 0.02)):  # Twilio keeps sending; we never read again
                await send(proto.media(b"\xff" * 160, i * 20))
                await trio.sleep(0.02)
                if i % 25 == 0:
                    _, call = await trio.to_thread.run_sync(lambda: h.get(f"/admin/calls/{proto.call_sid}"))
                    if call.get("state") == "ended":
                        ended_after = time.monotonic() - t0
                        other_live_when_ended = not results
                        break
        sock.close()
        assert ended_after is not None, "the stalled call never ended"
        assert reset, "the server never closed the stalled connection"
        assert other_live_when_ended, f"the other call ended before the stalled one ({ended_after:.1f} s)"
        assert results and results[0].ok and results[0].underruns == 0 and not results[0].closed_by_server
        _, metrics = await trio.to_thread.run_sync(lambda: h.get("/metrics", admin=False))
        assert 'callengine_events_total{event="media_send_timeout"} 1.0' in metrics
    finally:
        await trio.to_thread.run_sync(h.stop)
