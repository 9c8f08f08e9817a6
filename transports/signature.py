"""``X-Twilio-Signature`` checks, as thin wrappers over the ``twilio`` library.

Twilio signs each webhook with HMAC-SHA1 of the full URL followed by the sorted
POST parameters (name then value), keyed by the account auth token, base64-encoded.
The Media Stream WebSocket upgrade is signed the same way over the full ``wss://``
URL including its query string, with no parameters. ``RequestValidator`` does the
work (including the with/without-port variants Twilio is known to produce); we add
only the "missing or malformed header is simply invalid" rule, so callers never
see an exception from a hostile request. Pure functions, callable from any task or
thread; comparison is constant-time (the library's ``compare``).
"""

from __future__ import annotations

from typing import Mapping

from twilio.request_validator import RequestValidator

__all__ = ["valid_webhook", "valid_ws_upgrade", "compute"]


def _params(form_params: Mapping[str, object] | None) -> Mapping[str, object]:
    """What ``RequestValidator`` expects: a MultiDict as-is (it calls ``getlist``),
    or a plain mapping of single values. A mapping of lists is flattened to a
    MultiDict, because the library would stringify a list value whole."""
    if not form_params:
        return {}
    if callable(getattr(form_params, "getlist", None)):
        return form_params
    if any(isinstance(v, (list, tuple)) for v in form_params.values()):
        from werkzeug.datastructures import MultiDict

        return MultiDict(
            [(k, item) for k, v in form_params.items() for item in (v if isinstance(v, (list, tuple)) else [v])]
        )
    return dict(form_params)


def valid_webhook(
    auth_token: str, url: str, form_params: Mapping[str, object] | None, signature: str | None
) -> bool:
    """True when ``signature`` is Twilio's signature of ``url`` + ``form_params``.

    A missing/empty/non-string signature or an empty auth token is invalid (False),
    never an exception.
    """
    if not auth_token or not isinstance(signature, str) or not signature:
        return False
    try:
        return bool(RequestValidator(auth_token).validate(url, _params(form_params), signature))
    except (ValueError, TypeError, UnicodeError):
        return False


def valid_ws_upgrade(auth_token: str, url: str, signature: str | None) -> bool:
    """True when ``signature`` signs the full WebSocket URL (query string included)."""
    return valid_webhook(auth_token, url, None, signature)


def compute(auth_token: str, url: str, form_params: Mapping[str, object] | None = None) -> str:
    """The signature Twilio would send for ``url`` (+ ``form_params``); for tests and
    the simulated caller."""
    if not auth_token:
        raise ValueError("compute() needs a non-empty auth token")
    return RequestValidator(auth_token).compute_signature(url, _params(form_params))
