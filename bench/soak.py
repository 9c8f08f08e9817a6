"""``make soak``: N simulated calls, back to back, for M minutes; the host's RSS,
threads and file descriptors once a minute.

What it answers: does the host hold steady under hours of ordinary traffic, or
does something grow per call (a leak) or grow to a plateau (a cache, allocator
arenas)? It starts a host with the stub providers (the engine alone; or uses
``--url`` and ``--server-pid`` for a running one), runs the load tester's
default conversation on ``--calls`` slots for ``--minutes`` (each slot places
its next call as soon as the last one ends), and samples the server's process
tree every minute: RSS, the anonymous part of it (``/proc/PID/smaps_rollup``),
threads and open file descriptors. Each row also says how many calls had ended
by then. Extra environment for the started host (``--host-env
MALLOC_ARENA_MAX=2``) is how a plateau is attributed.

Output: a table on stdout, and ``soak.json`` in ``--out`` when given. Exit
status 1 when a call failed or the host died, else 0 (growth is reported, not
judged: what is acceptable depends on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.local_server import free_port, wait_healthy
from callsim.loadgen import DEFAULT_SCRIPT, parse_script, synthesize_script

__all__ = ["main", "build_parser"]

ROOT = Path(__file__).resolve().parent.parent
STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}


def _anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample_tree(pids: list[int]) -> dict[str, float]:
    """RSS (MB), anonymous memory (MB), threads and fds of ``pids`` and their children."""
    import psutil

    procs: dict[int, Any] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        procs[pid] = root
        for child in root.children(recursive=True):
            procs[child.pid] = child
    rss = anon = threads = fds = 0
    for pid, proc in procs.items():
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                threads += proc.num_threads()
                fds += proc.num_fds()
            anon += _anon_kb(pid) * 1024
        except psutil.NoSuchProcess:
            continue
    return {
        "rss_mb": round(rss / 2**20, 1),
        "anon_mb": round(anon / 2**20, 1),
        "threads": threads,
        "fds": fds,
        "processes": len(procs),
    }


def _start_host(port: int, data: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLENGINE_") and k != "DATABASE_URL"}
    env.pop("TWILIO_AUTH_TOKEN", None)
    env.update({**STUBS, "CALLENGINE_DATA_DIR": str(data), "CALLENGINE_LOG_LEVEL": "WARNING"})
    env.update(extra_env)
    exe = str(Path(sys.executable).parent / "callengine")
    log = (data / "host.log").open("wb")
    return subprocess.Popen(
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )


async def soak(url: str, pids: list[int], calls: int, minutes: float, interval_s: float = 60.0) -> dict[str, Any]:
    """Run the calls and the sampler; the report (rows per interval)."""
    from callsim import SimulatedCaller

    steps = await synthesize_script(parse_script(DEFAULT_SCRIPT))
    rows: list[dict[str, Any]] = []
    done = {"calls": 0, "failed": 0, "errors": []}
    t0 = trio.current_time()
    until = t0 + minutes * 60.0

    async def slot(index: int) -> None:
        await trio.sleep(index * 0.25)  # a gentle ramp
        while trio.current_time() < until:
            result = await SimulatedCaller(url, steps, keep_audio=False, call_timeout=120).run()
            done["calls"] += 1
            if not result.ok:
                done["failed"] += 1
                if len(done["errors"]) < 5:
                    done["errors"].append(result.errors[:2])

    async def sampler() -> None:
        n = 0
        while True:
            row = await trio.to_thread.run_sync(sample_tree, pids)
            row.update({"minute": round(n * interval_s / 60.0, 2), "calls_done": done["calls"],
                        "calls_failed": done["failed"]})
            rows.append(row)
            _print_row(row, rows[0])
            n += 1
            await trio.sleep_until(t0 + n * interval_s)

    _print_header()
    async with trio.open_nursery() as outer:
        outer.start_soon(sampler)
        async with trio.open_nursery() as nursery:
            for i in range(calls):
                nursery.start_soon(slot, i)
        await trio.sleep(5.0)  # calls' trees wind down, then the last sample
        row = await trio.to_thread.run_sync(sample_tree, pids)
        row.update({"minute": round((trio.current_time() - t0) / 60.0, 2), "calls_done": done["calls"],
                    "calls_failed": done["failed"]})
        rows.append(row)
        _print_row(row, rows[0])
        outer.cancel_scope.cancel()
    first, last = rows[0], rows[-1]
    peak = max(r["rss_mb"] for r in rows)
    return {
        "calls": calls,
        "minutes": minutes,
        "calls_done": done["calls"],
        "calls_failed": done["failed"],
        "errors": done["errors"],
        "rows": rows,
        "growth": {
            "rss_mb": round(last["rss_mb"] - first["rss_mb"], 1),
            "rss_peak_mb": round(peak - first["rss_mb"], 1),
            "anon_mb": round(last["anon_mb"] - first["anon_mb"], 1),
            "threads": last["threads"] - first["threads"],
            "fds": last["fds"] - first["fds"],
        },
    }


def _print_header() -> None:
    sys.stdout.write(f"{'min':>6} {'calls':>6} {'failed':>6} {'rss MB':>8} {'Δrss':>7} {'anon MB':>8} "
                     f"{'threads':>8} {'fds':>5}\n")
    sys.stdout.flush()


def _print_row(row: dict[str, Any], first: dict[str, Any]) -> None:
    sys.stdout.write(
        f"{row['minute']:>6} {row['calls_done']:>6} {row['calls_failed']:>6} {row['rss_mb']:>8.1f} "
        f"{row['rss_mb'] - first['rss_mb']:>+7.1f} {row['anon_mb']:>8.1f} {row['threads']:>8} {row['fds']:>5}\n"
    )
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20, help="concurrent call slots (default 20)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to keep placing calls (default 10)")
    p.add_argument("--url", default="", help="a running host's media URL; default: start a stub host")
    p.add_argument("--server-pid", type=int, action="append", default=[], help="the running host's pids (with --url)")
    p.add_argument("--host-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the started host (repeatable), e.g. MALLOC_ARENA_MAX=2")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--out", help="a folder for soak.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls < 1 or args.minutes <= 0 or args.interval <= 0:
        sys.stderr.write("soak: --calls, --minutes and --interval must be positive\n")
        return 2
    proc = None
    tmp = None
    try:
        if args.url:
            url, pids = args.url, list(args.server_pid)
            if not pids:
                from bench.loadtest import find_server_pids

                pids = find_server_pids(int(url.rsplit(":", 1)[1].split("/")[0]))
        else:
            extra = dict(kv.split("=", 1) for kv in args.host_env)
            tmp = tempfile.TemporaryDirectory(prefix="callengine-soak-")
            port = free_port()
            proc = _start_host(port, Path(tmp.name), extra)
            wait_healthy(port, proc)
            url, pids = f"ws://127.0.0.1:{port}/twilio/media", [proc.pid]
        report = trio.run(soak, url, pids, args.calls, args.minutes, args.interval)
        report["host_env"] = args.host_env
        alive = proc is None or proc.poll() is None
        report["host_alive"] = alive
        g = report["growth"]
        sys.stdout.write(
            f"growth over {args.minutes:g} min at {args.calls} calls ({report['calls_done']} calls, "
            f"{report['calls_failed']} failed): RSS {g['rss_mb']:+.1f} MB (peak {g['rss_peak_mb']:+.1f}), "
            f"anonymous {g['anon_mb']:+.1f} MB, threads {g['threads']:+d}, fds {g['fds']:+d}\n"
        )
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "soak.json").write_text(json.dumps(report, indent=2))
        return 0 if alive and report["calls_failed"] == 0 else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
