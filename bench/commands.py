"""``callengine loadtest`` and ``callengine eval``: the benchmarks' commands.

Registered with the ``callengine`` command through the ``callengine.commands``
entry point group (see ``pyproject.toml``), so the product never imports its
benchmarks: without this package installed the commands are simply absent.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register_loadtest", "register_eval"]


def register_loadtest(sub: Any) -> None:
    """Add ``loadtest`` to the ``callengine`` subcommands (an argparse subparsers object)."""
    lt = sub.add_parser("loadtest", help="N concurrent simulated calls; a latency report")
    lt.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media", help="the host's media WebSocket URL")
    lt.add_argument("--calls", type=int, default=10, help="calls up at once (default 10)")
    lt.add_argument("--ramp", type=float, default=5.0, help="seconds over which the calls start (default 5)")
    lt.add_argument("--duration", type=float, default=0.0, help="place calls back to back for this many seconds")
    lt.add_argument("--script", help="a JSON conversation script (default: two turns and a barge-in)")
    lt.add_argument("--out", help="write the report (JSON, Markdown, PNG) into this folder")
    lt.add_argument("--json", action="store_true", help="print the report as JSON")
    lt.add_argument("--server-pid", type=int, action="append", help="server process ids to sample (psutil)")
    lt.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> None:
    from bench.loadtest import main as loadtest_main

    raise SystemExit(loadtest_main(args))


def register_eval(sub: Any) -> None:
    """Add ``eval`` to the ``callengine`` subcommands."""
    ev = sub.add_parser(
        "eval",
        help="recorded human speech through the host: WER live and offline, turns, onsets, latency, noise",
    )
    ev.add_argument("--url", default="", help="a running host's media URL (ws://H:P/twilio/media); default: start one")
    ev.add_argument("--calls", type=int, default=3, help="concurrent calls the utterances are dealt out to (default 3)")
    ev.add_argument("--smoke", action="store_true", help="only the small subset that make test plays")
    ev.add_argument("--clip", action="append", default=[], help="only this clip id (repeatable)")
    ev.add_argument("--data", help="the data folder (default $CALLENGINE_EVAL_DATA or var/eval-data)")
    ev.add_argument("--stt", default="", help="recognizer of the started host and of the offline pass")
    ev.add_argument("--model", default="", help="whisper model for both (as CALLENGINE_WHISPER_MODEL)")
    ev.add_argument("--reply-timeout", type=float, default=20.0, help="seconds to wait for a reply before the next line")
    ev.add_argument("--gap", type=float, default=0.6, help="the caller's pause after hearing a reply, seconds")
    ev.add_argument("--no-offline", action="store_true", help="skip the offline pass of the same recognizer")
    ev.add_argument("--no-noise", action="store_true", help="skip the noise / false barge-in calls")
    ev.add_argument("--noise-dbfs", type=float, default=-30.0, help="RMS level of the noise clips, dBFS (default -30)")
    ev.add_argument("--gain-db", type=float, default=0.0, help="scale every speech clip by this many dB (-20: a quiet caller)")
    ev.add_argument("--rescore", help="score a saved eval.json again from its stored transcripts (no calls)")
    ev.add_argument("--out", help="write eval.json and eval.md into this folder")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from bench.eval import main as eval_main

    raise SystemExit(eval_main(args))
