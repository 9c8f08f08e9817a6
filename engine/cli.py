"""The ``callengine`` command: ``serve``, ``call``, ``loadtest``, ``eval``.

``serve`` validates everything it can before binding a socket (settings,
business profiles), so a typo is reported with its key and file and the process
exits with status 2 instead of serving a broken line.

With ``--workers 1`` the app runs in this process under ``trio.run`` with a
signal-driven shutdown trigger that drains the host first (``engine.drain``:
hypercorn's ``serve`` handles no signals itself); with ``--workers N``
hypercorn's multi-process runner spawns N trio workers, each loading
``engine.host:create_app()``, and turns SIGTERM/SIGINT into a shutdown of all
of them, each draining first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from functools import partial
from typing import Sequence

__all__ = ["main"]


def _die(msg: str, code: int = 2) -> None:
    sys.stderr.write(f"callengine: {msg}\n")
    raise SystemExit(code)


async def wait_for_signal() -> None:
    """A hypercorn ``shutdown_trigger``: returns on the first SIGTERM or SIGINT."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def cmd_serve(args: argparse.Namespace) -> None:
    from engine.business import BusinessError, load_businesses
    from engine.config import ConfigError, load_settings

    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = load_settings(args.config, overrides=overrides)
        load_businesses(settings.businesses_path)
    except (ConfigError, BusinessError) as exc:
        _die(str(exc))
    if settings.stt in ("whisper", "google"):  # Google falls back to the embedded recognizer
        from engine.providers.base import ProviderError
        from engine.providers.whisper_model import resolve_model

        try:
            resolve_model(settings.whisper.model)  # a stat: a model never set up stops here, in one line
        except ProviderError as exc:
            _die(str(exc))
    # Worker processes re-read settings from the environment: pass the flags on.
    os.environ["CALLENGINE_HOST"] = settings.host
    os.environ["CALLENGINE_PORT"] = str(settings.port)
    if args.config:
        os.environ["CALLENGINE_CONFIG"] = os.path.abspath(args.config)
    if settings.whatsapp.start_sidecar and not settings.secret("sidecar_secret"):
        # The host and the sidecar it starts share this secret: made here, before
        # any worker starts, and handed to both, so nobody has to copy it.
        import secrets

        os.environ["CALLENGINE_SIDECAR_SECRET"] = secrets.token_urlsafe(32)
        settings = load_settings(args.config, overrides=overrides)

    from hypercorn.config import Config

    hc = Config()
    hc.bind = [f"{settings.host}:{settings.port}"]
    hc.worker_class = "trio"
    hc.graceful_timeout = 15.0
    hc.keep_alive_timeout = 30.0
    # The transport counts and drops messages over max_message_bytes itself; a
    # larger hypercorn limit keeps an oversized message from closing the call.
    hc.websocket_max_message_size = max(16 * settings.max_message_bytes, 1 << 20)
    hc.accesslog = None
    hc.errorlog = "-"
    hc.loglevel = settings.log_level

    if settings.workers <= 1:
        import trio
        from hypercorn.trio.run import worker_serve
        from hypercorn.utils import wrap_app

        from engine.drain import shutdown_trigger
        from engine.host import create_app

        app = create_app(settings)
        # SIGTERM/SIGINT drain the host (engine.drain) before hypercorn stops listening.
        trio.run(partial(worker_serve, wrap_app(app, 1 << 20, None), hc, shutdown_trigger=shutdown_trigger(app)))
        return

    from engine.workers import run_workers

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="callengine-metrics-"))
    hc.workers = settings.workers
    hc.application_path = "engine.host:create_app()"
    # Every worker drains its own calls; the runner waits for all of them.
    raise SystemExit(run_workers(hc, settings.drain.timeout_s + settings.drain.closing_grace_s + 20.0))


def cmd_call(args: argparse.Namespace) -> None:
    import trio

    from transports.caller import BargeIn, Pause, PressKey, Say, SimulatedCaller, WaitForReply, render_timeline

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
    import time
    import urllib.request

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


def cmd_loadtest(args: argparse.Namespace) -> None:
    from bench.loadtest import main as loadtest_main

    raise SystemExit(loadtest_main(args))


def cmd_eval(args: argparse.Namespace) -> None:
    from bench.eval import main as eval_main

    raise SystemExit(eval_main(args))


def cmd_voice_check(args: argparse.Namespace) -> None:
    from engine.voice_check import main as voice_check_main

    raise SystemExit(voice_check_main(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callengine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the HTTP/WebSocket host")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.add_argument("--config", help="an extra TOML file over config/default.toml")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("call", help="one simulated phone call over the real Twilio WebSocket protocol")
    c.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media")
    c.add_argument("--say", action="append", help="a line the caller says (repeatable, in order)")
    c.add_argument("--barge-in", help="after the last reply starts, talk over it with this line")
    c.add_argument("--barge-in-after-ms", type=int, default=600)
    c.add_argument("--dtmf", help="digits to press at the end")
    c.add_argument("--pause", type=float, default=0.0, help="seconds of silence before hanging up")
    c.add_argument("--voice", default="en-us", help="espeak-ng voice for the caller")
    c.add_argument("--business", help="business id (else chosen by --to)")
    c.add_argument("--from", dest="from_number", default="+15551230000")
    c.add_argument("--to", dest="to_number", default="")
    c.add_argument("--reply-timeout", type=float, default=15.0)
    c.add_argument("--timeout", type=float, default=180.0)
    c.add_argument("--admin-url", default="http://127.0.0.1:8080", help="print the stored transcript from here")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_call)

    lt = sub.add_parser("loadtest", help="N concurrent simulated calls; a latency report")
    lt.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media")
    lt.add_argument("--calls", type=int, default=10)
    lt.add_argument("--ramp", type=float, default=5.0)
    lt.add_argument("--duration", type=float, default=0.0)
    lt.add_argument("--script")
    lt.add_argument("--out")
    lt.add_argument("--json", action="store_true")
    lt.add_argument("--server-pid", type=int, action="append", help="server process ids to sample (psutil)")
    lt.set_defaults(func=cmd_loadtest)

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
    ev.add_argument("--rescore", help="score a saved eval.json again from its stored transcripts (no calls)")
    ev.add_argument("--out", help="write eval.json and eval.md into this folder")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    ev.set_defaults(func=cmd_eval)

    vc = sub.add_parser(
        "voice-check",
        help="speak a business's lines through its TTS and μ-law, transcribe them back, report intelligibility",
    )
    vc.add_argument("--business", required=True, help="business id (a profile in config/businesses)")
    vc.add_argument("--tts", help="TTS provider to check (default: the configured one, CALLENGINE_TTS)")
    vc.add_argument("--language", help="BCP-47 language of the lines (default: the business's language)")
    vc.add_argument(
        "--stt-model", help="CTranslate2 whisper model directory to listen with (default: the configured one)"
    )
    vc.add_argument("--config", help="an extra TOML file over config/default.toml")
    vc.add_argument("--json", action="store_true", help="print the result as JSON")
    vc.add_argument(
        "--max-error", type=float, help="exit 1 when the total WER/CER (percent) is above this"
    )
    vc.set_defaults(func=cmd_voice_check)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
