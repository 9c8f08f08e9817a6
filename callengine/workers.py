"""``callengine serve --workers N``: a multi-process runner, drain-aware.

Spawned worker processes (``callengine.serving.worker_main``) share the public
listening socket; each runs its own front listener on it and its own hypercorn
on a private port. A worker that exits with status 0 is replaced; any other
status stops all. Why not ``hypercorn.run.run``: on SIGTERM it waits until
*one* worker has exited and then terminates all the others; each worker drains
its own calls (``engine.drain``) and they finish at different times, so the
first idle worker to finish would cut every other worker's calls short. After
the shutdown event this runner waits for *every* worker to finish its drain,
up to ``drain_bound_s``, before it terminates what is left.
"""

from __future__ import annotations

import signal
import time
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any

__all__ = ["run_workers"]


def _populate(processes: list[Any], workers: int, sock: Any, shutdown_event: Any, ctx: Any) -> None:
    from callengine.serving import worker_main

    for _ in range(workers - len(processes)):
        process = ctx.Process(target=worker_main, args=(sock, shutdown_event))
        process.start()
        processes.append(process)


def _join_exited(processes: list[Any]) -> int:
    exitcode = 0
    for index in reversed(range(len(processes))):
        worker = processes[index]
        if worker.exitcode is not None:
            worker.join()
            exitcode = worker.exitcode if exitcode == 0 else exitcode
            del processes[index]
    return exitcode


def run_workers(sock: Any, workers: int, drain_bound_s: float) -> int:
    """Serve on ``sock`` with ``workers`` processes until SIGTERM/SIGINT; the exit status."""
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
            _populate(processes, workers, sock, shutdown_event, ctx)
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
        sock.close()
    return exitcode
