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
from callsim import Pause, Say, SimulatedCaller, WaitForReply

# The stub planner's reply: two sentences as by default, spoken in 1.2 s instead of
# 3.7 s (the stub voice speaks 60 ms a character); every caller waits a reply out.
STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub",
         "CALLENGINE_STUB_REPLY_TEXT": "Thanks. We can come."}

# The shared fault host's limits (small, so a test can reach them).
MAX_CALLS = 6
MAX_PENDING = 3
START_TIMEOUT_S = 1.5


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """μ-law speech stand-in: the stub recognizer hears energy, not words."""
    import numpy as np

    from engine.audio import ulaw_encode

    t = np.arange(int(8000 * seconds)) / 8000
    return ulaw_encode((6000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes())


def caller(host: HostProcess, script: list[Any], **kw: Any) -> SimulatedCaller:
    kw.setdefault("keep_audio", False)
    return SimulatedCaller(host.ws, script, auth_token=TWILIO_TOKEN, **kw)


async def health(host: HostProcess) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(lambda: host.get("/healthz", admin=False, timeout=5))


async def wait_live(host: HostProcess, n: int, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while (await health(host))[1].get("calls_live") != n:
            await trio.sleep(0.05)


@pytest.fixture(scope="module")
def fault_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """A stub host with small limits, shared by the burst, idle and bad-number tests."""
    env = {
        **STUBS,
        "CALLENGINE_MAX_CALLS": str(MAX_CALLS),
        "CALLENGINE_ADMISSION_MAX_PENDING": str(MAX_PENDING),
        "CALLENGINE_ADMISSION_MAX_PENDING_PER_IP": "0",
        "CALLENGINE_ADMISSION_START_TIMEOUT_S": str(START_TIMEOUT_S),
    }
    h = start_host(tmp_path_factory.mktemp("faulthost"), env)
    try:
        yield h
    finally:
        h.stop()


async def upgrade(host: HostProcess) -> tuple[bytes, trio.SocketStream]:
    """A signed WebSocket upgrade that never sends anything after it: (status line, stream)."""
    import base64

    from transports.signature import compute

    stream = await trio.open_tcp_stream("127.0.0.1", host.port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{host.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Twilio-Signature: {compute(TWILIO_TOKEN, host.ws)}\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0], stream


# ------------------------------------------------------------------ admission


async def test_a_burst_past_capacity_never_exceeds_max_calls(fault_host: HostProcess) -> None:
    """Twice max_calls upgrades at once: at most max_calls are let in (counted
    from the upgrade); the others are refused with 503 at the upgrade."""
    callers = [caller(fault_host, [Pause(2.5)], wait_greeting=False) for _ in range(2 * MAX_CALLS)]
    async with trio.open_nursery() as nursery:
        for c in callers:
            nursery.start_soon(c.run)
    admitted = [c.result for c in callers if c.result.connected]
    refused = [c.result for c in callers if not c.result.connected]
    assert MAX_PENDING <= len(admitted) <= MAX_CALLS, [r.errors for r in refused]
    assert all(r.ok for r in admitted), [r.errors for r in admitted]
    assert all(any("503" in e for e in r.errors) for r in refused), [r.errors for r in refused]
    status, body = await health(fault_host)
    assert status == 200
    assert body["admission"]["peak"] <= MAX_CALLS and body["admission"]["peak_live"] <= MAX_CALLS, body
    with trio.fail_after(10):  # every slot is given back once the calls have ended
        while (await health(fault_host))[1]["admission"]["admitted"]:
            await trio.sleep(0.1)


async def test_idle_upgrades_are_capped_and_closed_by_the_start_deadline(fault_host: HostProcess) -> None:
    """Upgrades that never send `start`: beyond max_pending they are refused at
    once; the others are closed when the start deadline passes."""
    t0 = time.monotonic()
    opened = [await upgrade(fault_host) for _ in range(MAX_PENDING + 3)]
    statuses = [status for status, _ in opened]
    assert all(s.startswith(b"HTTP/1.1 101 ") for s in statuses[:MAX_PENDING]), statuses
    assert all(s.startswith(b"HTTP/1.1 503") for s in statuses[MAX_PENDING:]), statuses
    closed_after = []
    with trio.fail_after(START_TIMEOUT_S + 5):
        for status, stream in opened[:MAX_PENDING]:
            while await stream.receive_some(4096):
                pass  # the server's close frame, then EOF
            closed_after.append(time.monotonic() - t0)
    for _, stream in opened:
        await stream.aclose()
    assert max(closed_after) < START_TIMEOUT_S + 2.0, closed_after
    # Nothing is left pending: a real call gets in.
    result = await caller(fault_host, [Pause(0.5)]).run()
    assert result.ok, result.errors


# ------------------------------------------------------------------ close codes


@pytest.mark.parametrize("case", ["invalid_utf8", "binary_inside_text", "continuation_without_start",
                                  "reserved_opcode"])
async def test_media_socket_close_codes(fault_host: HostProcess, case: str) -> None:
    """RFC 6455: 1007 for a text message that is not UTF-8, 1002 for framing
    errors; never 1011 (internal error) for the peer's fault."""
    from tests.test_close_codes import CASES, close_code_after
    from transports.signature import compute

    frames, expected = CASES[case]
    signature = compute(TWILIO_TOKEN, fault_host.ws)
    assert await close_code_after(fault_host.port, frames, f"X-Twilio-Signature: {signature}\r\n") == expected


# ------------------------------------------------------------------ non-finite numbers


async def test_non_finite_timestamps_do_not_make_a_call_deaf(fault_host: HostProcess) -> None:
    """Media with `timestamp: 1e999` (and Infinity) every half second: each is
    dropped and counted, and the call keeps hearing and answering."""
    c = caller(fault_host, [Say(audio=tone(1.0)), WaitForReply(timeout=8), Say(audio=tone(1.0)),
                            WaitForReply(timeout=8)], wait_greeting=False)
    proto = c._proto
    media = proto.media
    sent = {"bad": 0}

    def hostile(mulaw: bytes, timestamp_ms: int) -> str:
        text = media(mulaw, timestamp_ms)
        if proto._chunk % 20 == 0:  # every 0.4 s
            sent["bad"] += 1
            bad = "1e999" if sent["bad"] % 2 else "Infinity"
            text = text.replace(f'"timestamp":"{int(timestamp_ms)}"', f'"timestamp":{bad}')
        return text

    proto.media = hostile  # type: ignore[method-assign]
    result = await c.run()
    assert result.ok, result.errors
    assert sent["bad"] >= 8
    assert len(result.turns) == 2 and all(t.reply_first_frame_ms is not None for t in result.turns), result.turns
    _, metrics = await trio.to_thread.run_sync(lambda: fault_host.get("/metrics", admin=False))
    line = next(x for x in metrics.splitlines() if 'kind="bad_number"' in x and not x.startswith("#"))
    assert float(line.split()[-1]) >= sent["bad"]


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


async def test_database_stopped_mid_call(pg_host: HostProcess, pg_server: Any) -> None:
    """PostgreSQL stops while a call is live: the call keeps hearing and
    answering, the admin API answers 503 at once, and once the database is
    back the call's record (with its turns) arrives from the journal."""
    c = caller(pg_host, [Say(audio=tone(1.0)), WaitForReply(timeout=8), Pause(2.0), Say(audio=tone(1.0)),
                         WaitForReply(timeout=8), Pause(1.0)], wait_greeting=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        with trio.fail_after(15):
            while not c.result.turns or c.result.turns[0].reply_first_frame_ms is None:
                await trio.sleep(0.05)
        try:
            await trio.to_thread.run_sync(pg_server.stop)
            t0 = time.monotonic()
            status, body = await trio.to_thread.run_sync(lambda: pg_host.get("/admin/calls", timeout=10))
            assert status == 503 and time.monotonic() - t0 < 3.0, (status, body)
            with trio.fail_after(30):
                while c.result.duration_ms == 0:  # the call runs on while the database is away
                    await trio.sleep(0.1)
        finally:
            await trio.to_thread.run_sync(pg_server.start)
    assert c.result.ok, c.result.errors
    assert len(c.result.turns) == 2 and c.result.turns[1].reply_first_frame_ms is not None
    record: Any = None
    with trio.move_on_after(30):
        while True:
            status, record = await trio.to_thread.run_sync(lambda: pg_host.get(f"/admin/calls/{c.result.call_sid}"))
            if status == 200 and record.get("ended_at") and record.get("turns"):
                break
            await trio.sleep(0.3)
    assert record["ended_at"] and record["turns"] and record["end_reason"] == "ended", record


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


# ------------------------------------------------------------------ drain (SIGTERM)


def post_voice(host: HostProcess) -> str:
    """A signed Twilio voice webhook; the TwiML it answers."""
    import urllib.parse
    import urllib.request

    from transports.signature import compute

    params = {"CallSid": "CAdrain", "From": "+15551112222", "To": "+15005550006"}
    url = host.http + "/twilio/voice"
    req = urllib.request.Request(url, data=urllib.parse.urlencode(params).encode(), method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    req.add_header("X-Twilio-Signature", compute(TWILIO_TOKEN, url, params))
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode()


def stored_call(host: HostProcess, call_sid: str) -> dict[str, Any] | None:
    from engine.store.sqlite import SqliteStore

    store = SqliteStore(host.data_dir / "callengine.db")
    try:
        return store.get_call(call_sid)
    finally:
        store.close()


DRAIN_S = 3.0
CLOSING_GRACE_S = 2.0


async def test_sigterm_drains_live_calls_then_closes_politely(tmp_path: Path) -> None:
    """SIGTERM with two live calls: the host stops taking calls (healthz 503
    draining, polite TwiML, 503 at the upgrade) but keeps serving; the call that
    ends by itself ends normally; the one still live at the drain timeout hears
    a closing line, is hung up and is stored with reason `shutdown`; then the
    process exits 0."""
    env = {**STUBS, "CALLENGINE_DRAIN_TIMEOUT_S": str(DRAIN_S), "CALLENGINE_DRAIN_CLOSING_GRACE_S": str(CLOSING_GRACE_S)}
    h = await trio.to_thread.run_sync(lambda: start_host(tmp_path, env))
    try:
        short = caller(h, [Pause(DRAIN_S - 1.5)], wait_greeting=False)
        long = caller(h, [Pause(60)], wait_greeting=False)
        late = caller(h, [Pause(1)])
        heard: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long.run)
            await wait_live(h, 1)
            nursery.start_soon(short.run)
            await wait_live(h, 2)
            t0 = time.monotonic()
            h.proc.send_signal(signal.SIGTERM)
            await trio.sleep(0.3)
            status, body = await health(h)
            assert status == 503 and body["status"] == "draining", body
            twiml = await trio.to_thread.run_sync(post_voice, h)
            assert "<Say" in twiml and "<Hangup" in twiml and "<Connect" not in twiml, twiml
            await late.run()
            await trio.sleep(DRAIN_S - (time.monotonic() - t0) - 0.2)
            heard["before"] = long.result.received_bytes
        long_done = time.monotonic() - t0
        assert await trio.to_thread.run_sync(lambda: h.proc.wait(20)) == 0
        assert short.result.ok and not short.result.closed_by_server, short.result.errors
        assert not late.result.connected and any("503" in e for e in late.result.errors), late.result.errors
        assert long.result.closed_by_server and not long.result.ok
        assert DRAIN_S <= long_done <= DRAIN_S + CLOSING_GRACE_S + 2.0, long_done
        closing = long.result.received_bytes - heard["before"]
        assert closing >= 8000, f"only {closing} bytes of closing line after the drain timeout"
        assert (await trio.to_thread.run_sync(stored_call, h, short.result.call_sid))["end_reason"] == "ended"
        record = await trio.to_thread.run_sync(stored_call, h, long.result.call_sid)
        assert record["end_reason"] == "shutdown" and record["ended_at"], record
    finally:
        await trio.to_thread.run_sync(h.stop)


# ------------------------------------------------------------------ crash repair (SIGKILL)


def _recorded_and_claimed(host: HostProcess, call_sid: str) -> bool:
    """The call's start is stored and its process has claimed it (where the
    schema has owners)."""
    import sqlite3

    db = sqlite3.connect(str(host.data_dir / "callengine.db"), timeout=5)
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(calls)")}
        owner = "owner" if "owner" in columns else "'-'"
        row = db.execute(f"SELECT started_at, {owner} FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
    finally:
        db.close()
    return bool(row and row[0] and row[1])


async def test_sigkill_leaves_no_call_live_after_a_restart(tmp_path: Path) -> None:
    """A host killed with live calls: the next start on the same store closes
    them with their last known activity and reason `lost`; the admin view
    says so from the record. A call that had ended keeps its own end."""
    first = await trio.to_thread.run_sync(lambda: start_host(tmp_path, STUBS))
    second = None
    try:
        done = await caller(first, [Pause(0.3)], wait_greeting=False).run()
        assert done.ok, done.errors
        live = [caller(first, [Pause(60)], wait_greeting=False) for _ in range(2)]
        async with trio.open_nursery() as nursery:
            for c in live:
                nursery.start_soon(c.run)
            await wait_live(first, 2)
            with trio.fail_after(10):  # claimed in the store at once, not at the next heartbeat
                while not all([await trio.to_thread.run_sync(_recorded_and_claimed, first, c.result.call_sid)
                               for c in live]):
                    await trio.sleep(0.1)
            await trio.sleep(0.5)
            killed_at = time.time()
            first.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(first.proc.wait)
        assert all(c.result.closed_by_server for c in live)
        t0 = time.monotonic()
        second = await trio.to_thread.run_sync(lambda: start_host(tmp_path, STUBS))
        restart_s = time.monotonic() - t0
        for c in live:
            record = await trio.to_thread.run_sync(stored_call, second, c.result.call_sid)
            assert record is not None and record["end_reason"] == "lost", record
            assert record["started_at"] <= record["ended_at"] <= killed_at, (record, killed_at)
            # The killed process's presence lists the call live until it has been
            # silent for [admin] dead_after_s (5 s), which a quick restart beats.
            with trio.move_on_after(10):
                while True:
                    status, view = await trio.to_thread.run_sync(lambda: second.get(f"/admin/calls/{c.result.call_sid}"))
                    if status != 200 or view["state"] != "live":
                        break
                    await trio.sleep(0.2)
            assert status == 200 and view["state"] == "lost", view
        assert (await trio.to_thread.run_sync(stored_call, second, done.call_sid))["end_reason"] == "ended"
        assert restart_s < 60
    finally:
        await trio.to_thread.run_sync(first.stop)
        if second is not None:
            await trio.to_thread.run_sync(second.stop)


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    """With --workers 2 an idle worker finishing its drain first must not cut
    the other worker's calls short (hypercorn's runner terminated them)."""
    env = {**STUBS, "CALLENGINE_DRAIN_TIMEOUT_S": "2", "CALLENGINE_DRAIN_CLOSING_GRACE_S": "1"}
    h = await trio.to_thread.run_sync(lambda: start_host(tmp_path, env, args=["--workers", "2"]))
    try:
        c = caller(h, [Pause(30)], wait_greeting=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.run)
            with trio.fail_after(15):
                while not c.result.connected or c.result.received_bytes == 0:
                    await trio.sleep(0.05)
            t0 = time.monotonic()
            h.proc.send_signal(signal.SIGTERM)
        assert c.result.closed_by_server and time.monotonic() - t0 >= 2.0
        assert await trio.to_thread.run_sync(lambda: h.proc.wait(20)) == 0
        record = await trio.to_thread.run_sync(stored_call, h, c.result.call_sid)
        assert record is not None and record["end_reason"] == "shutdown", record
    finally:
        await trio.to_thread.run_sync(h.stop)
