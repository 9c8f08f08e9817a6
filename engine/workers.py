"""``callengine serve --workers N``: hypercorn's multi-process runner, drain-aware.

Why not ``hypercorn.run.run`` as it is: on SIGTERM it sets the workers'
shutdown event, waits until *one* worker has exited, and then terminates all
the others. Each worker drains its own calls (``engine.drain``, through
``engine.hypercorn_fixes`` fix 7) and they finish at different times, so the
first idle worker to finish would cut every other worker's calls short.

This runner is the same loop for the trio worker (spawned processes sharing
the listening sockets, a crashed worker with exit status 0 replaced, any other
status stopping all), except that after the shutdown event it waits for
*every* worker to finish its drain, up to ``drain_bound_s``, before it
terminates what is left. No reloader (``callengine serve`` never used it).
"""

from __future__ import annotations

import signal
import time
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any

__all__ = ["run_workers"]


def run_workers(config: Any, drain_bound_s: float) -> int:
    """Serve with ``config.workers`` trio workers until SIGTERM/SIGINT; the exit status."""
    from hypercorn.run import _join_exited, _populate
    from hypercorn.trio.run import trio_worker

    sockets = config.create_sockets()
    ctx = get_context("spawn")
    shutdown_event = ctx.Event()
    active = True

    def shutdown(*_: Any) -> None:
        nonlocal active
        shutdown_event.set()
        active = False

    processes: list[Any] = []
    exitcode = 0
    try:
        while active:
            # The workers inherit SIGINT ignored; each drains on its own
            # signal receiver or on the shutdown event (engine.drain).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _populate(processes, config, trio_worker, sockets, shutdown_event, ctx)
            for name in ("SIGINT", "SIGTERM"):
                signal.signal(getattr(signal, name), shutdown)
            wait([process.sentinel for process in processes])
            exitcode = _join_exited(processes)
            if exitcode != 0:
                shutdown_event.set()
                active = False
        deadline = time.monotonic() + drain_bound_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(5)
            if exitcode == 0 and process.exitcode not in (0, None):
                exitcode = process.exitcode
    finally:
        for sock in sockets.secure_sockets + sockets.insecure_sockets:
            sock.close()
    return exitcode
