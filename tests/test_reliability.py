"""Fault tests against a real host: what production does to a call server.

Each test starts a real ``callengine serve`` (stub providers, so it starts in
seconds and the numbers are the engine's) and does to it what an attacker or an
operator would: bursts past capacity, upgrades that never start, non-finite
numbers on the wire, a database stopped or frozen mid-call, SIGTERM and SIGKILL
with live calls. Everything is observed over the wire (WebSocket, HTTP) or in
the stored records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from tests.conftest_host import TWILIO_TOKEN, HostProcess, start_host

STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}


# ------------------------------------------------------------------ PostgreSQL faults


def _server_pids(pg_server: Any) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int((pg_server.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def frozen(pg_server: Any) -> Iterator[None]:
    """Every process of the server stopped (SIGSTOP): connections stay open and
    nothing answers, as with a hung machine or a network partition."""
    pids = _server_pids(pg_server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def pg_host(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """A stub host on its own PostgreSQL database (shared by this module's tests)."""
    dsn = pg_server.create_database()
    h = start_host(tmp_path_factory.mktemp("pghost"), {**STUBS, "DATABASE_URL": dsn, "CALLENGINE_ADMIN_TIMEOUT_S": "1.0"})
    try:
        yield h
    finally:
        h.stop()
        if not pg_server.running:
            pg_server.start()
        pg_server.drop_database(dsn.rsplit("/", 1)[-1])


# ------------------------------------------------------------------ admin API


@pytest.mark.parametrize("query", ["limit=abc", "limit=-1", "limit=1.5", "limit=1e999"])
def test_admin_bad_parameter_is_400(pg_host: HostProcess, query: str) -> None:
    status, body = pg_host.get(f"/admin/calls?{query}")
    assert status == 400 and "limit" in body["error"]
    status, body = pg_host.get(f"/admin/leads?{query}")
    assert status == 400 and "limit" in body["error"]
    assert pg_host.get("/admin/calls?limit=5")[0] == 200


def test_admin_answers_503_fast_while_the_database_is_stopped_or_frozen(pg_host: HostProcess, pg_server: Any) -> None:
    assert pg_host.get("/admin/calls")[0] == 200
    with frozen(pg_server):
        for path in ("/admin/calls", "/admin/calls/CAnone", "/admin/leads"):
            t0 = time.monotonic()
            status, body = pg_host.get(path, timeout=10)
            took = time.monotonic() - t0
            assert status == 503 and body["error"] == "database unavailable", (path, status, body)
            assert took < 3.0, f"{path} took {took:.1f} s on a frozen database"
        # The health check never touches the database.
        assert pg_host.get("/healthz", admin=False, timeout=3)[0] == 200
    pg_server.stop()
    try:
        t0 = time.monotonic()
        status, body = pg_host.get("/admin/calls", timeout=10)
        assert status == 503 and body["error"] == "database unavailable", (status, body)
        assert time.monotonic() - t0 < 3.0
    finally:
        pg_server.start()
    deadline = time.monotonic() + 20
    while pg_host.get("/admin/calls")[0] != 200:  # the pool reconnects by itself
        assert time.monotonic() < deadline, "admin API did not recover after the database came back"
        time.sleep(0.2)


# ------------------------------------------------------------------ the simulated caller


async def test_cli_call_fails_when_the_server_hangs_up_mid_call() -> None:
    """``callengine call`` exits non-zero and ``--json`` says not ok when the
    server hangs up before the caller does."""
    import json
    import sys

    from trio_websocket import serve_websocket

    async def hang_up(request: Any) -> None:
        ws = await request.accept()
        await ws.get_message()  # connected
        await ws.get_message()  # start
        await trio.sleep(0.3)
        await ws.aclose()

    cli = str(Path(sys.executable).parent / "callengine")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hang_up, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/twilio/media"
        env = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
        proc = await trio.run_process(
            [cli, "call", "--url", url, "--pause", "5", "--timeout", "20", "--json"],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )
        nursery.cancel_scope.cancel()
    out = json.loads(proc.stdout)
    assert proc.returncode == 1, (proc.returncode, out)
    assert out["ok"] is False and out["closed_by_server"] is True
    assert any("hung up" in e for e in out["errors"])
