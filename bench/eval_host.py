"""The host an evaluation talks to, and reading its records back.

``start_host`` starts ``callengine serve`` from this source tree on a free loopback
port with a throw-away data folder (the eval's default; ``--url`` uses a running
host instead); ``fetch_record`` reads a call back from the admin API once it has
ended, so the scored transcripts are the stored ones, not the caller's view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.local_server import free_port

__all__ = ["HostProcess", "fetch_record", "host_env", "http_base", "http_json", "start_host", "transcripts_of"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class HostProcess:
    """A ``callengine serve`` started by the eval (stopped by ``stop``)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    data_dir: tempfile.TemporaryDirectory[str]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.data_dir.cleanup()


def host_env(admin_token: str, stt: str = "", model: str = "") -> dict[str, str]:
    """The environment of a host the eval starts: this one, less the Twilio signature
    check, with the admin token and the recognizer chosen."""
    env = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
    env["CALLENGINE_ADMIN_TOKEN"] = admin_token
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if stt:
        env["CALLENGINE_STT"] = stt
    if model:
        env["CALLENGINE_WHISPER_MODEL"] = model
    return env


def start_host(admin_token: str, stt: str = "", model: str = "", timeout: float = 180.0) -> HostProcess:
    """Start ``callengine serve`` from this source tree on a free loopback port;
    return once ``/healthz`` answers 200. Raises ``RuntimeError`` with the log's tail."""
    port = free_port()
    data = tempfile.TemporaryDirectory(prefix="callengine-eval-")
    env = host_env(admin_token, stt, model)
    env["CALLENGINE_DATA_DIR"] = data.name
    env.setdefault("CALLENGINE_LOG_LEVEL", "WARNING")
    log_path = Path(data.name) / "host.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "callengine.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    host = HostProcess(proc, port, log_path, data)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            data.cleanup()
            raise RuntimeError(f"the host exited with {proc.returncode}:\n{tail}")
        try:
            http_json(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return host
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            host.stop()
            raise RuntimeError(f"the host did not become healthy in {timeout:.0f} s:\n{tail}")
        time.sleep(0.3)


def http_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_base(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.hostname}:{port}"


def fetch_record(base: str, sid: str, token: str, timeout: float = 20.0) -> dict[str, Any] | None:
    """The stored call once it has ended (its turns are written behind the call)."""
    deadline = time.monotonic() + timeout
    data: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            data = http_json(f"{base}/admin/calls/{sid}", token)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise RuntimeError(f"the admin API refused the token ({exc.code}); set CALLENGINE_ADMIN_TOKEN") from None
            data = None
        except (urllib.error.URLError, OSError, ValueError):
            data = None
        if data and data.get("state") == "ended":
            time.sleep(0.3)  # a last turn may still be on its way to the store
            return http_json(f"{base}/admin/calls/{sid}", token)
        time.sleep(0.3)
    return data


def transcripts_of(record: dict[str, Any] | None) -> list[str]:
    turns = sorted((record or {}).get("turns") or [], key=lambda t: t.get("turn_index", 0))
    return [str(t.get("transcript") or "").strip() for t in turns if str(t.get("transcript") or "").strip()]
