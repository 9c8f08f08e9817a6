"""The admin view's merge rules, as pure functions over plain data.

Inputs are what the store returns (call rows, turn counts, which process held
a call) and what every live process published (``engine.presence``: rows of
``processes`` with their decoded ``state``). Outputs are the JSON the admin API
answers (README, docs/console.md). No I/O here, so each rule is tested alone.

A call's ``state``:

- ``live`` when a live process publishes it (whatever the record says);
- else, with ``ended_at`` in the record: ``ended``, or the record's
  ``end_reason`` when that names how it ended abnormally (``lost``: its process
  died; ``shutdown``: the host was stopped with it; ``escalated``: its tree gave
  up);
- else (no end in the record and no process publishes it): ``live`` for its
  first ``grace_s`` (its process has not heartbeated since it began), then
  ``lost`` (its process died without closing it).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any, Iterable, Mapping

__all__ = [
    "ABNORMAL_ENDS",
    "live_calls",
    "call_entry",
    "merge_calls",
    "turn_entries",
    "find_tree",
    "tree_roles",
    "chat_entry",
    "leads_csv",
    "whatsapp_view",
    "process_entry",
]

ABNORMAL_ENDS = ("lost", "shutdown", "escalated")


def live_calls(processes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """call_sid -> its published entry (with ``process``), over every live process."""
    out: dict[str, dict[str, Any]] = {}
    for proc in processes:
        for call in proc.get("state", {}).get("calls", []):
            sid = call.get("sid")
            if sid:
                out[sid] = {**call, "process": proc["id"]}
    return out


def call_entry(
    row: Mapping[str, Any] | None,
    live: Mapping[str, Any] | None,
    *,
    turns: int = 0,
    process: str | None = None,
    now: float | None = None,
    grace_s: float = 10.0,
) -> dict[str, Any]:
    """One call as the admin API lists it, from its record and/or its live entry."""
    now = time.time() if now is None else now
    src: Mapping[str, Any] = row if row is not None else {}
    sid = src.get("call_sid") or (live or {}).get("sid", "")
    started = src.get("started_at") or (live or {}).get("started_at")
    ended = src.get("ended_at")
    reason = src.get("end_reason") or ""
    if live is not None:
        state, ended = "live", None
    elif ended is not None:
        state = reason if reason in ABNORMAL_ENDS else "ended"
    elif started is not None and now - started < grace_s:
        state = "live"
    else:
        state = "lost"
    end_or_now = ended if ended is not None else (now if state == "live" else None)
    duration = round(end_or_now - started, 1) if started is not None and end_or_now is not None else None
    if live is not None:
        turns = max(turns, int(live.get("turns") or 0))
    business = src.get("business_id") or (live or {}).get("business", "")
    frm = src.get("from_number") or (live or {}).get("from", "")
    to = src.get("to_number") or (live or {}).get("to", "")
    return {
        "sid": sid,
        "call_sid": sid,
        "stream_sid": src.get("stream_sid") or (live or {}).get("stream_sid", ""),
        "business": business,
        "business_id": business,
        "from": frm,
        "from_number": frm,
        "to": to,
        "to_number": to,
        "state": state,
        "started_at": started,
        "ended_at": ended,
        "end_reason": reason,
        "summary": src.get("summary") or "",
        "duration_s": duration,
        "process": (live or {}).get("process") or process,
        "turns": turns,
    }


def merge_calls(
    rows: list[Mapping[str, Any]],
    live: Mapping[str, Mapping[str, Any]],
    *,
    turn_counts: Mapping[str, int],
    holders: Mapping[str, str],
    state: str = "all",
    limit: int = 100,
    now: float | None = None,
    grace_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Live calls first (newest first, every process's), then the records,
    newest first; ``state`` = ``live`` | ``ended`` (everything not live) | ``all``."""
    out: list[dict[str, Any]] = []
    by_sid = {r["call_sid"]: r for r in rows}
    for sid, entry in sorted(live.items(), key=lambda kv: -(kv[1].get("started_at") or 0)):
        out.append(call_entry(by_sid.get(sid), entry, turns=turn_counts.get(sid, 0), now=now, grace_s=grace_s))
    for row in rows:
        sid = row["call_sid"]
        if sid in live:
            continue
        out.append(
            call_entry(row, None, turns=turn_counts.get(sid, 0), process=holders.get(sid), now=now, grace_s=grace_s)
        )
    if state == "live":
        out = [c for c in out if c["state"] == "live"]
    elif state == "ended":
        out = [c for c in out if c["state"] != "live"]
    return out[:limit]


