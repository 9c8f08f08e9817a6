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
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
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
        self.supervision.labels(role, what).inc()

    def speculative(self, outcome: str) -> None:
        self.speculation.labels(outcome).inc()

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

