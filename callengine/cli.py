"""The ``callengine`` command: ``serve``, ``voice-check``, and the commands plugged in.

``serve`` validates everything it can before binding a socket (settings,
business profiles), so a typo is reported with its key and file and the process
exits with status 2 instead of serving a broken line.

The public port is served by the front listener (``engine.front``: the media
WebSocket itself, everything else relayed to hypercorn on a private port;
``callengine.serving``). With ``--workers 1`` the app runs in this process under
``trio.run`` with a signal-driven shutdown trigger that drains the host first
(``engine.drain``); with ``--workers N`` the runner (``callengine.workers``)
spawns N worker processes sharing the listening socket, each with its own
front and hypercorn, and turns SIGTERM/SIGINT into a shutdown of all of them,
each draining first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from importlib.metadata import entry_points
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

    from callengine.serving import listen_socket

    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        _die(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")

    if settings.workers <= 1:
        import trio

        from engine.drain import shutdown_trigger
        from callengine.host import create_app
        from callengine.serving import serve

        app = create_app(settings)
        # SIGTERM/SIGINT drain the host (engine.drain) before it stops listening.
        trio.run(serve, app, settings, sock, shutdown_trigger(app))
        return

    from callengine.workers import run_workers

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="callengine-metrics-"))
    # Every worker drains its own calls; the runner waits for all of them.
    raise SystemExit(run_workers(sock, settings.workers, settings.drain.timeout_s + settings.drain.closing_grace_s + 20.0))


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

    # Commands of packages apart from the product (the simulated caller's
    # ``call``, the benchmarks' ``loadtest`` and ``eval``) plug themselves in.
    for entry in sorted(entry_points(group="callengine.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
