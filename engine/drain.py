"""Graceful drain: what the host does between SIGTERM and the end of the process.

Why the listener stays open: hypercorn closes its listening sockets the moment
its ``shutdown_trigger`` returns, so new calls would get a TCP refusal (not
TwiML) and a load balancer's health check would fail by timeout rather than
by answer. The signal is therefore handled here, and hypercorn's trigger
returns only once the drain is over:

1. SIGTERM or SIGINT (or the multi-process runner's shutdown event): the
   admission closes (``Admission.draining``). ``/healthz`` answers 503
   ``draining`` so a load balancer stops routing; ``/twilio/voice`` answers a
   polite "please call again" TwiML; a media upgrade is refused with 503.
   Live calls and WhatsApp chats go on.
2. Live calls may end on their own for up to ``drain.timeout_s``; replies to
   WhatsApp messages in flight are waited for too. A second signal cuts this
   wait short.
3. Calls still live then are ended with reason ``shutdown``: each tree stops,
   and its handler (``callengine.host``) sends ``clear``, plays the business's
   ``shutdown`` prompt and hangs up (bounded by ``drain.closing_grace_s``).
4. The trigger returns; hypercorn stops serving and the app's ``after_serving``
   hooks stop the chats and the runtime as before.

Owned by the host process's trio thread. ``shutdown_trigger`` is what
``callengine.serving`` hands hypercorn; with ``--workers N`` each worker wraps the
runner's shutdown event the same way (``callengine.serving.worker_main``), and the
runner (``callengine.workers``) waits for every worker's drain.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Awaitable, Callable

import trio

__all__ = ["drain", "shutdown_trigger", "wait_for_signal", "CLOSING_DEFAULT"]

log = logging.getLogger("callengine.drain")

#: What a caller still on the line hears when the drain timeout ends the call
#: (a business overrides it with its ``shutdown`` prompt).
CLOSING_DEFAULT = "We have to end this call now for a short system update. Please call again in a minute. Goodbye."

_POLL_S = 0.1
LINGER_S = 0.5


async def wait_for_signal(seen: trio.Event | None = None, again: trio.Event | None = None) -> None:
    """Return on the first SIGTERM or SIGINT. With ``seen`` and ``again``: set
    ``seen`` on the first, keep listening, set ``again`` on the next (the
    operator insists: cut the drain short) and return."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if seen is None or again is None:
                if seen is not None:
                    seen.set()
                return
            if not seen.is_set():
                seen.set()
                continue
            again.set()
            return


async def drain(
    runtime: Any,
    *,
    timeout_s: float,
    closing_grace_s: float,
    hurry: trio.Event | None = None,
    chats_in_flight: Callable[[], int] = lambda: 0,
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns what happened (also logged)."""
    admission = runtime.admission
    admission.draining = True
    hurry = hurry if hurry is not None else trio.Event()
    began = trio.current_time()
    at_signal = runtime.live_call_count
    log.warning("draining: no new calls", extra={"calls_live": at_signal, "timeout_s": timeout_s})
    with trio.move_on_after(timeout_s):
        while (admission.admitted or runtime.live_call_count or chats_in_flight()) and not hurry.is_set():
            await trio.sleep(_POLL_S)
    left = list(runtime.live.values())
    for live in left:
        live.end_reason = "shutdown"
        live.tree.request_stop()
    if left:
        log.warning("drain timeout: ending live calls", extra={"calls_live": len(left)})
        # Each handler plays the closing line (bounded by closing_grace_s) and
        # hangs up; wait for them, and for upgrades that never started.
        with trio.move_on_after(closing_grace_s + 6.0):
            while admission.admitted or runtime.live_call_count:
                await trio.sleep(_POLL_S)
    # Responses being written (a health check's 503, a webhook's TwiML) go out
    # before hypercorn cancels the requests in progress.
    await trio.sleep(LINGER_S)
    report = {
        "calls_at_signal": at_signal,
        "ended_by_shutdown": len(left),
        "drain_s": round(trio.current_time() - began, 2),
    }
    log.warning("drained", extra=report)
    return report


def shutdown_trigger(
    app: Any, outer: Callable[[], Awaitable[None]] | None = None, *, signals: bool = True
) -> Callable[[], Awaitable[None]]:
    """A hypercorn ``shutdown_trigger`` that drains ``app`` before it returns.

    It waits for SIGTERM/SIGINT (when ``signals``) or for ``outer`` (hypercorn's
    own trigger in a worker process) to return, whichever comes first, then
    runs :func:`drain` with the app's settings.
    """

    async def trigger() -> None:
        seen, again = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                await wait_for_signal(seen, again)

            async def watch_outer() -> None:
                assert outer is not None
                await outer()
                seen.set()

            if signals:
                nursery.start_soon(watch_signals)
            if outer is not None:
                nursery.start_soon(watch_outer)
            await seen.wait()
            state = app.extensions.get("callengine") or {}
            runtime = state.get("runtime")
            if runtime is not None:
                settings = runtime.settings
                await drain(
                    runtime,
                    timeout_s=settings.drain.timeout_s,
                    closing_grace_s=settings.drain.closing_grace_s,
                    hurry=again,
                    chats_in_flight=state.get("chats_in_flight") or (lambda: 0),
                )
            nursery.cancel_scope.cancel()

    return trigger
