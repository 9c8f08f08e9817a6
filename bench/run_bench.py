"""The benchmark driver behind ``make bench`` / ``bench/run_bench.sh``.

For each worker count (default 1 and 2) it starts ``callengine serve`` with the
stub providers on a free loopback port, runs ``callengine loadtest`` at each
call count (default 50, 100, 200), then searches for the largest call count that
still meets every target (stepping between the last pass and the first miss in
steps of ``--step``), and stops the host. Optionally (``--pipecat``) it does the
same for the Pipecat peer (``bench/peers/pipecat_bot.py``, in its own virtualenv
``bench/.venv-pipecat``, created on first use). ``--profile`` samples the
1-worker host with py-spy during one run. Finally it regenerates the tables in
``docs/benchmarks.md`` from the reports under ``--out``.

Every run writes ``<out>/<peer>-w<workers>-n<calls>/{report.json,report.md,
report.png,samples.json,label.json}``. Settings the host and the load tester
share (``CALLENGINE_*``, e.g. ``CALLENGINE_TURN_EARLY_FINALIZE=false``) are
taken from this process's environment and given to both.

Runs in the foreground of one process; hosts and load tests are subprocesses
it owns and always stops (SIGTERM, then SIGKILL) on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PIPECAT_VENV = ROOT / "bench" / ".venv-pipecat"
PIPECAT_REQ = "pipecat-ai[websocket,silero]==1.14.0"
ADMIN_TOKEN = "bench-admin-token"
STUB_ENV = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(STUB_ENV)
    env.update(
        {
            "CALLENGINE_ADMIN_TOKEN": ADMIN_TOKEN,
            "CALLENGINE_MAX_CALLS": "2000",
            "CALLENGINE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        }
    )
    env.pop("TWILIO_AUTH_TOKEN", None)
    env.update(extra)
    return env


def _healthy(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _server(cmd: list[str], port: int, env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[subprocess.Popen]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while _healthy(port) is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not healthy after {timeout:.0f} s; see {log}")
                time.sleep(0.3)
            time.sleep(2.0)  # let start-up work (greeting synthesis, VAD pre-warm) settle
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def _loadtest(url: str, calls: int, out: Path, label: dict[str, Any], args: argparse.Namespace,
              env: dict[str, str]) -> dict[str, Any] | None:
    ramp = max(1.0, calls / args.ramp_rate)
    cmd = [str(VENV_BIN / "callengine"), "loadtest", "--url", url, "--calls", str(calls), "--ramp", f"{ramp:.1f}",
           "--duration", str(args.duration), "--out", str(out), "--json"]
    if args.script:
        cmd += ["--script", args.script]
    _say(f"{label['peer']} workers={label['workers']}: {calls} calls (ramp {ramp:.0f} s, duration {args.duration} s)")
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.duration + ramp + 600)
    if proc.returncode not in (0, 1):
        _say(f"loadtest failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return None
    report = json.loads(proc.stdout)
    (out / "label.json").write_text(json.dumps(label) + "\n", encoding="utf-8")
    t = report["targets"]["checks"]
    _say(
        f"  -> {time.monotonic() - started:.0f} s: errors {report['errors']}, underruns {report['underruns']}, "
        f"greeting p95 {report['greeting_ms']['p95']}, overhead p99 {report['overhead_ms']['p99']}, "
        f"clear p95 {report['clear_ms']['p95']}, cpu/call {report['cpu_pct_per_call']} % -> "
        f"{'met' if report['targets']['met'] else 'missed: ' + ', '.join(k for k, v in t.items() if v is False)}"
    )
    return report


def _profile(pid: int, seconds: int, out: Path) -> None:
    """py-spy samples of the host (raw collapsed stacks + a flame graph + a top list)."""
    exe = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(exe).exists():
        _say("py-spy not installed (pip install py-spy): no profile")
        return
    raw = out / "profile.txt"
    subprocess.run([exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "50", "--format", "raw", "-o", str(raw),
                    "--nonblocking"], capture_output=True, timeout=seconds + 60)
    if not raw.exists():
        return
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        for frame in {f.split(" (")[0] + " (" + f.split(" (")[-1] for f in frames}:
            own[frame] = own.get(frame, 0) + int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:40]
    (out / "profile-top.txt").write_text(
        f"{total} samples; inclusive share per function\n"
        + "\n".join(f"{100 * n / max(total, 1):5.1f}%  {name}" for name, n in top) + "\n", encoding="utf-8"
    )


def _peer_runs(peer: str, workers: int, server_cmd: list[str], port: int, args: argparse.Namespace,
               calls_list: Sequence[int], search: bool) -> list[tuple[int, bool]]:
    env = _env(CALLENGINE_DATA_DIR=str(Path(args.out).resolve() / f"var-{peer}-w{workers}"))
    if peer == "pipecat":
        # Pipecat ends a turn on the final transcript: the final's delay is on its path.
        env["CALLENGINE_TURN_EARLY_FINALIZE"] = "false"
    url = f"ws://127.0.0.1:{port}/twilio/media"
    results: list[tuple[int, bool]] = []
    with _server(server_cmd, port, env, Path(args.out) / f"{peer}-w{workers}.log") as proc:
        for calls in calls_list:
            out = Path(args.out) / f"{peer}-w{workers}-n{calls}"
            label = {"peer": peer, "workers": workers, "calls": calls}
            if args.profile and peer == "callengine" and workers == 1 and calls == args.profile_calls:
                import threading

                th = threading.Thread(target=_profile, args=(proc.pid, 20, out), daemon=True)
                out.mkdir(parents=True, exist_ok=True)
                threading.Timer(max(3.0, calls / args.ramp_rate), th.start).start()
            report = _loadtest(url, calls, out, label, args, env)
            results.append((calls, bool(report and report["targets"]["met"])))
        if search:
            passed = [n for n, ok in results if ok]
            failed = [n for n, ok in results if not ok]
            lo = max(passed) if passed else 0
            hi = min([n for n in failed if n > lo], default=None)
            if hi is None and passed:
                hi = lo * 2  # everything passed: look above the largest tried
                report = _loadtest(url, hi, Path(args.out) / f"{peer}-w{workers}-n{hi}",
                                   {"peer": peer, "workers": workers, "calls": hi, "search": True}, args, env)
                ok = bool(report and report["targets"]["met"])
                results.append((hi, ok))
                if ok:
                    return results
            while hi is not None and hi - lo > args.step:
                mid = (lo + hi) // 2 // args.step * args.step or args.step
                if mid <= lo:
                    break
                report = _loadtest(url, mid, Path(args.out) / f"{peer}-w{workers}-n{mid}",
                                   {"peer": peer, "workers": workers, "calls": mid, "search": True}, args, env)
                ok = bool(report and report["targets"]["met"])
                results.append((mid, ok))
                lo, hi = (mid, hi) if ok else (lo, mid)
    return results


def _largest(results: Sequence[tuple[int, bool]]) -> int:
    """The largest N that passed with every smaller tried N passing too."""
    best = 0
    for n, ok in sorted(results):
        if not ok:
            break
        best = n
    return best


def _ensure_pipecat() -> Path | None:
    py = PIPECAT_VENV / "bin" / "python"
    if py.exists():
        check = subprocess.run([str(py), "-c", "import pipecat, fastapi, uvicorn"], capture_output=True)
        if check.returncode == 0:
            return py
    _say(f"creating {PIPECAT_VENV} ({PIPECAT_REQ})")
    try:
        subprocess.run([os.environ.get("PYTHON", "python3"), "-m", "venv", str(PIPECAT_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", PIPECAT_REQ, "uvicorn", "numpy"], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        _say(f"cannot install pipecat: {exc}")
        return None
    return py


def _regenerate_docs(out: Path, doc: Path) -> None:
    from bench import report as rpt

    def reports(prefix: str) -> list[dict[str, Any]]:
        found = []
        for path in sorted(out.glob(f"{prefix}-w*-n*/report.json")):
            r = json.loads(path.read_text(encoding="utf-8"))
            label = path.with_name("label.json")
            r["label"] = json.loads(label.read_text(encoding="utf-8")) if label.exists() else {}
            found.append(r)
        return sorted(found, key=lambda r: (r["label"].get("workers", 0), r.get("concurrency", 0)))

    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    for section, prefix in (("callengine", "callengine"), ("pipecat", "pipecat")):
        found = reports(prefix)
        if found:
            text = rpt.replace_section(text, section, rpt.results_table(found))
    # Per peer and worker count: the largest N meeting every target, and every
    # target but the overhead p99 (each with every smaller measured N passing too).
    runs: dict[str, list[tuple[int, bool, bool]]] = {}
    for prefix in ("callengine", "pipecat"):
        for r in reports(prefix):
            checks = r["targets"]["checks"]
            key = f"{prefix}, {r['label'].get('workers', 1)} worker(s)"
            rest = all(v is True for k, v in checks.items() if k != "overhead_p99_ms")
            runs.setdefault(key, []).append((int(r.get("concurrency", 0)), bool(r["targets"]["met"]), rest))
    if runs:
        lines = []
        for key, items in sorted(runs.items()):
            all_ok = _largest([(n, a) for n, a, _ in items])
            but_overhead = _largest([(n, b) for n, _, b in items])
            lines.append(f"- {key}: every target up to **{all_ok}** calls; every target but overhead p99 "
                         f"up to **{but_overhead}** calls (measured: {', '.join(str(n) for n, _, _ in sorted(items))})")
        text = rpt.replace_section(text, "largest", "\n".join(lines))
    summary = out / "largest.json"
    if summary.exists() and not runs:
        data = json.loads(summary.read_text(encoding="utf-8"))
        lines = [f"- {k}: largest N meeting every target = **{v}**" for k, v in sorted(data.items())]
        text = rpt.replace_section(text, "largest", "\n".join(lines))
    doc.write_text(text, encoding="utf-8")
    _say(f"updated {doc}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run_bench.sh", description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--calls", default="50,100,200", help="comma-separated call counts")
    p.add_argument("--duration", type=float, default=30.0, help="seconds each slot keeps placing calls")
    p.add_argument("--ramp-rate", type=float, default=20.0, help="calls started per second")
    p.add_argument("--script", help="conversation script (default: bench/scripts/default.json)")
    p.add_argument("--no-search", dest="search", action="store_false", help="skip the largest-N search")
    p.add_argument("--step", type=int, default=10, help="granularity of the largest-N search")
    p.add_argument("--pipecat", action="store_true", help="also run the Pipecat peer")
    p.add_argument("--pipecat-calls", default="10,25,50")
    p.add_argument("--profile", action="store_true", help="py-spy the 1-worker host during one run")
    p.add_argument("--profile-calls", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--docs-only", action="store_true", help="only regenerate the tables from existing reports")
    args = p.parse_args(argv)
    # Started in the background, SIGINT may be ignored: make SIGTERM and SIGINT unwind
    # through the ``finally`` blocks that stop the hosts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.script is None:
        args.script = str(ROOT / "bench" / "scripts" / "default.json")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    largest_path = out / "largest.json"
    largest: dict[str, int] = json.loads(largest_path.read_text()) if largest_path.exists() else {}
    if not args.docs_only:
        _say(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}")
        for workers in [int(w) for w in args.workers.split(",") if w]:
            port = _free_port()
            cmd = [str(VENV_BIN / "callengine"), "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(workers)]
            results = _peer_runs("callengine", workers, cmd, port, args,
                                 [int(n) for n in args.calls.split(",") if n], args.search)
            largest[f"callengine, {workers} worker(s)"] = _largest(results)
            largest_path.write_text(json.dumps(largest, indent=2) + "\n")
        if args.pipecat:
            py = _ensure_pipecat()
            if py is not None:
                port = _free_port()
                cmd = [str(py), "-W", "ignore::DeprecationWarning", str(ROOT / "bench" / "peers" / "pipecat_bot.py"),
                       "--port", str(port)]
                results = _peer_runs("pipecat", 1, cmd, port, args,
                                     [int(n) for n in args.pipecat_calls.split(",") if n], False)
                largest["pipecat, 1 process"] = _largest(results)
                largest_path.write_text(json.dumps(largest, indent=2) + "\n")
    _regenerate_docs(out, Path(args.doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
