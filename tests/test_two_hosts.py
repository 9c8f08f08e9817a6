"""Two hosts behind nginx, sharing one PostgreSQL (docs/two-hosts.md).

Real pieces only: two ``callengine serve`` processes (stub providers), one
PostgreSQL database, Debian's nginx running ``deploy/nginx-two-hosts.conf``
with the test's ports, and simulated Twilio callers that reach the hosts only
through nginx. Calls spread over both hosts; each host's admin API (and the
one behind nginx) lists every call, live and ended.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from tests.conftest_host import ADMIN_TOKEN, ROOT, TWILIO_TOKEN, HostProcess, free_port, start_hosts
from callsim import Pause, Say, SimulatedCaller, WaitForReply

# The stub planner's reply: two sentences as by default, spoken in 1.2 s instead of
# 3.7 s (the stub voice speaks 60 ms a character); every caller waits a reply out.
STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub",
         "CALLENGINE_STUB_REPLY_TEXT": "Thanks. We can come."}
CONF = ROOT / "deploy" / "nginx-two-hosts.conf"
CALLS = 4


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail("nginx is missing: run scripts/ensure-system.sh test (apt-get install nginx-light)", pytrace=False)
    return found


@pytest.fixture
def proxy(tmp_path: Path, pg_server: Any) -> Iterator[tuple[str, HostProcess, HostProcess]]:
    dsn = pg_server.create_database()
    hosts: list[HostProcess] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        hosts += start_hosts([(tmp_path / name, {**STUBS, "DATABASE_URL": dsn}) for name in ("a", "b")])
        port = free_port()
        conf = CONF.read_text()
        for old, new in (("127.0.0.1:8081", f"127.0.0.1:{hosts[0].port}"), ("127.0.0.1:8082", f"127.0.0.1:{hosts[1].port}"),
                         ("listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}")):
            assert old in conf
            conf = conf.replace(old, new)
        prefix = tmp_path / "nginx"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "nginx.conf").write_text(conf)
        nginx = subprocess.Popen(
            [_nginx(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr",
             "-g", f"daemon off; pid {prefix / 'nginx.pid'};"],
            stdout=(prefix / "out.log").open("wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert nginx.poll() is None, (prefix / "out.log").read_text()
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", hosts[0], hosts[1]
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for h in hosts:
            h.stop()
        pg_server.drop_database(dsn.rsplit("/", 1)[-1])


def _admin(base: str, path: str) -> Any:
    import json

    req = urllib.request.Request(f"http://{base}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def test_calls_spread_over_two_hosts_and_either_host_lists_them_all(proxy: Any) -> None:
    front, a, b = proxy
    callers = [
        SimulatedCaller(f"ws://{front}/twilio/media", [Say("I need a plumber"), WaitForReply(timeout=15), Pause(1.0)],
                        auth_token=TWILIO_TOKEN, keep_audio=False, custom_parameters={"from": f"+1555000000{i}"})
        for i in range(CALLS)
    ]
    seen_live: dict[str, set[str]] = {}

    async def watch() -> None:
        # While the calls run, every admin API (a, b, and whichever nginx picks) lists them all live.
        while True:
            for name, base in (("a", f"127.0.0.1:{a.port}"), ("b", f"127.0.0.1:{b.port}"), ("front", front)):
                listing = await trio.to_thread.run_sync(_admin, base, "/admin/calls?state=live")
                seen_live[name] = {c["sid"] for c in listing["calls"]} | seen_live.get(name, set())
            await trio.sleep(0.3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as calls:
            for c in callers:
                calls.start_soon(c.run)
        nursery.cancel_scope.cancel()
    sids = {c.result.call_sid for c in callers}
    assert all(c.result.ok for c in callers), [c.result.errors for c in callers]
    for name in ("a", "b", "front"):
        assert seen_live.get(name, set()) >= sids, (name, seen_live)

    procs_a = {p["id"] for p in _admin(f"127.0.0.1:{a.port}", "/admin/processes")["processes"]}
    procs_b = {p["id"] for p in _admin(f"127.0.0.1:{b.port}", "/admin/processes")["processes"]}
    assert procs_a == procs_b and len(procs_a) == 2
    for base in (f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}", front):
        deadline = time.monotonic() + 10
        while True:
            mine = [c for c in _admin(base, "/admin/calls?limit=50")["calls"] if c["sid"] in sids]
            if len(mine) == CALLS and all(c["state"] == "ended" and c["turns"] >= 1 for c in mine):
                break
            assert time.monotonic() < deadline, (base, mine)
            await trio.sleep(0.2)
        holders = {c["process"] for c in mine}
        assert holders == procs_a, holders  # the calls were spread over both hosts
    # The console's event stream passes the proxy unbuffered.
    req = urllib.request.Request(f"http://{front}/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [resp.readline().decode().strip() for _ in range(4)]
    assert "event: calls" in lines and any(line.startswith("data: {\"calls\"") for line in lines), lines
