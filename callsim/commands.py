"""``callengine call``: one simulated phone call, printed as a timeline.

Registered with the ``callengine`` command through the ``callengine.commands``
entry point group (see ``pyproject.toml``): the application does not import the
simulated caller; the caller plugs its command in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``call`` to the ``callengine`` subcommands (an argparse subparsers object)."""
    c = sub.add_parser("call", help="one simulated phone call over the real Twilio WebSocket protocol")
    c.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media", help="the host's media WebSocket URL")
    c.add_argument("--say", action="append", help="a line the caller says (repeatable, in order)")
    c.add_argument("--barge-in", help="after the last reply starts, talk over it with this line")
    c.add_argument("--barge-in-after-ms", type=int, default=600, help="agent audio heard before the barge-in (ms)")
    c.add_argument("--dtmf", help="digits to press at the end")
    c.add_argument("--pause", type=float, default=0.0, help="seconds of silence before hanging up")
    c.add_argument("--voice", default="en-us", help="espeak-ng voice for the caller")
    c.add_argument("--business", help="business id (else chosen by --to)")
    c.add_argument("--from", dest="from_number", default="+15551230000", help="the caller's number")
    c.add_argument("--to", dest="to_number", default="", help="the number called")
    c.add_argument("--reply-timeout", type=float, default=15.0, help="seconds to wait for each reply")
    c.add_argument("--timeout", type=float, default=180.0, help="seconds the whole call may take")
    c.add_argument("--admin-url", default="http://127.0.0.1:8080", help="print the stored transcript from here")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_call)


def cmd_call(args: argparse.Namespace) -> None:
    import trio

    from callsim.caller import SimulatedCaller
    from callsim.script import BargeIn, Pause, PressKey, Say, WaitForReply
    from callsim.timeline import render_timeline

    steps: list = []
    for item in args.say or []:
        steps.append(Say(text=item, voice=args.voice))
        steps.append(WaitForReply(timeout=args.reply_timeout))
    if args.barge_in:
        steps.append(BargeIn(after_ms=args.barge_in_after_ms, text=args.barge_in, voice=args.voice))
        steps.append(WaitForReply(timeout=args.reply_timeout))
    for digit in args.dtmf or "":
        steps.append(PressKey(digit=digit))
    if args.pause:
        steps.append(Pause(seconds=args.pause))
    params = {"from": args.from_number, "to": args.to_number}
    if args.business:
        params["business"] = args.business
    caller = SimulatedCaller(
        args.url,
        steps,
        custom_parameters=params,
        auth_token=os.environ.get("TWILIO_AUTH_TOKEN") or None,
        call_timeout=args.timeout,
    )
    result = trio.run(caller.run)
    if args.json:
        sys.stdout.write(json.dumps(_result_json(result), indent=2) + "\n")
    else:
        sys.stdout.write(render_timeline(result) + "\n")
        if args.admin_url:
            _print_transcript(args.admin_url, result.call_sid)
    raise SystemExit(0 if result.ok else 1)


def _result_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "call_sid": result.call_sid,
        "ok": result.ok,
        "greeting_first_frame_ms": result.greeting_first_frame_ms,
        "turns": [
            {
                "label": t.label,
                "barge_in": t.barge_in,
                "speech_end_ms": t.speech_end_ms,
                "reply_first_frame_ms": t.reply_first_frame_ms,
                "reply_latency_ms": t.reply_latency_ms,
                "clear_ms": t.clear_ms,
            }
            for t in result.turns
        ],
        "underruns": result.underruns,
        "closed_by_server": result.closed_by_server,
        "errors": result.errors,
        "violations": dict(result.violations),
    }


def _print_transcript(admin_url: str, call_sid: str) -> None:
    """Fetch the call record from the host's admin API and print the transcript."""
    token = os.environ.get("CALLENGINE_ADMIN_TOKEN", "")
    if not token:
        sys.stdout.write("(set CALLENGINE_ADMIN_TOKEN to print the stored transcript)\n")
        return
    url = admin_url.rstrip("/") + f"/admin/calls/{call_sid}"
    data = None
    for _ in range(20):  # the record is written behind; give it a moment
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                data = json.loads(resp.read())
        except Exception:  # noqa: BLE001 - a missing record is reported below
            data = None
        if data and data.get("state") == "ended" and data.get("turns"):
            break
        time.sleep(0.25)
    if not data:
        sys.stdout.write("(call record not found)\n")
        return
    sys.stdout.write("\ntranscript:\n")
    for turn in data.get("turns", []):
        flag = " [interrupted]" if turn.get("interrupted") else ""
        sys.stdout.write(f"  caller: {turn.get('transcript', '')}\n  agent:  {turn.get('reply', '')}{flag}\n")
        stamps = turn.get("stamps") or {}
        if "speech_end" in stamps and "reply_first_frame" in stamps:
            sys.stdout.write(
                f"          (end of speech -> first reply frame: {stamps['reply_first_frame'] - stamps['speech_end']:.0f} ms)\n"
            )
    for lead in data.get("leads", []):
        sys.stdout.write(f"lead: {json.dumps(lead.get('fields', {}), ensure_ascii=False)}\n")
