"""The operator console: static files served by the host at ``GET /`` and ``/console/*``.

The console is plain HTML, CSS and JavaScript modules in this folder (no build
step, no CDN; the one library it uses, a QR encoder, is vendored under
``vendor/`` with its licence). It holds no data itself: the browser reads the
admin API with the admin token the operator types in, so the page is public
and everything behind it is not.

Files are read from this folder only: a name that leaves it, or whose type is
not one of :data:`TYPES`, is a 404. Responses carry a Content-Security-Policy
that allows scripts from this origin only (transcripts and chat messages are
shown as text, and even a mistake there could not run a script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Response

__all__ = ["FOLDER", "TYPES", "register_routes"]

FOLDER = Path(__file__).resolve().parent

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' ws: wss:; media-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _file(name: str) -> Response:
    path = (FOLDER / name).resolve()
    ctype = TYPES.get(path.suffix)
    if ctype is None or not path.is_relative_to(FOLDER) or not path.is_file():
        return Response("not found", status=404, content_type="text/plain")
    resp = Response(path.read_bytes(), content_type=ctype)
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def register_routes(app: Any) -> None:
    """Add ``GET /`` (the console page) and ``GET /console/<file>`` (its assets)."""

    @app.get("/")
    async def console_page() -> Any:
        return _file("index.html")

    @app.get("/console/<path:name>")
    async def console_asset(name: str) -> Any:
        return _file(name)
