"""The Baileys sidecar (Node) as a supervised OS process: one actor, kind ``process``.

``callengine serve`` with ``[whatsapp] start_sidecar = true`` runs
``node src/main.js`` (``whatsapp_bridge/sidecar``) itself, under the process's
supervision tree::

    engine
      whatsapp   Supervisor (one_for_one, intensity 10 in 60 s)
        sidecar  SidecarProcess (kind "process"), restarted with backoff 1 s .. 30 s

The actor owns the OS process: the process exiting fails the actor, so its
supervisor restarts it with backoff and counts it against its intensity, and
the tree shows its status, restarts, pid and WhatsApp state like any actor's.
Stopping the tree (SIGTERM to the host) stops the sidecar: SIGTERM, then
SIGKILL after ``STOP_GRACE_S``.

One sidecar per machine, not per worker: with ``--workers N`` every worker runs
this actor, but only the one holding an exclusive lock on
``{data_dir}/whatsapp-sidecar.lock`` starts Node; the others stand by (status
``standby``) and take over within ``LOCK_RETRY_S`` if the owner dies (the
kernel releases its lock) or stops. The owner keeps the lock while it restarts
a crashed sidecar, so the restart is its own (counted, with backoff).

Secret: the host and the sidecar share ``CALLENGINE_SIDECAR_SECRET``; when it
is not set, ``callengine serve`` generates one before any worker starts and
this actor hands it to Node in its environment, so nobody copies it.

State, from the sidecar's ``GET /health`` every ``HEALTH_EVERY_S``:
``starting`` (no answer yet), ``connecting``, ``qr`` (waiting to be paired),
``connected``; ``standby`` in a worker that does not own it;
``unavailable`` when Node or the sidecar's modules are missing (logged once with
the fix; not restarted, since a restart cannot fix it). The QR itself is
printed on the terminal by the sidecar and posted to the host
(``/whatsapp/baileys/qr``), which the admin API serves.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import trio

from engine.actor import TrioActor
from engine.supervisor import Backoff, ChildSpec, Restart, Supervisor

__all__ = ["SidecarProcess", "SidecarStatus", "sidecar_tree_spec", "SIDECAR_DIR"]

log = logging.getLogger("callengine.whatsapp.sidecar")

SIDECAR_DIR = Path(__file__).resolve().parent / "sidecar"
STOP_GRACE_S = 5.0
LOCK_RETRY_S = 2.0
HEALTH_EVERY_S = 2.0


class SidecarExited(Exception):
    """The Node process ended; its supervisor restarts it."""


class SidecarStatus:
    """What the host knows about the sidecar, kept across incarnations (trio thread)."""

    def __init__(self) -> None:
        self.state = "starting"
        self.owner = False
        self.pid: int | None = None
        self.started_at: float | None = None
        self.last_exit: int | None = None
        self.me = ""
        self.queue = 0
        # The machine-wide ownership lock, kept across incarnations: a crashed
        # sidecar is restarted here (backoff, counted), not taken over by a
        # standby worker. Released when the tree stops it (or the process ends).
        self.lock_fd: int | None = None

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "owner": self.owner,
            "pid": self.pid,
            "started_at": self.started_at,
            "last_exit": self.last_exit,
            "me": self.me,
            "queue": self.queue,
        }


class SidecarProcess(TrioActor):
    """One incarnation of the sidecar process (see the module docstring)."""

    kind = "process"

    def __init__(self, settings: Any, secret: str, status: SidecarStatus, http: Any) -> None:
        super().__init__()
        self._settings = settings
        self._secret = secret
        self._status = status
        self._http = http
        self._proc: trio.Process | None = None
        self._exited = False
        url = urlparse(settings.whatsapp.sidecar_url)
        self._port = url.port or 3001
        self._base = f"http://127.0.0.1:{self._port}"

    def details(self) -> dict[str, Any]:
        return {"pid": self._status.pid, "whatsapp": self._status.state, "owner": self._status.owner}

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        status = self._status
        missing = _missing_install()
        if missing:
            status.state = "unavailable"
            log.error("whatsapp sidecar cannot start", extra={"reason": missing})
            await trio.sleep_forever()
        while not self._try_lock():
            status.state, status.owner = "standby", False
            await trio.sleep(LOCK_RETRY_S)
        status.owner = True
        status.state = "starting"
        self._proc = await trio.lowlevel.open_process(
            ["node", "src/main.js"], cwd=SIDECAR_DIR, env=self._env(), stdin=subprocess.DEVNULL
        )
        status.pid = self._proc.pid
        status.started_at = time.time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_health)
            code = await self._proc.wait()
            nursery.cancel_scope.cancel()
        status.last_exit = code
        status.pid = None
        status.state = "starting"
        self._exited = True
        raise SidecarExited(f"whatsapp sidecar exited with status {code}")

    async def on_stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE_S):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            self._status.pid = None
        lock = self._status.lock_fd
        if lock is not None and not self._exited:  # stopped, not crashed: let another worker take over
            os.close(lock)  # releases the lock
            self._status.lock_fd = None

    # ---- internals --------------------------------------------------------------------

    def _try_lock(self) -> bool:
        if self._status.lock_fd is not None:
            return True
        path = self._settings.data_path / "whatsapp-sidecar.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._status.lock_fd = fd
        return True

    def _env(self) -> dict[str, str]:
        s = self._settings
        host = s.host if s.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        data = s.data_path.resolve()
        env = dict(os.environ)
        env.update(
            {
                "CALLENGINE_SIDECAR_SECRET": self._secret,
                "CALLENGINE_HOST_URL": f"http://{host}:{s.port}",
                "CALLENGINE_SIDECAR_PORT": str(self._port),
                "CALLENGINE_WHATSAPP_AUTH_DIR": str(data / "whatsapp-auth"),
                "CALLENGINE_WHATSAPP_QUEUE": str(data / "whatsapp-outbox.jsonl"),
            }
        )
        return env

    async def _watch_health(self) -> None:
        headers = {"X-Callengine-Secret": self._secret}
        while True:
            await trio.sleep(HEALTH_EVERY_S)
            try:
                resp = await self._http.get(f"{self._base}/health", headers=headers, timeout=2.0)
                body = resp.json() if resp.status_code == 200 else {}
            except Exception:  # noqa: BLE001 - not listening yet, or busy: try again
                continue
            if not isinstance(body, dict):
                continue
            st = self._status
            st.state = "connected" if body.get("connected") else ("qr" if body.get("qr") else "connecting")
            st.me = str(body.get("me") or "")
            queue = body.get("queue")
            st.queue = queue if isinstance(queue, int) else 0


def _missing_install() -> str:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not (SIDECAR_DIR / "node_modules").is_dir():
        return f"the sidecar's modules are not installed: cd {SIDECAR_DIR} && npm ci"
    return ""


def sidecar_tree_spec(settings: Any, secret: str, status: SidecarStatus, http: Any) -> ChildSpec:
    """The ``whatsapp`` supervisor's spec, to add under the engine's root."""

    def new_tree(ctx: Any) -> Supervisor:
        return Supervisor(
            "whatsapp",
            [
                ChildSpec(
                    "sidecar",
                    lambda c: SidecarProcess(settings, secret, status, http),
                    backoff=Backoff(base=1.0, max=30.0, jitter=0.2),
                    stable_after=60.0,
                    shutdown=STOP_GRACE_S + 2.0,
                )
            ],
            intensity=10,
            period=60.0,
        )

    return ChildSpec("whatsapp", new_tree, restart=Restart.PERMANENT, shutdown=STOP_GRACE_S + 4.0)
