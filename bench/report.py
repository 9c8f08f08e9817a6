"""Load-test reports: the summary dict, Markdown, a PNG, and the tables of ``docs/benchmarks.md``.

Pure functions over plain data (``CallResult``s, psutil samples, admin records),
run on whichever thread calls them; only :func:`plot` and :func:`write_outputs`
touch the file system, and matplotlib is imported lazily with the ``Agg``
backend so a headless machine never needs a display.

The report's top level (stable keys; the tests check them): ``calls``,
``errors``, ``violations``, ``underruns``, ``greeting_ms``, ``turn_ms``,
``overhead_ms``, ``clear_ms`` (each ``{n, p50, p95, p99, max, mean}``, values
``None`` when nothing was measured), ``cpu_pct_per_call``, ``rss_mb_per_call``,
``injected``, ``server`` (``GET /healthz``), ``call_errors``, ``stages_ms``,
``targets``. Percentiles are numpy's linear interpolation over all samples.

``python -m bench.report docs DOC REPORT.json...`` regenerates the text between
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` markers in DOC.
"""

from __future__ import annotations

import collections
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "TARGETS",
    "summarize",
    "build_report",
    "render_markdown",
    "plot",
    "write_outputs",
    "results_table",
    "replace_section",
]

#: The targets for 50 calls on 2 cores with stub providers (docs/benchmarks.md).
TARGETS = {
    "overhead_p99_ms": 20.0,
    "greeting_p95_ms": 100.0,
    "clear_p95_ms": 150.0,
}

STAGES = ("stt_first_partial", "speech_end_seen", "stt_final", "llm_start", "llm_first_token", "tts_first_audio", "reply_first_frame")


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """``{n, p50, p95, p99, max, mean}`` of the non-None values (ms, 1 decimal)."""
    data = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {
        "n": int(data.size),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(data.max()), 1),
        "mean": round(float(data.mean()), 1),
    }


