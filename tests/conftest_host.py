"""A real ``callengine serve`` process for end-to-end tests.

Started once per session (loading the whisper model and pre-synthesizing the
greetings takes seconds), on a free loopback port, with its own data directory,
an admin token and a Twilio auth token (so every test caller signs its upgrade,
and the signature check is always on). Tests talk to it only over the wire.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
TWILIO_TOKEN = "test-twilio-auth-token"

__all__ = ["HostProcess", "host", "free_port", "start_host", "start_hosts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HostProcess:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media"

    def get(self, path: str, *, admin: bool = True, timeout: float = 10) -> tuple[int, Any]:
        req = urllib.request.Request(self.http + path)
        if admin:
            req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, json.loads(body) if "json" in ctype else body.decode()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def call_record(self, call_sid: str, *, turns: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        """The stored call once it has ended and has at least ``turns`` turns."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, last = self.get(f"/admin/calls/{call_sid}")
            if status == 200 and last.get("state") == "ended" and len(last.get("turns", [])) >= turns:
                return last
            time.sleep(0.2)
        raise AssertionError(f"call {call_sid} not recorded as expected: {last}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 120) -> None:
        """Return once ``/healthz`` answers 200; stop the host and raise (with its log) if
        it exits first or is not healthy within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = self.get("/healthz", admin=False, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"host did not become healthy:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_host(tmp: Path, extra_env: dict[str, str] | None = None, *, args: list[str] | None = None,
               wait: bool = True, timeout: float = 120) -> HostProcess:
    port = free_port()
    data = tmp / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLENGINE_") and k not in ("DATABASE_URL", "TWILIO_AUTH_TOKEN")}
    env.update(
        {
            "CALLENGINE_DATA_DIR": str(data),
            "CALLENGINE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "CALLENGINE_LOG_LEVEL": "WARNING",
            # The simulated caller speaks espeak-ng, whose digit strings whisper base
            # mishears ("0 5 4 1 2 3 4 5 6 7" -> "0.4123456") while tiny.en gets them;
            # base is tested on recorded speech (tests/test_whisper_stt.py, callengine eval).
            "CALLENGINE_WHISPER_MODEL": "tiny.en",
            # A stub-TTS host pre-synthesizes every business's greeting, apology and
            # closing line at start-up, at the stub's pace: 0.2 s per second of audio
            # (the default) made every stub host start ~5.5 s later. 0.02 keeps the
            # stub's audio streaming in timed chunks, ten times faster; a test may set
            # its own pace in extra_env.
            "CALLENGINE_STUB_TTS_RTF": "0.02",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    log_path = tmp / f"host-{port}.log"
    exe = [str(Path(sys.executable).parent / "callengine")]
    proc = subprocess.Popen(
        exe + ["serve", "--host", "127.0.0.1", "--port", str(port)] + (args or []),
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    host = HostProcess(proc, port, data, log_path)
    if wait:
        host.wait_healthy(timeout)
    return host


def start_hosts(specs: list[tuple[Path, dict[str, str] | None]], timeout: float = 120) -> list[HostProcess]:
    """Hosts started side by side (``start_host`` for each ``(tmp, extra_env)``), returned
    once all are healthy: their start-ups overlap instead of adding up. If one fails,
    every one is stopped."""
    hosts: list[HostProcess] = []
    try:
        for tmp, extra_env in specs:
            hosts.append(start_host(tmp, extra_env, wait=False))
        for h in hosts:
            h.wait_healthy(timeout)
    except BaseException:
        for h in hosts:
            h.stop()
        raise
    return hosts


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """The shared host: embedded providers (whisper, espeak, rules), SQLite."""
    h = start_host(tmp_path_factory.mktemp("host"))
    try:
        yield h
    finally:
        h.stop()
