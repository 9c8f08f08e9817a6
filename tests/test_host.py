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

from tests.conftest_host import ADMIN_TOKEN, ROOT, HostProcess, host, start_host  # noqa: F401

CLI = str(Path(sys.executable).parent / "callengine")


def test_healthz_answers(host: HostProcess) -> None:
    status, body = host.get("/healthz", admin=False)
    assert status == 200
    assert body["status"] == "ok"
    assert body["stt"] == "whisper" and body["tts"] == "espeak" and body["llm"] == "rules"


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
    """DESIGN.md pitfall: with quart-trio, `Connection: close` left the socket open."""
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


def test_metrics_are_exposed(host: HostProcess) -> None:
    status, text = host.get("/metrics", admin=False)
    assert status == 200
    assert "callengine_calls_total" in text and "callengine_latency_ms" in text


def test_dashboard_is_served(host: HostProcess) -> None:
    status, text = host.get("/", admin=False)
    assert status == 200 and "<title>callengine</title>" in text


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


def test_sigterm_shuts_down_gracefully_with_two_workers(tmp_path: Path) -> None:
    h = start_host(tmp_path, args=["--workers", "2"])
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
    h = start_host(tmp_path)
    try:
        t0 = time.monotonic()
        h.proc.send_signal(signal.SIGINT)
        assert h.proc.wait(30) == 0
        assert time.monotonic() - t0 < 25
    finally:
        h.stop()
