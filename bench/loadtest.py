"""``callengine loadtest``: N concurrent simulated Twilio calls against a host, and a latency report.

Shape: one trio program (this process) runs the load generator
(:mod:`callsim.loadgen`): N :class:`callsim.caller.SimulatedCaller`
"slots", started evenly over ``--ramp`` seconds. Each slot places one call
following the conversation script, and with ``--duration`` places calls back to
back until that many seconds have passed since the test began, so about N calls
are up at once. A sampler task reads the server processes' CPU and RSS with
psutil every 0.5 s. When the calls are done, the per-turn stamps the server
recorded are fetched from ``GET /admin/calls/{sid}`` (only when
``CALLENGINE_ADMIN_TOKEN`` is set) and everything is summarized by
:mod:`bench.report` into JSON, Markdown and a PNG.

Keeping the load generator light (it shares the machine's cores with the
server): every script line is synthesized once, before any call starts, and
handed to all callers as μ-law bytes (``Say(audio=...)``), so each line is also
cut into frames and measured once per process; callers keep no received audio
(``keep_audio=False``); a caller's tick is one timer wake-up and one ``send``
(see ``callsim/caller.py``: about 0.8 % of a core per call on the 2-core
bench box, down from 1.3 % with ``trio_websocket``); nothing is logged per
frame; psutil runs on a worker thread twice a second and walks the server's
process tree every few seconds, not on every sample. Its own CPU use is
reported (``loadgen_cpu_pct``) so a saturated generator is visible in the numbers.

Engine overhead. With the stub providers (``engine.providers.stub``) every wait
of a turn is injected and known, so what remains is the engine's::

    overhead_ms = turn_ms - injected_turn_ms
    turn_ms           = reply_first_frame - speech_end            (caller's clock)
    injected_turn_ms  = vad.hangover_ms
                        + (stt_final_delay_ms if not turn.early_finalize)
                        + llm_first_token_ms
                        + (first_sentence_words - 1) * 1000 / llm_tokens_per_s
                        + tts_first_audio_ms

The delays are read from the settings of *this* process's environment
(``config/default.toml`` + ``CALLENGINE_*``), which the bench script gives both
processes; the report records them and the server's providers from
``GET /healthz`` (overhead is only meaningful when those are all ``stub``).

Threads: everything here runs on the trio thread except espeak-ng synthesis,
psutil sampling and the admin HTTP requests, which go through
``trio.to_thread`` with their own small ``CapacityLimiter``s.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import trio

from callsim.loadgen import (
    DEFAULT_SCRIPT,
    LoadState,
    ScriptError,
    load_script,
    parse_script,
    place_calls,
    script_labels,
    synthesize_script,
)

__all__ = [
    "injected_delays",
    "find_server_pids",
    "run_loadtest",
    "main",
]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.5
TREE_REFRESH_S = 5.0  # how often the sampler looks for new server child processes


# ------------------------------------------------------------------ injected delays


def injected_delays(settings: Any | None = None) -> dict[str, Any]:
    """The stub delays and turn settings (from ``settings`` or this process's
    environment) and the per-turn injected total that ``overhead_ms`` subtracts."""
    from engine.providers.stub import first_sentence_words

    if settings is None:
        from engine.config import load_settings

        settings = load_settings(os.environ.get("CALLENGINE_CONFIG") or None)
    s = settings.stub
    words = first_sentence_words(s.reply_text)
    early = bool(settings.turn.early_finalize)
    llm_ms = s.llm_first_token_ms + (words - 1) * 1000.0 / s.llm_tokens_per_s
    turn_wait = settings.vad.hangover_ms + (0 if early else s.stt_final_delay_ms)
    return {
        "stt_partial_ms": s.stt_partial_ms,
        "stt_final_delay_ms": s.stt_final_delay_ms,
        "llm_first_token_ms": s.llm_first_token_ms,
        "llm_tokens_per_s": s.llm_tokens_per_s,
        "tts_first_audio_ms": s.tts_first_audio_ms,
        "tts_rtf": s.tts_rtf,
        "reply_text": s.reply_text,
        "first_sentence_words": words,
        "vad_hangover_ms": settings.vad.hangover_ms,
        "early_finalize": early,
        "turn_end_wait_ms": turn_wait,
        "llm_first_sentence_ms": round(llm_ms, 1),
        "injected_turn_ms": round(turn_wait + llm_ms + s.tts_first_audio_ms, 1),
        "source": "the load tester's environment (the bench script gives the server the same)",
    }


# ------------------------------------------------------------------ server processes


def find_server_pids(port: int) -> list[int]:
    """Processes listening on TCP ``port`` (hypercorn's workers share the socket)."""
    import psutil

    pids: set[int] = set()
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            pids.add(c.pid)
    return sorted(pids)


class _Sampler:
    """CPU and RSS of the server processes and their children (psutil, worker thread).

    The process tree is walked every ``TREE_REFRESH_S`` (and when a known process
    has gone), not on every sample: ``children(recursive=True)`` reads every
    process's ``/proc/*/stat``, which was the costliest part of a sample. A child
    started in between is counted from the next walk.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self._psutil = psutil
        self.roots = list(pids)
        self._procs: dict[int, Any] = {}
        self._walked_at: float | None = None
        self._me = psutil.Process()
        self._me.cpu_percent(None)
        self.samples: list[dict[str, float]] = []
        self.missing: list[int] = []

    def _tree(self) -> list[Any]:
        now = time.monotonic()
        if self._walked_at is not None and now - self._walked_at < TREE_REFRESH_S:
            return list(self._procs.values())
        self._walked_at = now
        psutil = self._psutil
        found: dict[int, Any] = {}
        for pid in self.roots:
            try:
                root = self._procs.get(pid) or psutil.Process(pid)
                found[pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = self._procs.get(child.pid) or child
            except psutil.NoSuchProcess:
                if pid not in self.missing:
                    self.missing.append(pid)
        for pid, proc in found.items():
            if pid not in self._procs:
                try:
                    proc.cpu_percent(None)  # prime: the first reading is meaningless
                except psutil.NoSuchProcess:
                    pass
        self._procs = found
        return list(found.values())

    def prime(self) -> None:
        self._tree()

    def sample(self, t: float, active: int) -> None:
        psutil = self._psutil
        cpu = 0.0
        rss = 0
        for proc in self._tree():
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                self._walked_at = None  # walk the tree again on the next sample
                continue
        self.samples.append(
            {"t": round(t, 3), "cpu_pct": round(cpu, 1), "rss_mb": round(rss / 2**20, 1), "active": active,
             "loadgen_cpu_pct": round(self._me.cpu_percent(None), 1)}
        )


# ------------------------------------------------------------------ the run

def _http_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


async def _fetch_records(base: str, sids: list[str], token: str) -> dict[str, Any]:
    """``GET /admin/calls/{sid}`` for each call, waiting briefly for ended records."""
    limiter = trio.CapacityLimiter(4)
    out: dict[str, Any] = {}

    def fetch(sid: str) -> Any:
        data = None
        for _ in range(20):
            try:
                data = _http_json(f"{base}/admin/calls/{sid}", token)
            except (urllib.error.URLError, OSError, ValueError):
                data = None
            if data and data.get("state") == "ended" and data.get("turns"):
                return data
            time.sleep(0.25)
        return data

    async def one(sid: str) -> None:
        out[sid] = await trio.to_thread.run_sync(fetch, sid, limiter=limiter)

    async with trio.open_nursery() as nursery:
        for sid in sids:
            nursery.start_soon(one, sid)
    return out


async def run_loadtest(
    url: str,
    *,
    calls: int,
    ramp: float = 5.0,
    duration: float = 0.0,
    script: list[dict[str, Any]] | None = None,
    server_pids: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Run the test; return (the report dict, the psutil samples). Raises
    :class:`ScriptError` or ``ValueError`` for bad arguments before any call starts."""
    from bench import report as rpt

    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"--url must be ws:// or wss://, got {url!r}")
    if calls < 1:
        raise ValueError(f"--calls must be >= 1, got {calls}")
    if ramp < 0 or duration < 0:
        raise ValueError("--ramp and --duration must be >= 0")
    script = parse_script(script if script is not None else DEFAULT_SCRIPT)
    steps = await synthesize_script(script)
    # The measuring process must not pause to collect its start-up heap in the
    # middle of a call (it stamps every frame it hears): freeze it out of the GC.
    gc.collect()
    gc.freeze()
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.hostname}:{port}"
    pids = list(server_pids or []) or await trio.to_thread.run_sync(find_server_pids, port)
    health: dict[str, Any] | None
    try:
        health = await trio.to_thread.run_sync(_http_json, f"{base}/healthz")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        health = {"error": str(exc)}
    try:
        injected = injected_delays()
    except Exception as exc:  # noqa: BLE001 - a bad local config must not stop the measurement
        injected = {"error": f"cannot read the stub settings: {exc}"}

    sampler = _Sampler(pids)
    await trio.to_thread.run_sync(sampler.prime)
    state = LoadState()
    t_begin = trio.current_time()
    wall_begin = time.time()
    until = t_begin + duration

    async def sample_forever() -> None:
        deadline = trio.current_time()
        while True:
            deadline += SAMPLE_INTERVAL_S
            await trio.sleep_until(deadline)
            await trio.to_thread.run_sync(sampler.sample, trio.current_time() - t_begin, state.active)

    await trio.sleep(SAMPLE_INTERVAL_S)
    await trio.to_thread.run_sync(sampler.sample, trio.current_time() - t_begin, 0)  # baseline
    async with trio.open_nursery() as outer:
        outer.start_soon(sample_forever)
        await place_calls(url, steps, calls=calls, ramp=ramp, until=until, state=state)
        outer.cancel_scope.cancel()
    elapsed = trio.current_time() - t_begin

    records: dict[str, Any] = {}
    token = os.environ.get("CALLENGINE_ADMIN_TOKEN", "")
    if token:
        records = await _fetch_records(base, [r.call_sid for r in state.results], token)

    report = rpt.build_report(
        results=state.results,
        samples=sampler.samples,
        records=records,
        injected=injected,
        meta={
            "url": url,
            "concurrency": calls,
            "ramp_s": ramp,
            "duration_s": duration,
            "elapsed_s": round(elapsed, 1),
            "started_at": wall_begin,
            "script": script,
            "lines": script_labels(script),
            "server_pids": pids,
            "server_pids_missing": sampler.missing,
            "server": health,
            "cpu_count": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
        },
    )
    return report, sampler.samples


def main(args: argparse.Namespace) -> int:
    """Entry point of ``callengine loadtest``: 0 when every call ran cleanly, 1 when
    some call had errors or protocol violations, 2 for bad arguments."""
    from bench import report as rpt

    try:
        script = load_script(getattr(args, "script", None))
        report, samples = trio.run(
            lambda: run_loadtest(
                args.url,
                calls=int(args.calls),
                ramp=float(args.ramp or 0.0),
                duration=float(args.duration or 0.0),
                script=script,
                server_pids=getattr(args, "server_pid", None) or None,
            )
        )
    except (ScriptError, ValueError) as exc:
        sys.stderr.write(f"callengine loadtest: {exc}\n")
        return 2
    out = getattr(args, "out", None)
    if out:
        paths = rpt.write_outputs(report, samples, Path(out))
        if not args.json:
            sys.stdout.write("wrote " + ", ".join(str(p) for p in paths) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(rpt.render_markdown(report) + "\n")
    return 0 if report["errors"] == 0 and report["violations"] == 0 else 1
