"""Structured logs: one JSON object per line, a call's lines carry its ``call_sid``."""

from __future__ import annotations

import json
import logging

import trio

from engine.logs import JsonFormatter, call_sid_var


def _line(logger: logging.Logger, records: list[logging.LogRecord], msg: str, **extra: object) -> dict:
    logger.warning(msg, extra=extra)
    return json.loads(JsonFormatter().format(records[-1]))


async def test_tasks_of_a_call_log_its_call_sid_and_others_do_not() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("callengine.test_logs")
    logger.addHandler(Keep())
    logger.propagate = False
    lines: dict[str, dict] = {}

    async def actor_task() -> None:
        # JsonFormatter reads the context when it formats, as the handler does on emit.
        lines["actor"] = _line(logger, records, "child failed", role="stt")

    async def handler() -> None:
        call_sid_var.set("CA123")
        async with trio.open_nursery() as nursery:  # the call tree's tasks are spawned from here
            nursery.start_soon(actor_task)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler)
    lines["other"] = _line(logger, records, "unrelated", turn_id=4)
    assert lines["actor"]["call_sid"] == "CA123" and lines["actor"]["role"] == "stt"
    assert lines["actor"]["level"] == "WARNING" and lines["actor"]["msg"] == "child failed"
    assert "call_sid" not in lines["other"] and lines["other"]["turn_id"] == 4
