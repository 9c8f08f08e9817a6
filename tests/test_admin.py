"""The admin view over every process: presence, merging, actions, metrics.

Pure merge rules (``engine.admin_view``) and the presence tables on both store
backends first; then real ``callengine serve`` processes (stub providers, so a
call costs no model time) driven by the simulated Twilio caller: two workers
of one host, two hosts on one SQLite file (one of them killed), and the
``/metrics`` histograms of a scripted call.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from engine import admin_view as view
from engine.presence import Presence
from tests.conftest_host import ADMIN_TOKEN, TWILIO_TOKEN, HostProcess, start_host, start_hosts
from callsim import Pause, Say, SimulatedCaller, WaitForReply

# The stub planner's reply: two sentences as by default, spoken in 1.2 s instead of
# 3.7 s (the stub voice speaks 60 ms a character); every caller waits a reply out.
STUBS = {"CALLENGINE_STT": "stub", "CALLENGINE_TTS": "stub", "CALLENGINE_LLM": "stub",
         "CALLENGINE_STUB_REPLY_TEXT": "Thanks. We can come."}


# ------------------------------------------------------------------ merge rules


def test_call_state_follows_presence_then_the_record() -> None:
    row = {"call_sid": "CA1", "started_at": 100.0, "ended_at": None, "end_reason": ""}
    assert view.call_entry(row, {"sid": "CA1", "process": "h:1"}, now=105.0)["state"] == "live"
    assert view.call_entry(row, None, now=105.0, grace_s=10)["state"] == "live"  # not yet heartbeated
    assert view.call_entry(row, None, now=200.0, grace_s=10)["state"] == "lost"  # nobody holds it
    for reason, state in (("", "ended"), ("lost", "lost"), ("shutdown", "shutdown"), ("hangup", "ended")):
        ended = {**row, "ended_at": 130.0, "end_reason": reason}
        entry = view.call_entry(ended, None, turns=3, process="h:2", now=500.0)
        assert entry["state"] == state and entry["duration_s"] == 30.0 and entry["process"] == "h:2"
        assert entry["turns"] == 3 and entry["sid"] == entry["call_sid"] == "CA1"


def test_merge_lists_live_calls_of_every_process_first_and_filters_by_state() -> None:
    procs = [
        {"id": "a:1", "state": {"calls": [{"sid": "CA_live_a", "started_at": 50.0, "turns": 2}]}},
        {"id": "b:2", "state": {"calls": [{"sid": "CA_live_b", "started_at": 60.0}]}},
    ]
    live = view.live_calls(procs)
    rows = [
        {"call_sid": "CA_live_a", "started_at": 50.0, "ended_at": None},
        {"call_sid": "CA_old", "started_at": 10.0, "ended_at": 20.0},
    ]
    calls = view.merge_calls(rows, live, turn_counts={"CA_live_a": 1}, holders={"CA_old": "a:1"}, now=70.0)
    assert [c["sid"] for c in calls] == ["CA_live_b", "CA_live_a", "CA_old"]
    assert [c["process"] for c in calls] == ["b:2", "a:1", "a:1"]
    assert calls[1]["turns"] == 2  # the live count is ahead of the stored one
    assert [c["sid"] for c in view.merge_calls(rows, live, turn_counts={}, holders={}, state="live")] == [
        "CA_live_b", "CA_live_a"]
    assert [c["sid"] for c in view.merge_calls(rows, live, turn_counts={}, holders={}, state="ended")] == ["CA_old"]
    assert len(view.merge_calls(rows, live, turn_counts={}, holders={}, limit=1)) == 1


def test_turns_mark_interruptions_and_barge_ins() -> None:
    turns = view.turn_entries(
        [
            {"turn_index": 1, "transcript": "hi", "reply": "hello...", "interrupted": True, "stamps": {"speech_end": 5}},
            {"turn_index": 2, "transcript": "wait", "reply": "yes?", "interrupted": False, "stamps": {}},
        ]
    )
    assert [(t["turn_id"], t["interrupted"], t["barge_in"]) for t in turns] == [(1, True, False), (2, False, True)]
    assert turns[0]["stamps"] == {"speech_end": 5}


def test_chats_leads_and_whatsapp_views() -> None:
    cloud = view.chat_entry({"chat_id": "cloud:123:972501234567", "business_id": "demo", "last_at": 5, "messages": 3})
    assert (cloud["channel"], cloud["peer"], cloud["messages"]) == ("cloud", "972501234567", 3)
    jid = view.chat_entry({"chat_id": "972501234567:12@s.whatsapp.net", "last_at": 5}, {"972501234567:12@s.whatsapp.net"})
    assert (jid["channel"], jid["peer"], jid["live"]) == ("baileys", "972501234567", True)
    text = view.leads_csv([{"id": "1", "source": "call", "ref": "CA1", "complete": True,
                            "fields": {"name": "דוד כהן", "phone": "054"}}])
    assert text.splitlines()[0].endswith(",name,phone") and "דוד כהן" in text
    procs = [
        {"id": "a:1", "state": {"whatsapp": {"qr": "old", "qr_at": 1.0}}},
        {"id": "b:2", "state": {"whatsapp": {"qr": "new", "qr_at": 2.0, "sidecar": {"owner": True, "state": "qr"}}}},
    ]
    wa = view.whatsapp_view(True, procs)
    assert (wa["state"], wa["qr"], wa["sidecar"]["process"]) == ("qr", "new", "b:2")
    procs[1]["state"]["whatsapp"]["sidecar"]["state"] = "connected"
    assert view.whatsapp_view(True, procs)["qr"] is None
    assert view.whatsapp_view(False, [])["state"] == "disabled"


# ------------------------------------------------------------------ presence on both backends


def test_presence_publishes_drops_the_dead_and_runs_commands(store: Any) -> None:
    done: list[tuple[str, str, str]] = []

    def presence(host: str, calls: list[dict[str, Any]]) -> Presence:
        def on_command(sid: str, action: str, role: str) -> str:
            done.append((sid, action, role))
            return "ok"

        return Presence(store, state_fn=lambda: {"calls": calls, "chats": []}, on_command=on_command,
                        dead_after_s=1.0, host=host)

    async def main() -> None:
        a = presence("host-a", [{"sid": "CA1", "started_at": time.time(), "tree": {"role": "call:CA1"}}])
        b = presence("host-b", [])
        await a.beat()
        await b.beat()
        alive = {p["id"]: p for p in a.reader.alive()}
        assert set(alive) == {a.id, b.id}
        assert alive[a.id]["live_calls"] == 1 and alive[a.id]["state"]["calls"][0]["tree"]["role"] == "call:CA1"
        assert a.reader.holders(["CA1", "CAx"]) == {"CA1": a.id}
        cid = b.reader.command(a.id, "CA1", "restart", "stt")
        await a.run_commands()
        assert done == [("CA1", "restart", "stt")]
        assert b.reader.command_result(cid)["result"] == "ok"
        await a.run_commands()
        assert len(done) == 1  # a command runs once
        await trio.sleep(1.3)  # a stops heartbeating: gone after dead_after_s
        await b.beat()
        assert [p["id"] for p in b.reader.alive()] == [b.id]
        await b.leave()
        assert b.reader.alive() == []

    trio.run(main)


# ------------------------------------------------------------------ real hosts


def _caller(url: str, steps: list[Any]) -> SimulatedCaller:
    return SimulatedCaller(url, steps, auth_token=TWILIO_TOKEN, keep_audio=False,
                           custom_parameters={"from": "+15550001111", "to": "+15005550006"})


def _post(h: HostProcess, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(h.http + path, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = trio.current_time() + timeout
    while True:
        got = await trio.to_thread.run_sync(check)
        if got:
            return got
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.1)


def _get_with_process(h: HostProcess, path: str) -> tuple[int, Any, str]:
    """GET with the admin token: status, JSON body, and which process answered."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(h.http + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("X-Callengine-Process", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("X-Callengine-Process", "")