def _load_stats(samples: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """CPU and RSS per call over the samples taken at (near) full load.

    "Full load" = samples with at least half the peak number of live calls; per
    call = each sample's CPU divided by its live calls, averaged. RSS per call =
    (peak RSS - the idle baseline sample) / peak live calls.
    """
    if not samples:
        return {"cpu_pct_per_call": None, "rss_mb_per_call": None, "samples": 0}
    base = samples[0]
    peak_active = max(s["active"] for s in samples)
    loaded = [s for s in samples if peak_active and s["active"] >= max(1, peak_active / 2)]
    cpu_per_call = [s["cpu_pct"] / s["active"] for s in loaded]
    rss_peak = max(s["rss_mb"] for s in samples)
    return {
        "cpu_pct_per_call": round(float(np.mean(cpu_per_call)), 2) if cpu_per_call else None,
        "rss_mb_per_call": round((rss_peak - base["rss_mb"]) / peak_active, 2) if peak_active else None,
        "cpu_pct_mean_loaded": round(float(np.mean([s["cpu_pct"] for s in loaded])), 1) if loaded else None,
        "cpu_pct_peak": max(s["cpu_pct"] for s in samples),
        "rss_mb_base": base["rss_mb"],
        "rss_mb_peak": rss_peak,
        "loadgen_cpu_pct": round(float(np.mean([s["loadgen_cpu_pct"] for s in loaded])), 1) if loaded else None,
        "peak_active_calls": peak_active,
        "samples": len(samples),
    }


def _stages(records: Mapping[str, Any], injected_turn_ms: float | None) -> dict[str, Any]:
    """Per-stage times (server stamps, ms after the server's ``speech_end``) for completed turns."""
    per_stage: dict[str, list[float]] = collections.defaultdict(list)
    server_turn: list[float] = []
    for rec in records.values():
        if not rec:
            continue
        for turn in rec.get("turns") or []:
            stamps = turn.get("stamps") or {}
            end = stamps.get("speech_end")
            if end is None or turn.get("interrupted"):
                continue
            for name in STAGES:
                if name in stamps:
                    per_stage[name].append(stamps[name] - end)
            if "reply_first_frame" in stamps:
                server_turn.append(stamps["reply_first_frame"] - end)
    out: dict[str, Any] = {name: summarize(per_stage[name]) for name in STAGES if per_stage[name]}
    if server_turn:
        out["server_turn_ms"] = summarize(server_turn)
        if injected_turn_ms is not None:
            out["server_overhead_ms"] = summarize(v - injected_turn_ms for v in server_turn)
    out["records"] = sum(1 for r in records.values() if r)
    return out


def build_report(
    *,
    results: Sequence[Any],
    samples: Sequence[Mapping[str, float]],
    records: Mapping[str, Any],
    injected: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The report dict (see the module docstring) from ``CallResult``s and samples."""
    injected_turn = injected.get("injected_turn_ms") if isinstance(injected, Mapping) else None
    greeting = [r.greeting_first_frame_ms for r in results]
    turn_ms: list[float] = []
    clear_ms: list[float] = []
    for r in results:
        for t in r.turns:
            if t.reply_latency_ms is not None:
                turn_ms.append(t.reply_latency_ms)
            if t.barge_in and t.clear_ms is not None:
                clear_ms.append(t.clear_ms)
    barge_ins = sum(1 for r in results for t in r.turns if t.barge_in)
    violations: collections.Counter = collections.Counter()
    for r in results:
        violations.update(r.violations)
    failed = [r for r in results if not r.ok]
    error_kinds: collections.Counter = collections.Counter(e for r in failed for e in (r.errors or ["not connected"]))
    load = _load_stats(samples)
    overhead = [v - injected_turn for v in turn_ms] if injected_turn is not None else []
    report: dict[str, Any] = {
        **{k: v for k, v in meta.items() if k not in ("server",)},
        "calls": len(results),
        "errors": len(failed),
        "violations": int(sum(violations.values())),
        "violations_by_kind": dict(violations),
        "underruns": int(sum(r.underruns for r in results)),
        "late_frames": int(sum(r.late_frames for r in results)),
        "late_frames_pct": round(100.0 * sum(r.late_frames for r in results)
                                 / max(1, sum(r.frames_sent for r in results)), 2),
        "closed_by_server": sum(1 for r in results if r.closed_by_server),
        "barge_ins": barge_ins,
        "clears": sum(len(r.clears_received) for r in results),
        "greeting_ms": summarize(greeting),
        "turn_ms": summarize(turn_ms),
        "overhead_ms": summarize(overhead),
        "clear_ms": summarize(clear_ms),
        "cpu_pct_per_call": load["cpu_pct_per_call"],
        "rss_mb_per_call": load["rss_mb_per_call"],
        "load": load,
        "injected": dict(injected),
        "server": meta.get("server"),
        "stages_ms": _stages(records, injected_turn),
        "error_kinds": dict(error_kinds.most_common(20)),
        "call_errors": [{"call_sid": r.call_sid, "errors": list(r.errors) or ["not connected"]} for r in failed[:50]],
        "values": {
            "greeting_ms": [round(v, 1) for v in greeting if v is not None],
            "turn_ms": [round(v, 1) for v in turn_ms],
            "overhead_ms": [round(v, 1) for v in overhead],
            "clear_ms": [round(v, 1) for v in clear_ms],
        },
    }
    report["targets"] = check_targets(report)
    return report


def check_targets(report: Mapping[str, Any]) -> dict[str, Any]:
    """Each target with its measured value and whether it was met (None: not measured)."""

    def le(value: Any, limit: float) -> bool | None:
        return None if value is None else bool(value <= limit)

    checks = {
        "no_errors": report["errors"] == 0,
        "no_violations": report["violations"] == 0,
        "no_underruns": report["underruns"] == 0,
        "overhead_p99_ms": le(report["overhead_ms"]["p99"], TARGETS["overhead_p99_ms"]),
        "greeting_p95_ms": le(report["greeting_ms"]["p95"], TARGETS["greeting_p95_ms"]),
        "clear_p95_ms": le(report["clear_ms"]["p95"], TARGETS["clear_p95_ms"]),
    }
    # A load generator that cannot keep its own 20 ms clock measures itself, not the
    # server: its frames (and so the speech end the server sees) go out late.
    valid = report.get("late_frames_pct", 0.0) <= 1.0
    return {"checks": checks, "met": all(v is True for v in checks.values()), "loadgen_ok": valid}


# ------------------------------------------------------------------ rendering


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """A human-readable report (Markdown)."""
    server = report.get("server") or {}
    inj = report.get("injected") or {}
    lines = [
        f"# Load test: {report.get('concurrency')} concurrent calls ({report['calls']} placed)",
        "",
        f"- url `{report.get('url')}`, ramp {report.get('ramp_s')} s, duration {report.get('duration_s')} s, "
        f"elapsed {report.get('elapsed_s')} s",
        f"- server: stt={server.get('stt')} tts={server.get('tts')} llm={server.get('llm')} "
        f"pids {report.get('server_pids')}; {report.get('cpu_count')} CPUs, load before {report.get('loadavg_before')}",
        f"- injected per turn: {inj.get('injected_turn_ms')} ms (hangover {inj.get('vad_hangover_ms')}, "
        f"final delay {inj.get('stt_final_delay_ms')} [{'off the path: early finalize' if inj.get('early_finalize') else 'on the path'}], "
        f"LLM first sentence {inj.get('llm_first_sentence_ms')}, TTS first audio {inj.get('tts_first_audio_ms')})",
        f"- errors {report['errors']}, protocol violations {report['violations']}, underruns {report['underruns']}, "
        f"late caller frames {report.get('late_frames')} ({report.get('late_frames_pct')} %"
        f"{'' if report['targets'].get('loadgen_ok', True) else ': LOAD GENERATOR SATURATED, latencies are inflated'}), barge-ins {report.get('barge_ins')} / clears {report.get('clears')}",
        f"- server CPU per call {_f(report['cpu_pct_per_call'], ' %')} of a core, RSS per call "
        f"{_f(report['rss_mb_per_call'], ' MB')}; load generator {_f(report['load'].get('loadgen_cpu_pct'), ' %')}",
        "",
        "| metric (ms) | n | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("greeting_ms", "greeting first frame"),
        ("turn_ms", "turn: speech end → reply"),
        ("overhead_ms", "engine overhead"),
        ("clear_ms", "barge-in → clear"),
    ):
        s = report[key]
        lines.append(f"| {label} | {s['n']} | {_f(s['p50'])} | {_f(s['p95'])} | {_f(s['p99'])} | {_f(s['max'])} |")
    stages = report.get("stages_ms") or {}
    if any(name in stages for name in STAGES):
        lines += ["", "Server stamps, ms after the server's speech_end (completed turns):", "",
                  "| stage | n | p50 | p95 | p99 |", "|---|---:|---:|---:|---:|"]
        for name in (*STAGES, "server_turn_ms", "server_overhead_ms"):
            if name in stages:
                s = stages[name]
                lines.append(f"| {name} | {s['n']} | {_f(s['p50'])} | {_f(s['p95'])} | {_f(s['p99'])} |")
    checks = report["targets"]["checks"]
    lines += ["", "Targets: " + ", ".join(f"{k} {'✓' if v else ('–' if v is None else '✗')}" for k, v in checks.items())]
    if report.get("error_kinds"):
        lines += ["", "Errors:"] + [f"- {n} × {msg}" for msg, n in report["error_kinds"].items()]
    return "\n".join(lines)


def plot(report: Mapping[str, Any], samples: Sequence[Mapping[str, float]], values: Mapping[str, Sequence[float]],
         path: Path) -> None:
    """A PNG: latency distributions, the per-stage waterfall, and CPU/RSS over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    names = [k for k in ("greeting_ms", "turn_ms", "overhead_ms", "clear_ms") if values.get(k)]
    if names:
        ax.boxplot([values[k] for k in names], tick_labels=[k.replace("_ms", "") for k in names], whis=(1, 99),
                   showfliers=True)
    ax.set_ylabel("ms")
    ax.set_title(f"latency, {report.get('concurrency')} calls (whiskers p1–p99)")
    ax.grid(alpha=0.3)

    ax = axes[1]
    stages = report.get("stages_ms") or {}
    present = [n for n in STAGES if n in stages]
    if present:
        prev = 0.0
        for i, name in enumerate(present):
            p50 = stages[name]["p50"] or 0.0
            p95 = stages[name]["p95"] or 0.0
            ax.barh(i, max(p50 - prev, 1.0), left=prev, color="tab:blue")
            ax.plot([p50, p95], [i, i], color="tab:red", lw=2)
            prev = max(prev, p50)
        ax.set_yticks(range(len(present)), present)
        ax.invert_yaxis()
        ax.set_xlabel("ms after speech_end (bar: p50 step, red: to p95)")
    else:
        ax.text(0.5, 0.5, "no server stamps\n(set CALLENGINE_ADMIN_TOKEN)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title("per-stage waterfall (server stamps)")
    ax.grid(alpha=0.3)

    ax = axes[2]
    if samples:
        t = [s["t"] for s in samples]
        ax.plot(t, [s["cpu_pct"] for s in samples], label="server CPU %")
        ax.plot(t, [s["loadgen_cpu_pct"] for s in samples], label="load generator CPU %", alpha=0.7)
        ax.plot(t, [s["active"] for s in samples], label="live calls")
        ax2 = ax.twinx()
        ax2.plot(t, [s["rss_mb"] for s in samples], color="tab:gray", ls="--", label="server RSS MB")
        ax2.set_ylabel("RSS MB")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("s")
    ax.set_title("load")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(report: dict[str, Any], samples: Sequence[Mapping[str, float]], out: Path) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``samples.json`` and ``report.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "samples.json", out / "report.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(report) + "\n", encoding="utf-8")
    paths[2].write_text(json.dumps(list(samples)) + "\n", encoding="utf-8")
    plot(report, samples, report.get("values") or {}, paths[3])
    return paths


# ------------------------------------------------------------------ docs tables


def results_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown row per report: the numbers docs/benchmarks.md shows."""
    head = (
        "| peer | workers | calls | errors | viol. | underruns | greeting p95 | turn p50 | turn p99 | "
        "overhead p50 | overhead p99 | clear p95 | CPU %/call | RSS MB/call | loadgen CPU % | late frames % | targets |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = [head]
    for r in reports:
        label = r.get("label") or {}
        rows.append(
            f"| {label.get('peer', 'callengine')} | {label.get('workers', '–')} | {r.get('concurrency')} | {r['errors']} | "
            f"{r['violations']} | {r['underruns']} | {_f(r['greeting_ms']['p95'])} | {_f(r['turn_ms']['p50'])} | "
            f"{_f(r['turn_ms']['p99'])} | {_f(r['overhead_ms']['p50'])} | {_f(r['overhead_ms']['p99'])} | "
            f"{_f(r['clear_ms']['p95'])} | {_f(r['cpu_pct_per_call'])} | {_f(r['rss_mb_per_call'])} | "
            f"{_f(r['load'].get('loadgen_cpu_pct'))} | {_f(r.get('late_frames_pct'))} | "
            f"{'met' if r['targets']['met'] else 'missed'} |"
        )
    return "\n".join(rows)


def replace_section(doc: str, name: str, body: str) -> str:
    """Replace the text between ``<!-- bench:NAME:begin -->`` and ``... :end -->``
    (appending the section at the end when the markers are missing)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        return f"{head}{begin}\n{body}\n{end}{tail}"
    return f"{doc.rstrip()}\n\n{begin}\n{body}\n{end}\n"


def _cli(argv: Sequence[str]) -> int:
    if len(argv) < 3 or argv[0] != "docs":
        sys.stderr.write("usage: python -m bench.report docs DOC.md SECTION REPORT.json [REPORT.json ...]\n")
        return 2
    doc_path, section, files = Path(argv[1]), argv[2], argv[3:]
    reports = []
    for f in files:
        try:
            report = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            sys.stderr.write(f"skipping {f}: {exc}\n")
            continue
        label_file = Path(f).with_name("label.json")
        if label_file.exists():
            report["label"] = json.loads(label_file.read_text(encoding="utf-8"))
        reports.append(report)
    doc = doc_path.read_text(encoding="utf-8") if doc_path.exists() else "# Benchmarks\n"
    doc_path.write_text(replace_section(doc, section, results_table(reports)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli(sys.argv[1:]))
