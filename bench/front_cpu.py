"""Server CPU per call, two trees back to back: ``callengine serve`` (stub
providers) and ``callengine loadtest --calls N`` against it, the server's own
CPU-seconds (user + system, psutil) counted from healthy to the end of the load.

For comparing a change of the serving path (docs/front.md) on a loaded box:
runs alternate between the trees, each with a fresh server, and the same load
generator (``--client``, default the first tree) drives both. Usage::

    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.front_cpu --tree /tmp/before --tree . --calls 50 --rounds 2

Each run prints one JSON line (tree, the ``engine`` module it imported, CPU
seconds in all and per call, the load test's errors, underruns and its own
``cpu_pct_per_call``, as ``make bench`` reports it). Compare runs without
errors: a call that fails early does less work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.local_server import free_port, wait_healthy

STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}


def _cli(tree: Path) -> str:
    """The ``callengine`` command's module in ``tree`` (``engine.cli`` before the
    application had a package of its own)."""
    return "callengine.cli" if (tree / "callengine" / "cli.py").exists() else "engine.cli"


def run_once(tree: Path, client: Path, calls: int, duration: float, out: Path, label: str) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, **STUBS, PYTHONPATH=str(tree), CALLENGINE_DATA_DIR=str(out / f"data-{label}"))
    py = sys.executable
    engine = subprocess.run([py, "-c", "import engine; print(engine.__file__)"], env=env, cwd=tree,
                            capture_output=True, text=True).stdout.strip()
    with open(out / f"{label}.log", "wb") as log:
        proc = subprocess.Popen([py, "-m", _cli(tree), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, proc)
            server = psutil.Process(proc.pid)
            t = server.cpu_times()
            before = t.user + t.system
            load = subprocess.run(
                [py, "-m", _cli(client), "loadtest", "--url", f"ws://127.0.0.1:{port}/twilio/media",
                 "--calls", str(calls), "--ramp", str(max(1.0, calls / 20)), "--duration", str(duration), "--json",
                 "--server-pid", str(proc.pid)],
                env=dict(env, PYTHONPATH=str(client)), cwd=client, capture_output=True, text=True,
            )
            t = server.cpu_times()
            used = t.user + t.system - before
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    try:
        report = json.loads(load.stdout)
    except ValueError:
        report = {}
    return {
        "tree": str(tree), "engine": engine, "calls": calls, "server_cpu_s": round(used, 2),
        "cpu_s_per_call": round(used / calls, 3), "errors": report.get("errors"),
        "underruns": report.get("underruns"), "cpu_pct_per_call": report.get("cpu_pct_per_call"),
        "error_kinds": sorted({e for c in report.get("call_errors", []) for e in c["errors"]})[:5],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.front_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", required=True, help="a source tree to serve from (repeat: 2 or more)")
    p.add_argument("--client", help="the tree whose `callengine loadtest` drives every run (default: the first)")
    p.add_argument("--calls", type=int, default=50, help="concurrent calls per run (default 50)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds the load test keeps placing calls (default 30)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternating (default 2)")
    p.add_argument("--out", default="var/front_cpu", help="folder for server logs and data (default var/front_cpu)")
    args = p.parse_args(argv)
    trees = [Path(t).resolve() for t in args.tree]
    client = Path(args.client).resolve() if args.client else trees[0]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.rounds):
        for j, tree in enumerate(trees):
            result = run_once(tree, client, args.calls, args.duration, out, f"t{j}-r{i}")
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
