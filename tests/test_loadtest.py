"""The load tester against a real ``callengine serve`` with the stub providers.

One host process (stub STT/TTS/LLM, SQLite, admin token, Twilio signatures on)
on a free port; the real load test (``bench.loadtest.run_loadtest``, in this
trio test) places 3 calls of the default script (two turns and a barge-in) and
the report must carry every required key with numbers, and no errors. The
argument checks are tested without a host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from bench import report as rpt
from bench.loadtest import injected_delays, main, run_loadtest
from callsim.loadgen import DEFAULT_SCRIPT, ScriptError, load_script, parse_script
from engine.config import load_settings
from tests.conftest_host import ADMIN_TOKEN, TWILIO_TOKEN, HostProcess, start_host

STUB_ENV = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub"}
SCRIPTS = Path(__file__).resolve().parent.parent / "bench" / "scripts"


@pytest.fixture(scope="module")
def stub_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    h = start_host(tmp_path_factory.mktemp("stubhost"), STUB_ENV)
    try:
        yield h
    finally:
        h.stop()


def _args(**kw: object) -> argparse.Namespace:
    base = dict(url="ws://127.0.0.1:9/twilio/media", calls=1, ramp=0.0, duration=0.0, script=None, out=None,
                json=True, server_pid=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize(
    "script, message",
    [
        ({"say": "x"}, "non-empty JSON list"),
        ([{"say": ""}], "step 0: 'say'"),
        ([{"say": "hi", "pause": 1}], "exactly one of"),
        ([{"pause": -1}], "'pause' must be a number"),
        ([{"barge_in": "hi", "after_ms": "soon"}], "'after_ms'"),
        ([{"dtmf": "12"}], "'dtmf'"),
        ([{"hum": "la"}], "exactly one of"),
    ],
)
def test_bad_scripts_are_named(script: object, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        parse_script(script)


def test_script_files_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in SCRIPTS.glob("*.json"):
        assert load_script(str(path))
    assert load_script(None) is DEFAULT_SCRIPT
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    assert main(_args(script=str(bad))) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(_args(script=str(tmp_path / "missing.json"))) == 2
    assert main(_args(calls=0)) == 2
    assert main(_args(url="http://127.0.0.1:9/")) == 2
    assert "ws://" in capsys.readouterr().err


def test_injected_delays_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLENGINE_STUB_REPLY_TEXT", "One two three four. Five.")
    monkeypatch.setenv("CALLENGINE_STUB_LLM_TOKENS_PER_S", "10")
    inj = injected_delays(load_settings())
    s = load_settings()
    assert inj["first_sentence_words"] == 4
    assert inj["llm_first_sentence_ms"] == s.stub.llm_first_token_ms + 300
    assert inj["injected_turn_ms"] == s.vad.hangover_ms + inj["llm_first_sentence_ms"] + s.stub.tts_first_audio_ms
    monkeypatch.setenv("CALLENGINE_TURN_EARLY_FINALIZE", "false")
    assert injected_delays(load_settings())["turn_end_wait_ms"] == s.vad.hangover_ms + s.stub.stt_final_delay_ms


def test_sampler_walks_the_process_tree_when_due_or_when_a_process_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess

    from bench import loadtest

    monkeypatch.setattr(loadtest, "TREE_REFRESH_S", 3600.0)
    sampler = loadtest._Sampler([os.getpid()])
    sampler.prime()
    child = subprocess.Popen(["sleep", "30"])
    try:
        sampler.sample(0.5, 0)
        assert child.pid not in sampler._procs  # the tree is not walked on every sample
        monkeypatch.setattr(loadtest, "TREE_REFRESH_S", 0.0)
        sampler.sample(1.0, 0)
        assert child.pid in sampler._procs  # due: walked again, the new child is counted
        monkeypatch.setattr(loadtest, "TREE_REFRESH_S", 3600.0)
    finally:
        child.kill()
        child.wait()
    sampler.sample(1.5, 0)  # the child is gone: skipped, and the next sample walks again
    sampler.sample(2.0, 0)
    assert child.pid not in sampler._procs and os.getpid() in sampler._procs
    assert len(sampler.samples) == 4 and all(s["cpu_pct"] >= 0 for s in sampler.samples)


def test_summaries_and_docs_sections() -> None:
    s = rpt.summarize([1.0, 2.0, 3.0, None, 4.0])
    assert s["n"] == 4 and s["p50"] == 2.5 and s["max"] == 4.0 and s["p99"] <= 4.0
    assert rpt.summarize([])["p95"] is None
    doc = "intro\n<!-- bench:t:begin -->\nold\n<!-- bench:t:end -->\noutro\n"
    new = rpt.replace_section(doc, "t", "NEW")
    assert "old" not in new and "NEW" in new and new.startswith("intro") and new.endswith("outro\n")
    assert "<!-- bench:u:begin -->\nX" in rpt.replace_section(doc, "u", "X")


async def test_three_calls_against_a_stub_host(
    stub_host: HostProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
    for var in ("CALLENGINE_TURN_EARLY_FINALIZE", "CALLENGINE_STUB_REPLY_TEXT"):
        monkeypatch.delenv(var, raising=False)
    report, samples = await run_loadtest(stub_host.ws, calls=3, ramp=1.0, script=DEFAULT_SCRIPT)

    assert report["calls"] == 3
    assert report["errors"] == 0, report["call_errors"]
    assert report["violations"] == 0 and report["underruns"] == 0
    assert report["server"]["stt"] == "stub" and report["server_pids"] == [stub_host.proc.pid]
    for key in ("greeting_ms", "turn_ms", "overhead_ms", "clear_ms"):
        summary = report[key]
        assert summary["n"] >= 3, key
        for p in ("p50", "p95", "p99", "max"):
            assert isinstance(summary[p], float), (key, p)
    assert report["turn_ms"]["n"] >= 6  # two answered turns per call (plus the barge-in's reply)
    # the reply can only come after the injected delays; overhead is what is left
    assert report["turn_ms"]["p50"] > report["injected"]["injected_turn_ms"] - 60
    assert abs(report["overhead_ms"]["p50"]) < 300
    assert 0 < report["clear_ms"]["p50"] < 1000
    assert isinstance(report["cpu_pct_per_call"], float) and report["cpu_pct_per_call"] > 0
    assert isinstance(report["rss_mb_per_call"], float)
    assert report["stages_ms"]["records"] == 3 and "reply_first_frame" in report["stages_ms"]
    assert len(samples) >= 5 and max(s["active"] for s in samples) >= 1

    paths = rpt.write_outputs(report, samples, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads(paths[0].read_text())["calls"] == 3
    assert "engine overhead" in paths[1].read_text()
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plugged_in_commands_run_from_callengine(stub_host: HostProcess) -> None:
    """``call``, ``loadtest`` and ``eval`` come from callsim and bench through the
    ``callengine.commands`` entry points (the product imports neither): listed by
    ``callengine --help``, and ``callengine call`` places a real call."""
    exe = str(Path(sys.executable).parent / "callengine")
    listing = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for command in ("serve", "voice-check", "call", "loadtest", "eval"):
        assert command in listing.stdout
    env = dict(os.environ, TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    proc = subprocess.run(
        [exe, "call", "--url", stub_host.ws, "--say", "I need a plumber", "--reply-timeout", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["turns"][0]["reply_first_frame_ms"] is not None
