"""The admin API's one bearer check, shared by every ``/admin/...`` route.

Admin routes answer 401 unless ``Authorization: Bearer <CALLENGINE_ADMIN_TOKEN>``
matches (constant-time). With no token configured the admin API is closed. The
host applies it once, before every request under ``/admin/`` (``callengine.host``),
so no route can forget it.
"""

from __future__ import annotations

import hmac
from typing import Any, Mapping

from quart import Response, jsonify


def admin_ok(settings: Any, headers: Mapping[str, str]) -> bool:
    token = settings.secret("admin_token")
    auth = headers.get("Authorization", "")
    if not token or not auth.startswith("Bearer "):
        return False
    return hmac.compare_digest(auth[7:].strip().encode(), token.encode())


def admin_denied() -> Response:
    resp = jsonify({"error": "unauthorized: send Authorization: Bearer $CALLENGINE_ADMIN_TOKEN"})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="callengine"'
    return resp
