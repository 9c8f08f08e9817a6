"""The load generator: N simulated callers from one conversation script.

A script is a JSON list of steps (``say``, ``pause``, ``wait_reply``,
``barge_in``, ``dtmf``), validated by :func:`parse_script` before anything starts.
:func:`synthesize_script` speaks every distinct line once (espeak-ng, on worker
threads) and hands all callers the same μ-law bytes, so a line is synthesized, cut
into frames and measured once per process. :func:`place_calls` runs N call slots
started evenly over a ramp; each slot places calls back to back until its deadline,
so about N calls are up at once. What is measured on the server side (CPU, the
stored stamps, the report) is the benchmarks' business (``bench.loadtest``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from callsim.caller import SimulatedCaller
from callsim.script import BargeIn, CallResult, Pause, PressKey, Say, Step, WaitForReply
from callsim.voice import VoiceUnavailable, synthesize_line

__all__ = [
    "CALL_TIMEOUT_S",
    "DEFAULT_SCRIPT",
    "LoadState",
    "ScriptError",
    "load_script",
    "parse_script",
    "place_calls",
    "script_labels",
    "synthesize_script",
]

CALL_TIMEOUT_S = 120.0

#: Two turns and a barge-in on the second reply.
DEFAULT_SCRIPT: list[dict[str, Any]] = [
    {"say": "I need a plumber for a leaking pipe."},
    {"wait_reply": 10},
    {"pause": 0.5},
    {"say": "Can you come tomorrow morning?"},
    {"barge_in": "Wait, one more thing.", "after_ms": 500},
    {"wait_reply": 10},
]


class ScriptError(ValueError):
    """A conversation script is malformed; the message names the step."""


# ------------------------------------------------------------------ the script


@dataclass(frozen=True, slots=True)
class _Line:
    text: str
    voice: str
    rate_wpm: int


def _num(step: dict[str, Any], key: str, i: int, default: float | None = None, *, minimum: float = 0.0) -> float:
    value = step.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ScriptError(f"step {i}: {key!r} must be a number >= {minimum}, got {value!r}")
    return float(value)


def _text(step: dict[str, Any], key: str, i: int) -> str:
    value = step.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ScriptError(f"step {i}: {key!r} must be a non-empty string, got {value!r}")
    return value


def parse_script(data: Any) -> list[dict[str, Any]]:
    """Validate a script (a JSON list of step objects) and return it unchanged.

    Steps: ``{"say": TEXT}``, ``{"pause": SECONDS}``, ``{"wait_reply": TIMEOUT_S}``,
    ``{"barge_in": TEXT, "after_ms": MS}``, ``{"dtmf": DIGIT}``; ``say`` and
    ``barge_in`` also take ``voice`` (espeak-ng) and ``rate_wpm``. Raises
    :class:`ScriptError` naming the first bad step.
    """
    if not isinstance(data, list) or not data:
        raise ScriptError("a script is a non-empty JSON list of steps")
    kinds = ("say", "pause", "wait_reply", "barge_in", "dtmf")
    for i, step in enumerate(data):
        if not isinstance(step, dict):
            raise ScriptError(f"step {i}: expected an object, got {step!r}")
        present = [k for k in kinds if k in step]
        if len(present) != 1:
            raise ScriptError(f"step {i}: needs exactly one of {', '.join(kinds)}, got keys {sorted(step)}")
        kind = present[0]
        if kind in ("say", "barge_in"):
            _text(step, kind, i)
            if "voice" in step:
                _text(step, "voice", i)
            if "rate_wpm" in step:
                _num(step, "rate_wpm", i, minimum=80)
            if kind == "barge_in":
                _num(step, "after_ms", i, 300)
                _num(step, "timeout", i, 10.0, minimum=0.1)
        elif kind == "pause":
            _num(step, "pause", i)
        elif kind == "wait_reply":
            _num(step, "wait_reply", i, minimum=0.1)
        elif kind == "dtmf":
            digit = step["dtmf"]
            if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#":
                raise ScriptError(f"step {i}: 'dtmf' must be one of 0-9 * #, got {digit!r}")
    return data


def load_script(path: str | None) -> list[dict[str, Any]]:
    """The script in ``path`` (JSON), or :data:`DEFAULT_SCRIPT`."""
    if not path:
        return DEFAULT_SCRIPT
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ScriptError(f"script {path} is not JSON: {exc}") from exc
    return parse_script(data)


def _lines(script: list[dict[str, Any]]) -> dict[int, _Line]:
    out: dict[int, _Line] = {}
    for i, step in enumerate(script):
        for kind in ("say", "barge_in"):
            if kind in step:
                out[i] = _Line(step[kind], step.get("voice", "en-us"), int(step.get("rate_wpm", 160)))
    return out


async def synthesize_script(script: list[dict[str, Any]]) -> list[Step]:
    """Synthesize every distinct line once (espeak-ng, on worker threads) and build the steps."""
    lines = _lines(script)
    audio: dict[_Line, bytes] = {}
    for line in set(lines.values()):
        try:
            audio[line] = await trio.to_thread.run_sync(synthesize_line, line.text, line.voice, line.rate_wpm)
        except (VoiceUnavailable, ValueError) as exc:
            raise ScriptError(f"cannot synthesize {line.text!r}: {exc}") from exc
    steps: list[Step] = []
    for i, step in enumerate(script):
        if "say" in step:
            steps.append(Say(audio=audio[lines[i]]))
        elif "barge_in" in step:
            steps.append(
                BargeIn(
                    after_ms=int(step.get("after_ms", 300)),
                    audio=audio[lines[i]],
                    timeout=float(step.get("timeout", 10.0)),
                )
            )
        elif "pause" in step:
            steps.append(Pause(seconds=float(step["pause"])))
        elif "wait_reply" in step:
            steps.append(WaitForReply(timeout=float(step["wait_reply"])))
        elif "dtmf" in step:
            steps.append(PressKey(digit=step["dtmf"]))
    return steps


def script_labels(script: list[dict[str, Any]]) -> list[str]:
    return [step.get("say") or step.get("barge_in") for step in script if "say" in step or "barge_in" in step]



# ------------------------------------------------------------------ the calls


@dataclass
class LoadState:
    """Calls up now, calls started, and every finished call's result (one trio thread)."""

    active: int = 0
    results: list[CallResult] = field(default_factory=list)
    started: int = 0


async def _slot(url: str, steps: list[Step], index: int, start_at: float, until: float, state: LoadState) -> None:
    await trio.sleep_until(start_at)
    n = 0
    while True:
        caller = SimulatedCaller(
            url,
            steps,
            custom_parameters={"from": f"+1555{index:04d}{n:03d}"[:12], "to": ""},
            keep_audio=False,
            call_timeout=CALL_TIMEOUT_S,
            auth_token=os.environ.get("TWILIO_AUTH_TOKEN") or None,
        )
        state.active += 1
        state.started += 1
        try:
            result = await caller.run()
        finally:
            state.active -= 1
        state.results.append(result)
        n += 1
        if trio.current_time() >= until:
            return



async def place_calls(url: str, steps: list[Step], *, calls: int, ramp: float, until: float, state: LoadState) -> None:
    """``calls`` slots started evenly over ``ramp`` seconds; returns when every slot
    has finished its last call (the first call that ends after ``until``)."""
    async with trio.open_nursery() as nursery:
        for i in range(calls):
            start_at = trio.current_time() + (ramp * i / calls if calls > 1 else 0.0)
            nursery.start_soon(_slot, url, steps, i, start_at, until, state)