def _live_tree(h: HostProcess, sid: str) -> dict[str, Any] | None:
    status, tree = h.get(f"/admin/calls/{sid}/tree")
    return tree if status == 200 else None


async def test_two_workers_answer_alike_for_a_live_call_and_metrics_count_its_turns(tmp_path: Path) -> None:
    from engine.metrics import TURN_STAGES

    h = start_host(tmp_path, STUBS, args=["--workers", "2"])
    try:
        c = _caller(h.ws, [Say("I need a plumber"), WaitForReply(timeout=15),
                           Say("My name is David"), WaitForReply(timeout=15), Pause(30.0)])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.run)
            procs = await _until(lambda: len(h.get("/admin/processes")[1]["processes"]) == 2 and
                                 h.get("/admin/processes")[1]["processes"], 20, "both workers")
            sid = (await _until(lambda: [x for x in h.get("/admin/calls?state=live")[1]["calls"]], 20, "the call"))[0]["sid"]
            await _until(lambda: sum(p["live_calls"] for p in h.get("/admin/processes")[1]["processes"]) == 1,
                         5, "the holder to publish the call")
            answered_by: set[str] = set()
            for _ in range(60):  # each request lands on either worker; every one must see the call
                status, tree, by = await trio.to_thread.run_sync(_get_with_process, h, f"/admin/calls/{sid}/tree")
                assert status == 200 and tree["role"] == f"call:{sid}", (by, tree)
                assert {ch["role"] for ch in tree["children"]} >= {"transport", "stt", "planner", "tts", "pacer"}
                assert tree["process"] in {p["id"] for p in procs}
                status, listing, by2 = await trio.to_thread.run_sync(_get_with_process, h, "/admin/calls?state=live")
                assert [x["sid"] for x in listing["calls"]] == [sid] and listing["calls"][0]["process"] == tree["process"]
                answered_by |= {by, by2}
                if len(answered_by) == 2:
                    break
            assert answered_by == {p["id"] for p in procs}, answered_by  # both workers answered, alike
            await _until(lambda: len(h.get(f"/admin/calls/{sid}")[1]["turns"]) >= 2, 30, "two recorded turns")
            status, body = await trio.to_thread.run_sync(_post, h, f"/admin/calls/{sid}/end")
            assert status == 202, body
            record = await _until(lambda: (lambda r: r if r.get("state") == "ended" else None)(
                h.get(f"/admin/calls/{sid}")[1]), 10, "the call to end")
            nursery.cancel_scope.cancel()

        # /metrics (both workers' samples, aggregated) counts exactly the recorded turns' stages.
        status, text = h.get("/metrics", admin=False)
        assert status == 200
        counts = _histogram_counts(text, "callengine_turn_stage_ms")
        expected = {stage: float(sum(1 for t in record["turns"] if a in t["stamps"] and b in t["stamps"]))
                    for stage, a, b in TURN_STAGES}
        assert expected["total"] == len(record["turns"]) == 2, record["turns"]
        assert {k: counts.get(k, 0.0) for k in expected} == expected
        turns = re.search(r'^callengine_turns_total{outcome="completed"} ([0-9.]+)$', text, re.M)
        assert turns and float(turns.group(1)) == sum(1 for t in record["turns"] if not t["interrupted"])
        for name in ("callengine_calls_live", "callengine_chats_live", "callengine_journal_pending"):
            assert re.search(rf"^{name} 0\.0$", text, re.M), name  # summed over the live workers
        status, body = h.get("/admin/leads.csv")
        assert status == 200 and body.startswith("id,business_id,source,ref,complete,created_at,updated_at")
    finally:
        assert h.stop() == 0


