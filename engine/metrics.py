"""Process metrics (Prometheus) and the hooks actors call to feed them.

Numbers live here and in per-turn stamps, never in log lines. Actors receive a
``Metrics`` object and call a handful of cheap methods (a counter increment or a
histogram observation; no I/O, no allocation beyond the client's own).

With ``--workers N`` each process keeps its own registry; when
``PROMETHEUS_MULTIPROC_DIR`` is set (``callengine serve`` sets it for N > 1),
``GET /metrics`` aggregates every worker's files, as prometheus_client's
multiprocess mode documents.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: (stage, from stamp, to stamp) of ``callengine_turn_stage_ms``; the stamp names are the turn record's.
TURN_STAGES = (
    ("stt", "speech_end", "stt_final"),
    ("llm", "stt_final", "llm_first_token"),
    ("tts", "llm_first_token", "tts_first_audio"),
    ("send", "tts_first_audio", "reply_first_frame"),
    ("total", "speech_end", "reply_first_frame"),
)

_LATENCY_BUCKETS_MS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_total = Counter("callengine_calls_total", "Calls accepted", registry=r)
        self.calls_rejected = Counter(
            "callengine_calls_rejected_total", "Calls refused (capacity, signature)", ["reason"], registry=r
        )
        self.calls_live = Gauge(
            "callengine_calls_live", "Calls in progress", registry=r, multiprocess_mode="livesum"
        )
        self.violations = Counter(
            "callengine_protocol_violations_total", "Malformed or out-of-order peer messages", ["kind"], registry=r
        )
        self.signature_failures = Counter(
            "callengine_signature_failures_total", "Requests refused for a bad X-Twilio-Signature", ["endpoint"], registry=r
        )
        self.latency = Histogram(
            "callengine_latency_ms",
            "Per-turn latencies in ms (stage: greeting_first_frame, turn = speech end to first reply frame, ...)",
            ["stage"],
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.events = Counter("callengine_events_total", "Notable events", ["event"], registry=r)
        self.speculation = Counter(
            "callengine_speculative_replies_total", "Speculative replies kept or discarded", ["outcome"], registry=r
        )
        self.restarts = Counter(
            "callengine_restarts_total", "Actor restarts by role", ["role"], registry=r
        )
        self.supervision = Counter(
            "callengine_supervision_events_total",
            "Supervision events by role: restart, fallback, probe, restored",
            ["role", "event"],
            registry=r,
        )
        self.whatsapp = Counter(
            "callengine_whatsapp_messages_total", "WhatsApp messages", ["direction", "channel"], registry=r
        )
        self.turn_stage = Histogram(
            "callengine_turn_stage_ms",
            "Each recorded turn's stages from its stamps, in ms: stt (speech_end to stt_final), llm (stt_final"
            " to llm_first_token), tts (llm_first_token to tts_first_audio), send (tts_first_audio to"
            " reply_first_frame), total (speech_end to reply_first_frame); 0 when a stage overlapped the one before",
            ["stage"],
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.turns = Counter("callengine_turns_total", "Turns recorded", ["outcome"], registry=r)
        self.stt_restarts = Counter("callengine_stt_restarts_total", "Restarts of a call's recognizer", registry=r)
        self.stt_fallbacks = Counter(
            "callengine_stt_fallbacks_total", "Switches of a call's recognizer to the fallback", registry=r
        )
        self.pacer_underruns = Counter(
            "callengine_pacer_underruns_total", "Agent audio that fell behind real time by more than the lead", registry=r
        )
        self.pacer_dropped = Counter(
            "callengine_pacer_dropped_frames_total", "Agent frames dropped from a full pacer queue", registry=r
        )
        self.webhook_ack = Histogram(
            "callengine_webhook_ack_ms",
            "Time to answer a webhook (Twilio voice/status, WhatsApp), in ms",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.journal_pending = Gauge(
            "callengine_journal_pending", "Records journaled while the database was away, not yet written",
            registry=r, multiprocess_mode="livesum",
        )
        self.chats_live = Gauge(
            "callengine_chats_live", "WhatsApp chats with a live tree", registry=r, multiprocess_mode="livesum"
        )

    # ---- hooks (cheap, any thread) -------------------------------------------------------

    def violation(self, kind: str) -> None:
        self.violations.labels(kind).inc()

    def observe(self, stage: str, ms: float) -> None:
        self.latency.labels(stage).observe(ms)

    def count(self, event: str, n: int = 1) -> None:
        self.events.labels(event).inc(n)

    def supervision_event(self, role: str, what: str) -> None:
        if what == "restart":
            self.restarts.labels(role).inc()
            if role == "stt":
                self.stt_restarts.inc()
        elif what == "fallback" and role == "stt":
            self.stt_fallbacks.inc()
        self.supervision.labels(role, what).inc()

    def turn_recorded(self, stamps: Mapping[str, float], interrupted: bool) -> None:
        """Once per recorded turn (``RecordTurn``): each stage its stamps span."""
        self.turns.labels("interrupted" if interrupted else "completed").inc()
        for stage, start, end in TURN_STAGES:
            a, b = stamps.get(start), stamps.get(end)
            if a is not None and b is not None:
                self.turn_stage.labels(stage).observe(max(0.0, b - a))

    def pacer_underrun(self) -> None:
        self.pacer_underruns.inc()

    def pacer_drops(self, n: int) -> None:
        self.pacer_dropped.inc(n)

    def speculative(self, outcome: str) -> None:
        self.speculation.labels(outcome).inc()

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

