"""Store records: the one validation every backend and the journal apply, and their JSON codec.

``check_record`` is what makes "durable before acknowledged" safe to replay:
a record that passes it can always be stored, so bad data fails loudly at the
writer instead of poisoning a journal replay or one backend but not the other.
``encode_record`` / ``decode_record`` are exact inverses over checked records
(one JSON line each, no NaN, no newline inside), which the journal relies on to
replay what it wrote. Pure functions, thread-safe.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from engine.messages import (
    RecordCallEnded,
    RecordCallStarted,
    RecordChatMessage,
    RecordLead,
    RecordTurn,
)
from engine.store.base import Record

__all__ = [
    "InvalidRecord",
    "RECORD_TYPES",
    "check_record",
    "record_to_dict",
    "encode_record",
    "decode_record",
]


class InvalidRecord(ValueError):
    """A record is not a ``Record*`` message or one of its fields is malformed."""


RECORD_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (RecordCallStarted, RecordCallEnded, RecordTurn, RecordLead, RecordChatMessage)
}

# Field kinds: "key" = non-empty str, "str", "time" = finite number, "int" =
# non-negative int, "bool", "stamps" = {str: finite number}, "fields" = {str: str},
# "direction" = "in" | "out".
_SPEC: dict[type, dict[str, str]] = {
    RecordCallStarted: {
        "call_sid": "key",
        "stream_sid": "str",
        "business_id": "str",
        "from_number": "str",
        "to_number": "str",
        "started_at": "time",
    },
    RecordCallEnded: {"call_sid": "key", "ended_at": "time", "reason": "str", "summary": "str"},
    RecordTurn: {
        "call_sid": "key",
        "turn_index": "int",
        "transcript": "str",
        "reply": "str",
        "interrupted": "bool",
        "stamps": "stamps",
        "dtmf": "str",
    },
    RecordLead: {"business_id": "str", "source": "key", "ref": "key", "fields": "fields", "complete": "bool"},
    RecordChatMessage: {
        "chat_id": "key",
        "business_id": "str",
        "message_id": "key",
        "direction": "direction",
        "text": "str",
        "at": "time",
    },
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_record(record: Any) -> Record:
    """Validate ``record`` and return it; raise :class:`InvalidRecord` naming the bad field.

    Pure and thread-safe. Every backend calls it in ``apply`` and the journal
    calls it before appending, so a record that passes can always be stored.
    """
    spec = _SPEC.get(type(record))
    if spec is None:
        raise InvalidRecord(f"not a store record: {type(record).__name__!s} (expected one of {sorted(RECORD_TYPES)})")
    name = type(record).__name__
    for field_name, kind in spec.items():
        value = getattr(record, field_name)
        where = f"{name}.{field_name}"
        if kind in ("key", "str"):
            if not isinstance(value, str):
                raise InvalidRecord(f"{where} must be str, got {type(value).__name__}")
            if kind == "key" and not value:
                raise InvalidRecord(f"{where} must not be empty")
        elif kind == "time":
            if not _is_number(value):
                raise InvalidRecord(f"{where} must be a finite number, got {value!r}")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRecord(f"{where} must be a non-negative int, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise InvalidRecord(f"{where} must be bool, got {type(value).__name__}")
        elif kind == "direction":
            if value not in ("in", "out"):
                raise InvalidRecord(f"{where} must be 'in' or 'out', got {value!r}")
        elif kind == "stamps":
            if not isinstance(value, Mapping):
                raise InvalidRecord(f"{where} must be a mapping, got {type(value).__name__}")
            for k, v in value.items():
                if not isinstance(k, str) or not _is_number(v):
                    raise InvalidRecord(f"{where}[{k!r}] must map str to a finite number, got {v!r}")
        elif kind == "fields":
            if not isinstance(value, Mapping):
                raise InvalidRecord(f"{where} must be a mapping, got {type(value).__name__}")
            for k, v in value.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise InvalidRecord(f"{where}[{k!r}] must map str to str, got {v!r}")
    return record


def record_to_dict(record: Record) -> dict[str, Any]:
    """``{"type": "RecordTurn", "data": {...}}`` with mappings as plain dicts."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        data[f.name] = dict(value) if isinstance(value, Mapping) else value
    return {"type": type(record).__name__, "data": data}


def encode_record(record: Record) -> str:
    """One JSON line (no newline inside) for ``record``; raises :class:`InvalidRecord`."""
    check_record(record)
    return json.dumps(record_to_dict(record), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode_record(text: str | bytes) -> Record:
    """Inverse of :func:`encode_record`; raises :class:`InvalidRecord` for anything else."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"journal line is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
        raise InvalidRecord("journal line must be an object with 'type' and 'data'")
    cls = RECORD_TYPES.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise InvalidRecord(f"unknown record type {obj.get('type')!r}")
    try:
        record = cls(**obj["data"])
    except TypeError as exc:
        raise InvalidRecord(f"bad {cls.__name__} fields: {exc}") from None
    return check_record(record)