@pytest.fixture
def two_hosts(tmp_path: Path) -> Any:
    """Two single-worker hosts on one SQLite file (one machine, one data directory)."""
    shared = {**STUBS, "CALLENGINE_DATA_DIR": str(tmp_path / "var")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = start_hosts([(tmp_path / "a", shared), (tmp_path / "b", shared)])
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


async def test_actions_reach_the_process_that_holds_the_call_and_a_dead_one_drops_out(two_hosts: Any) -> None:
    a, b = two_hosts
    c = _caller(a.ws, [Pause(1.0), Say("I need a plumber"), WaitForReply(timeout=15), Pause(30.0)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        # The record is stored at the call's start; its holder is published with the
        # next heartbeat (up to heartbeat_s later), so wait for a row that names it.
        calls = await _until(lambda: [c for c in b.get("/admin/calls?state=live")[1]["calls"] if c.get("process")],
                             20, "the call on b, with its process")
        sid, holder = calls[0]["sid"], calls[0]["process"]
        assert holder == a.get("/admin/tree")[1]["process"]  # a holds it; b answers for it
        tree = await _until(lambda: _live_tree(b, sid), 10, "the tree through b")
        assert tree["process"] == holder
        stt = {ch["role"]: ch for ch in tree["children"]}["stt"]
        status, body = await trio.to_thread.run_sync(_post, b, f"/admin/calls/{sid}/restart", {"role": "stt"})
        assert status == 202 and body["process"] == holder, body
        await _until(lambda: {ch["role"]: ch for ch in (_live_tree(a, sid) or {}).get("children", [])}
                     .get("stt", {}).get("restarts", 0) == stt["restarts"] + 1, 10, "the stt restart")
        status, body = await trio.to_thread.run_sync(_post, b, f"/admin/calls/{sid}/restart", {"role": "nope"})
        assert status == 400, body
        status, body = await trio.to_thread.run_sync(_post, b, f"/admin/calls/{sid}/restart", {})
        assert status == 400, body
        status, body = await trio.to_thread.run_sync(_post, b, f"/admin/calls/{sid}/end")
        assert status == 202, body
        await _until(lambda: b.get(f"/admin/calls/{sid}")[1].get("state") == "ended", 10, "the call to end")
        nursery.cancel_scope.cancel()
    assert _post(b, "/admin/calls/CAnone/end")[0] == 404
    ids = {p["id"] for p in b.get("/admin/processes")[1]["processes"]}
    assert any(i.endswith(f":{a.proc.pid}") for i in ids) and len(ids) == 2
    t0 = time.monotonic()
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(5)
    while any(p["id"].endswith(f":{a.proc.pid}") for p in b.get("/admin/processes")[1]["processes"]):
        assert time.monotonic() - t0 < 10, "a dead process is still listed"
        time.sleep(0.2)
    assert time.monotonic() - t0 < 8  # dead_after_s (5 s) + a heartbeat


def _histogram_counts(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(rf'^{name}_count{{stage="([a-z_]+)"}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out