def turn_entries(turns: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored turns as the admin API shows them. ``interrupted``: the agent's
    reply was cut short by the caller; ``barge_in``: the caller began this turn
    over the agent's previous reply (that reply was interrupted)."""
    out = []
    previous_interrupted = False
    for t in turns:
        out.append(
            {
                "turn_id": t.get("turn_index"),
                "turn_index": t.get("turn_index"),
                "transcript": t.get("transcript", ""),
                "reply": t.get("reply", ""),
                "interrupted": bool(t.get("interrupted")),
                "barge_in": previous_interrupted,
                "stamps": dict(t.get("stamps") or {}),
                "dtmf": t.get("dtmf", ""),
            }
        )
        previous_interrupted = bool(t.get("interrupted"))
    return out


def find_tree(processes: Iterable[Mapping[str, Any]], call_sid: str) -> tuple[str, dict[str, Any]] | None:
    """(process id, tree) of the live call ``call_sid`` as last published, or None."""
    for proc in processes:
        for call in proc.get("state", {}).get("calls", []):
            if call.get("sid") == call_sid and call.get("tree") is not None:
                return proc["id"], call["tree"]
    return None


def tree_roles(tree: Mapping[str, Any]) -> set[str]:
    """Every child role in a tree snapshot (not the root's own)."""
    roles: set[str] = set()
    for child in tree.get("children", []):
        roles.add(child.get("role", ""))
        roles |= tree_roles(child)
    return roles


def chat_entry(row: Mapping[str, Any], live_ids: set[str] | None = None) -> dict[str, Any]:
    """A chat row (chat_id, business_id, last_at, messages) as the admin API lists it."""
    chat_id = row["chat_id"]
    if chat_id.startswith("cloud:"):
        channel, peer = "cloud", chat_id.rsplit(":", 1)[-1]
    else:
        channel, peer = "baileys", chat_id.split("@", 1)[0].split(":", 1)[0]
    return {
        "chat_id": chat_id,
        "channel": channel,
        "peer": peer,
        "business": row.get("business_id", ""),
        "last_message_at": row.get("last_at"),
        "messages": int(row.get("messages") or 0),
        "live": chat_id in (live_ids or set()),
    }


def leads_csv(leads: list[Mapping[str, Any]]) -> str:
    """Leads as CSV: fixed columns, then one column per field name seen (sorted)."""
    fixed = ["id", "business_id", "source", "ref", "complete", "created_at", "updated_at"]
    names = sorted({k for lead in leads for k in (lead.get("fields") or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(fixed + names)
    for lead in leads:
        fields = lead.get("fields") or {}
        w.writerow([lead.get(k, "") for k in fixed] + [fields.get(n, "") for n in names])
    return buf.getvalue()


def whatsapp_view(enabled: bool, processes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The pairing view merged over processes: the sidecar's state from the
    process that runs it, the newest QR any process received (none once connected)."""
    sidecar: dict[str, Any] | None = None
    qr: dict[str, Any] | None = None
    for proc in processes:
        wa = proc.get("state", {}).get("whatsapp") or {}
        sc = wa.get("sidecar")
        if sc and sc.get("owner"):
            sidecar = {**sc, "process": proc["id"]}
        if wa.get("qr") and (qr is None or (wa.get("qr_at") or 0) > (qr.get("at") or 0)):
            qr = {"qr": wa["qr"], "at": wa.get("qr_at")}
    if not enabled:
        state = "disabled"
    elif sidecar is not None:
        state = sidecar.get("state") or "starting"
    else:
        state = "qr" if qr is not None else "unknown"
    if state == "connected":
        qr = None
    return {
        "enabled": enabled,
        "state": state,
        "qr": qr["qr"] if qr else None,
        "qr_at": qr["at"] if qr else None,
        "sidecar": sidecar,
    }


def process_entry(row: Mapping[str, Any], self_id: str) -> dict[str, Any]:
    state = row.get("state") or {}
    return {
        "id": row["id"],
        "host": row["host"],
        "pid": row["pid"],
        "started_at": row["started_at"],
        "heartbeat_at": row["heartbeat_at"],
        "heartbeat_age_s": round(max(0.0, (row.get("db_now") or row["heartbeat_at"]) - row["heartbeat_at"]), 2),
        "live_calls": row["live_calls"],
        "live_chats": row["live_chats"],
        "self": row["id"] == self_id,
        "counters": state.get("counters", {}),
        "tree": state.get("tree"),
    }
