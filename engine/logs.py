"""Structured logging: one JSON object per line, with call and turn ids.

WARNING by default: nothing per frame; numbers live in metrics and turn stamps.
Fields passed through ``extra={...}`` become keys of the JSON object, so a log
line about a call carries ``call_sid`` as data, not as text to parse; a line
logged from one of a call's trio tasks carries it anyway (``call_sid_var``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

#: The call a task works for. Set by the media handler before the call's tree
#: starts; every trio task of that tree inherits it (trio copies the spawner's
#: context), so each of their log lines carries ``call_sid`` without passing it.
call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        sid = call_sid_var.get()
        if sid:
            out["call_sid"] = sid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "WARNING", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pykka logs every actor failure at ERROR with a traceback; ours are reported
    # to supervisors and logged there once.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
    logging.getLogger("hypercorn.access").setLevel(max(logging.WARNING, root.level))
