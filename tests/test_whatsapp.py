"""WhatsApp end to end: the real host app on hypercorn, a fake sidecar and a fake Graph API, real HTTP.

Each host test starts ``callengine.host.create_app`` (so the real runtime: rules
planner, SQLite store, recorder, supervision tree; whisper is loaded once per
host, ~2-3 s) on a free loopback port, with the fake peers of
``tests/fakes/whatsapp_fakes.py`` on their own ports. The sans-IO parsers are
tested directly at the bottom.

Latency numbers from the burst test are printed (run with ``-s`` to see them);
they are asserted only against generous correctness bounds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import statistics
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx2
import pytest
import trio

from engine.config import CONFIG_DIR, load_settings
from callengine.host import create_app
from engine.messages import CancelToken
from engine.store import StoreUnavailable
from tests.fakes.whatsapp_fakes import FakeGraph, FakeSidecar, serve_asgi
from whatsapp_bridge import baileys, cloud
from whatsapp_bridge.baileys import PayloadError
from whatsapp_bridge.senders import split_text

SECRET = "sidecar-secret-0123456789"
TOKEN = "graph-token-abc"
APP_SECRET = "meta-app-secret"
VERIFY = "verify-me-please"
ADMIN = "admin-token-xyz"
HE_NUMBER = "+972 3-555-0199"  # demo-he's WhatsApp number in the test profiles

HOURS = "We are open Sunday to Thursday, eight in the morning to six in the evening."
PRICE = "A visit costs two hundred shekels, and the technician gives a quote for the work on site."
WHERE = "We are in Tel Aviv and cover the whole center of the country."


@dataclass
class Host:
    url: str
    app: Any
    runtime: Any
    sidecar: FakeSidecar
    graph: FakeGraph
    client: httpx2.AsyncClient

    @property
    def service(self) -> Any:
        return self.app.extensions["whatsapp"]["service"]

    def events(self) -> dict[str, float]:
        """``callengine_events_total`` as {event: value}."""
        out: dict[str, float] = {}
        for metric in self.runtime.metrics.events.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["event"]] = sample.value
        return out

    async def store(self, fn: str, *args: Any) -> Any:
        return await self.runtime.read_store(getattr(self.runtime.store, fn), *args)

    async def say(self, chat: str, msg_id: str, text: str, *, to: str = "15550001111@s.whatsapp.net") -> Any:
        posted = await self.sidecar.post_inbound(self.client, self.url, _payload(msg_id, chat, text, to=to))
        assert posted.status == 200, posted.answer
        return posted

    async def replies(self, chat: str, n: int, timeout: float = 15.0) -> list[str]:
        """Wait until chat ``chat`` got ``n`` replies and its last paused indicator."""
        await self.sidecar.wait_for(
            lambda: len(self.sidecar.replies(chat)) >= n and self.sidecar.events(chat)[-1][1] == "paused",
            timeout,
        )
        return self.sidecar.replies(chat)


def _payload(msg_id: str, chat: str, text: str, *, to: str = "15550001111@s.whatsapp.net") -> dict[str, Any]:
    return {
        "id": msg_id,
        "chat": chat,
        "from": chat,
        "push_name": "Tester",
        "text": text,
        "timestamp": int(time.time()),
        "to": to,
    }


def _profiles(tmp_path: Path) -> Path:
    d = tmp_path / "businesses"
    d.mkdir()
    shutil.copy(CONFIG_DIR / "businesses" / "demo.toml", d / "demo.toml")
    he = (CONFIG_DIR / "businesses" / "demo-he.toml").read_text(encoding="utf-8")
    he = he.replace("whatsapp_numbers = []", f'whatsapp_numbers = ["{HE_NUMBER}"]')
    assert HE_NUMBER in he
    (d / "demo-he.toml").write_text(he, encoding="utf-8")
    return d


@asynccontextmanager
async def running_host(
    tmp_path: Path, *, secrets: bool = True, env: dict[str, str] | None = None
) -> AsyncIterator[Host]:
    async with trio.open_nursery() as nursery:
        sidecar = FakeSidecar(SECRET)
        graph = FakeGraph(TOKEN)
        await sidecar.start(nursery)
        await graph.start(nursery)
        environ = {
            "CALLENGINE_DATA_DIR": str(tmp_path / "var"),
            "CALLENGINE_BUSINESSES_DIR": str(_profiles(tmp_path)),
            "CALLENGINE_STT": "whisper",
            "CALLENGINE_TTS": "espeak",
            "CALLENGINE_LLM": "rules",
            "CALLENGINE_LOG_LEVEL": "ERROR",
            "CALLENGINE_WHATSAPP_SIDECAR_URL": sidecar.url,
            "CALLENGINE_WHATSAPP_GRAPH_URL": graph.url + "/v21.0",
        }
        if secrets:
            environ.update(
                {
                    "CALLENGINE_SIDECAR_SECRET": SECRET,
                    "CALLENGINE_WHATSAPP_TOKEN": TOKEN,
                    "CALLENGINE_WHATSAPP_APP_SECRET": APP_SECRET,
                    "CALLENGINE_WHATSAPP_VERIFY_TOKEN": VERIFY,
                    "CALLENGINE_ADMIN_TOKEN": ADMIN,
                }
            )
        environ.update(env or {})
        app = create_app(load_settings(environ=environ))
        url, shutdown = await serve_asgi(nursery, app)
        try:
            limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx2.AsyncClient(timeout=30.0, limits=limits) as client:
                yield Host(url, app, app.extensions["callengine"]["runtime"], sidecar, graph, client)
        finally:
            shutdown.set()
            sidecar.stop()
            graph.stop()


def _typing_before_each_reply(events: list[tuple[str, str, float]]) -> None:
    """Every reply is preceded (since the previous reply) by a 'composing' indicator."""
    seen_composing = False
    for kind, value, _t in events:
        if kind == "typing" and value == "composing":
            seen_composing = True
        elif kind == "send":
            assert seen_composing, f"reply {value!r} arrived without typing first: {events}"
            seen_composing = False


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------- auth and bad input


async def test_bad_secret_malformed_bodies_signature_verification_and_qr(tmp_path: Path) -> None:
    async with running_host(tmp_path, env={"CALLENGINE_WHATSAPP_MAX_TEXT_CHARS": "50"}) as h:
        ok = _payload("m1", "111@s.whatsapp.net", "hello")
        # Secret: missing and wrong -> 401.
        for secret in ("", "wrong-secret"):
            posted = await h.sidecar.post_inbound(h.client, h.url, ok, secret=secret)
            assert posted.status == 401, posted.answer
        # Malformed bodies -> 400 naming the field.
        cases: list[tuple[Any, str]] = [
            (b"{not json", "body"),
            (b"[1, 2]", "body"),
            ({**ok, "id": ""}, "id"),
            ({k: v for k, v in ok.items() if k != "id"}, "id"),
            ({**ok, "id": 42}, "id"),
            ({**ok, "chat": ""}, "chat"),
            ({**ok, "text": "x" * 51}, "text"),
            ({**ok, "text": "   "}, "text"),
            ({**ok, "text": ["hi"]}, "text"),
            ({**ok, "timestamp": "yesterday"}, "timestamp"),
            ({**ok, "timestamp": True}, "timestamp"),
        ]
        for body, field in cases:
            posted = await h.sidecar.post_inbound(h.client, h.url, body)
            assert posted.status == 400, (body, posted.answer)
            assert posted.answer["field"] == field, (body, posted.answer)
            assert field in posted.answer["error"]
        # Nothing of the refused requests was stored or answered.
        assert await h.store("list_chats", 10) == []
        assert not await h.store("has_chat_message", "m1")
        assert h.sidecar.hits == []

        # Cloud signature: missing, wrong, or over another body -> 403.
        body = json.dumps(_cloud_payload([("wamid.A", "972500000001", "hello")])).encode()
        url = f"{h.url}/whatsapp/cloud"
        r = await h.client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 403
        r = await h.client.post(url, content=body, headers={cloud.SIGNATURE_HEADER: "sha256=" + "0" * 64})
        assert r.status_code == 403
        r = await h.client.post(url, content=body + b" ", headers={cloud.SIGNATURE_HEADER: cloud.sign(APP_SECRET, body)})
        assert r.status_code == 403
        # Signed but malformed -> 400 naming the field.
        bad = json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": "PN1"}, "messages": [{"type": "text", "from": "1", "text": {"body": "x"}}]}}]}]}).encode()
        r = await h.client.post(url, content=bad, headers={cloud.SIGNATURE_HEADER: cloud.sign(APP_SECRET, bad)})
        assert r.status_code == 400
        assert r.json()["field"] == "entry[0].changes[0].value.messages[0].id"
        assert not await h.store("has_chat_message", "wamid.A")

        # Meta's verification handshake.
        r = await h.client.get(url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
        assert r.status_code == 200 and r.text == "1158201444"
        assert r.headers["content-type"].startswith("text/plain")
        r = await h.client.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"})
        assert r.status_code == 403
        r = await h.client.get(url, params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"})
        assert r.status_code == 403

        # The pairing QR: posted by the sidecar, read behind the admin token.
        qr_url = f"{h.url}/admin/whatsapp/qr"
        assert (await h.client.get(qr_url, headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 404
        r = await h.client.post(f"{h.url}/whatsapp/baileys/qr", json={"qr": "2@abc,def"}, headers={"X-Callengine-Secret": "bad"})
        assert r.status_code == 401
        r = await h.client.post(f"{h.url}/whatsapp/baileys/qr", json={"qr": ""}, headers={"X-Callengine-Secret": SECRET})
        assert r.status_code == 400 and r.json()["field"] == "qr"
        r = await h.client.post(f"{h.url}/whatsapp/baileys/qr", json={"qr": "2@abc,def"}, headers={"X-Callengine-Secret": SECRET})
        assert r.status_code == 200
        assert (await h.client.get(qr_url)).status_code == 401
        assert (await h.client.get(qr_url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        r = await h.client.get(qr_url, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["qr"] == "2@abc,def"

        counts = h.events()
        assert counts["whatsapp_bad_secret"] == 3
        assert counts["whatsapp_bad_payload"] == len(cases) + 1
        assert counts["whatsapp_bad_signature"] == 3


async def test_unconfigured_secrets_refuse_everything(tmp_path: Path) -> None:
    async with running_host(tmp_path, secrets=False) as h:
        posted = await h.sidecar.post_inbound(h.client, h.url, _payload("m1", "1@s.whatsapp.net", "hi"), secret="anything")
        assert posted.status == 403
        assert posted.answer["error"] == "sidecar secret not configured"
        body = json.dumps(_cloud_payload([("wamid.A", "972500000001", "hello")])).encode()
        r = await h.client.post(f"{h.url}/whatsapp/cloud", content=body, headers={cloud.SIGNATURE_HEADER: cloud.sign("", body)})
        assert r.status_code == 403
        r = await h.client.get(
            f"{h.url}/whatsapp/cloud", params={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
        )
        assert r.status_code == 403
        assert await h.store("list_chats", 10) == []


# ---------------------------------------------------------------- conversations over Baileys


async def test_typing_first_and_replies_in_order_per_chat(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        h.sidecar.send_delay = 0.05  # slow sends: later messages queue behind earlier replies
        h.sidecar.fail_sends = 2  # the first two send attempts get 503: retried, not lost
        questions = [("what are your opening hours", HOURS), ("how much does it cost", PRICE), ("where are you located", WHERE)]
        chats = [f"97250000{i:04d}@s.whatsapp.net" for i in range(4)]

        async def one_chat(i: int, chat: str) -> None:
            order = questions[i % 3 :] + questions[: i % 3]
            for k, (q, _a) in enumerate(order):
                await h.say(chat, f"c{i}-m{k}", q)  # back to back: no waiting for replies

        async with trio.open_nursery() as nursery:
            for i, chat in enumerate(chats):
                nursery.start_soon(one_chat, i, chat)
        # A chat addressed to demo-he's number is that business's chat (Hebrew answer).
        he_chat = "972520000999@s.whatsapp.net"
        await h.say(he_chat, "he-1", "מה שעות הפתיחה?", to="97235550199@s.whatsapp.net")

        for i, chat in enumerate(chats):
            order = questions[i % 3 :] + questions[: i % 3]
            assert await h.replies(chat, 3) == [a for _q, a in order]
            events = h.sidecar.events(chat)
            _typing_before_each_reply(events)
            assert [e for e in events if e[0] == "typing"][0][1] == "composing"
        he_reply = (await h.replies(he_chat, 1))[0]
        assert "ראשון" in he_reply  # "Sunday..." in Hebrew
        chats_rows = {row["chat_id"]: row["business_id"] for row in await h.store("list_chats", 100)}
        assert chats_rows[he_chat] == "demo-he" and chats_rows[chats[0]] == "demo"
        assert h.sidecar.failed_sends() == 2
        assert h.events()["whatsapp_http_retry"] >= 2
        assert "whatsapp_reply_failed" not in h.events()
        # Outbound messages are recorded too (through the recorder, write-behind).
        with trio.fail_after(5):
            while len(await h.store("chat_history", chats[0], 20)) < 6:
                await trio.sleep(0.05)
        history = await h.store("chat_history", chats[0], 20)
        assert [r["message_id"] for r in history if r["direction"] == "in"] == ["c0-m0", "c0-m1", "c0-m2"]
        assert [r["text"] for r in history if r["direction"] == "out"] == [HOURS, PRICE, WHERE]


async def test_duplicate_webhook_is_answered_once(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        chat = "972501112222@s.whatsapp.net"
        first = await h.say(chat, "dup-1", "what are your opening hours")
        assert first.answer == {"status": "accepted"}
        again = await h.say(chat, "dup-1", "what are your opening hours")
        assert again.answer == {"status": "duplicate"}
        # A new id delivered five times concurrently: stored and delivered exactly once.
        results: list[Any] = []

        async def post() -> None:
            results.append((await h.say(chat, "dup-2", "how much does it cost")).answer["status"])

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(post)
        assert sorted(results) == ["accepted"] + ["duplicate"] * 4
        await h.say(chat, "dup-3", "where are you located")
        # Replies are in order, so a second answer to dup-1 or dup-2 would show up before WHERE.
        assert await h.replies(chat, 3) == [HOURS, PRICE, WHERE]
        await trio.sleep(0.2)
        assert h.sidecar.replies(chat) == [HOURS, PRICE, WHERE]
        assert h.events()["whatsapp_duplicate"] == 5
        ids = [r["message_id"] for r in await h.store("chat_history", chat, 50) if r["direction"] == "in"]
        assert sorted(ids) == ["dup-1", "dup-2", "dup-3"]


async def test_burst_of_200_chats_all_answered_nothing_lost(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        # Unloaded reference: one message at a time, each waiting for its reply.
        quiet_ack, quiet_typing = [], []
        for i in range(20):
            chat = f"9726{i:08d}@s.whatsapp.net"
            p = await h.say(chat, f"quiet-{i}", "what are your opening hours")
            await h.replies(chat, 1)
            quiet_ack.append((p.t_ack - p.t_post) * 1000)
            quiet_typing.append((h.sidecar.events(chat)[0][2] - p.t_post) * 1000)

        n = 200
        chats = [f"9725{i:08d}@s.whatsapp.net" for i in range(n)]
        posted: list[Any] = []

        async def one(i: int) -> None:
            posted.append(await h.say(chats[i], f"burst-{i}", "what are your opening hours"))

        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        assert len(posted) == n and all(p.status == 200 for p in posted)
        await h.sidecar.wait_for(lambda: all(h.sidecar.replies(c) for c in chats), timeout=60)
        t_all = time.monotonic() - t0

        ack_ms, typing_ms, reply_ms = [], [], []
        for p in posted:
            events = h.sidecar.events(p.chat)
            _typing_before_each_reply(events)
            assert h.sidecar.replies(p.chat) == [HOURS]
            ack_ms.append((p.t_ack - p.t_post) * 1000)
            typing_ms.append((next(t for k, v, t in events if v == "composing") - p.t_post) * 1000)
            reply_ms.append((next(t for k, v, t in events if k == "send") - p.t_post) * 1000)
        # Nothing acknowledged is missing from the store.
        for p in posted:
            assert await h.store("has_chat_message", p.id), p.id
        print(
            f"\none message at a time (20 chats):\n"
            f"  webhook ack      p50 {_pct(quiet_ack, .5):7.1f} ms  p95 {_pct(quiet_ack, .95):7.1f} ms\n"
            f"  receipt->typing  p50 {_pct(quiet_typing, .5):7.1f} ms  p95 {_pct(quiet_typing, .95):7.1f} ms"
        )
        print(
            f"burst of {n} chats: all answered in {t_all:.2f}s\n"
            f"  webhook ack      p50 {_pct(ack_ms, .5):7.1f} ms  p95 {_pct(ack_ms, .95):7.1f} ms  max {max(ack_ms):7.1f} ms\n"
            f"  receipt->typing  p50 {_pct(typing_ms, .5):7.1f} ms  p95 {_pct(typing_ms, .95):7.1f} ms  max {max(typing_ms):7.1f} ms\n"
            f"  receipt->reply   p50 {_pct(reply_ms, .5):7.1f} ms  p95 {_pct(reply_ms, .95):7.1f} ms  max {max(reply_ms):7.1f} ms"
        )
        # Generous correctness bounds only (this 2-core machine is shared, and the
        # client, the fakes and the host share one trio thread).
        assert statistics.median(ack_ms) < 5000 and statistics.median(typing_ms) < 10000
        assert statistics.median(quiet_typing) < 1000


# ---------------------------------------------------------------- Cloud API


def _cloud_payload(
    texts: list[tuple[str, str, str]], *, phone_number_id: str = "PN1", statuses: tuple[str, ...] = (), extra: list[dict] | None = None
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"from": wa, "id": mid, "timestamp": str(int(time.time())), "type": "text", "text": {"body": body}}
        for mid, wa, body in texts
    ]
    messages += extra or []
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": f"User {wa}"}, "wa_id": wa} for _m, wa, _b in texts],
        "messages": messages,
    }
    if statuses:
        value["statuses"] = [
            {"id": f"wamid.S{i}", "status": s, "timestamp": "1", "recipient_id": "1"} for i, s in enumerate(statuses)
        ]
    return {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"value": value, "field": "messages"}]}]}


async def test_cloud_api_webhook_typing_and_reply(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        h.graph.fail_sends = 1  # a 500 from Graph is retried
        payload = _cloud_payload(
            [("wamid.IN1", "972500000001", "what are your opening hours"), ("wamid.IN2", "972500000002", "how much does it cost")],
            statuses=("delivered", "read"),
            extra=[{"from": "972500000003", "id": "wamid.IMG", "timestamp": "1", "type": "image", "image": {"id": "x"}}],
        )
        body = json.dumps(payload).encode()
        url = f"{h.url}/whatsapp/cloud"
        headers = {cloud.SIGNATURE_HEADER: cloud.sign(APP_SECRET, body), "Content-Type": "application/json"}
        r = await h.client.post(url, content=body, headers=headers)
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "accepted": 2, "duplicates": 0, "statuses": 2, "ignored": 1}
        r = await h.client.post(url, content=body, headers=headers)  # Meta redelivers
        assert r.json()["duplicates"] == 2 and r.json()["accepted"] == 0

        def answered() -> bool:
            return all(any(k == "send" for k, _v, _t in h.graph.events("PN1", wa)) for wa in ("972500000001", "972500000002"))

        await h.graph.wait_for(answered)
        for wamid, wa, answer in (("wamid.IN1", "972500000001", HOURS), ("wamid.IN2", "972500000002", PRICE)):
            events = [e for e in h.graph.events("PN1", wa) if e[0] == "send"]
            typing = [e for e in h.graph.events("PN1", wa) if e[0] == "typing" and e[1] == wamid]
            assert [v for _k, v, _t in events] == [answer]
            assert typing and typing[0][2] <= events[0][2]
        # Every request carried the token, and the typing indicator is Meta's documented shape.
        assert all(hit.headers["authorization"] == f"Bearer {TOKEN}" for hit in h.graph.hits)
        typing_bodies = [hit.body for hit in h.graph.hits if hit.body.get("status") == "read"]
        assert {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1",
                "typing_indicator": {"type": "text"}} in typing_bodies
        await trio.sleep(0.1)
        assert sum(1 for hit in h.graph.hits if hit.body.get("type") == "text" and hit.status == 200) == 2
        counts = h.events()
        assert counts["whatsapp_status_delivered"] == 2 and counts["whatsapp_status_read"] == 2
        assert counts["whatsapp_ignored_image"] == 2
        assert await h.store("has_chat_message", "wamid.IN1") and not await h.store("has_chat_message", "wamid.IMG")
        rows = await h.store("chat_history", "cloud:PN1:972500000001", 10)
        assert [r["message_id"] for r in rows if r["direction"] == "in"] == ["wamid.IN1"]


# ---------------------------------------------------------------- passivation and crashes


async def test_idle_chat_passivates_and_restores_history(tmp_path: Path) -> None:
    async with running_host(tmp_path, env={"CALLENGINE_WHATSAPP_IDLE_PASSIVATE_S": "0.5"}) as h:
        chat = "972503334444@s.whatsapp.net"
        role = f"chat:{chat}"
        await h.say(chat, "p1", "I have a leak in the kitchen")
        await h.say(chat, "p2", "my name is Dana")
        assert await h.replies(chat, 2) == ["Can I have your name, please?", "What is the best phone number to reach you?"]
        assert role in h.runtime.chats.roles()
        # Idle: the tree stops itself and leaves the chats supervisor.
        with trio.fail_after(10):
            while role in h.runtime.chats.roles() or h.service.router.session(chat) is not None:
                await trio.sleep(0.05)
        assert h.events()["whatsapp_chat_passivated"] >= 1
        # The next message spawns a new tree whose planner restored the name from the store.
        await h.say(chat, "p3", "054-987-6543")  # valid in IL (054-123-... is not allocated)
        replies = await h.replies(chat, 3)
        assert replies[2].startswith("Thanks Dana.") and "leak in the kitchen" in replies[2], replies
        assert h.events()["whatsapp_history_restored"] >= 1
        with trio.fail_after(5):
            while True:
                leads = [lead for lead in await h.store("list_leads", 10) if lead["ref"] == chat]
                if leads and leads[0]["complete"]:
                    break
                await trio.sleep(0.05)
        assert leads[0]["source"] == "whatsapp" and leads[0]["fields"]["name"] == "Dana"


async def test_admin_lists_and_shows_a_live_chat_as_live(tmp_path: Path) -> None:
    async with running_host(tmp_path, env={"CALLENGINE_ADMIN_HEARTBEAT_S": "0.2"}) as h:
        chat = "972505556666@s.whatsapp.net"
        await h.say(chat, "l1", "what are your opening hours")
        assert await h.replies(chat, 1) == [HOURS]
        auth = {"Authorization": f"Bearer {ADMIN}"}
        with trio.fail_after(10):
            while True:  # the process publishes its live chats every heartbeat
                listed = (await h.client.get(f"{h.url}/admin/chats", headers=auth)).json()["chats"]
                if any(c["chat_id"] == chat and c["live"] for c in listed):
                    break
                await trio.sleep(0.1)
        detail = await h.client.get(f"{h.url}/admin/chats/{chat}", headers=auth)
        assert detail.status_code == 200
        body = detail.json()
        assert body["chat"]["chat_id"] == chat and body["chat"]["live"] is True
        assert [m["text"] for m in body["messages"]][-2:] == ["what are your opening hours", HOURS]
        missing = await h.client.get(f"{h.url}/admin/chats/972500000000@s.whatsapp.net", headers=auth)
        assert missing.status_code == 404


class _FlakyConversation:
    def __init__(self, inner: Any, crashed: set[str]) -> None:
        self._inner = inner
        self._crashed = crashed

    def reply(self, user_text: str, *, cancel: CancelToken) -> Any:
        if user_text == "crash always" or (user_text == "crash once" and user_text not in self._crashed):
            self._crashed.add(user_text)
            raise RuntimeError(f"injected planner bug on {user_text!r}")
        return self._inner.reply(user_text, cancel=cancel)

    def commit(self, user_text: str, agent_text: str, *, interrupted: bool = False) -> None:
        self._inner.commit(user_text, agent_text, interrupted=interrupted)

    def summary(self) -> str:
        return self._inner.summary()


class _FlakyPlanner:
    """The real rules planner with a bug injected on two trigger texts."""

    name = "flaky-rules"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crashed: set[str] = set()

    def open_conversation(self, business: Any, *, channel: str, history: Any = ()) -> Any:
        return _FlakyConversation(self._inner.open_conversation(business, channel=channel, history=history), self.crashed)


async def test_planner_crash_retries_the_message_once(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        h.runtime.planner = _FlakyPlanner(h.runtime.planner)
        chat = "972505556666@s.whatsapp.net"
        await h.say(chat, "k1", "what are your opening hours")
        await h.say(chat, "k2", "crash once")
        await h.say(chat, "k3", "crash always")
        await h.say(chat, "k4", "where are you located")
        replies = await h.replies(chat, 3)
        # "crash once" was retried by the restarted planner (the fallback answer),
        # "crash always" was given up after its retry, and the chat went on in order.
        assert replies == [HOURS, "Sorry, I didn't catch that. Could you say it in a few words?", WHERE]
        counts = h.events()
        assert counts["whatsapp_reply_abandoned"] == 1
        tree = h.runtime.chats.child(f"chat:{chat}")
        planner = next(c for c in tree.snapshot()["children"] if c["role"] == "planner")
        assert planner["restarts"] == 3 and "injected planner bug" in planner["last_error"]


class _OutageStore:
    """The real store behind a switch: while ``down``, every call raises ``StoreUnavailable``
    (what the PostgreSQL backend raises when its server is gone)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.down = True

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailable("injected outage")
            return attr(*args, **kwargs)

        return call


async def test_store_outage_journals_before_ack_and_dedupes(tmp_path: Path) -> None:
    async with running_host(tmp_path) as h:
        real = h.runtime.store
        outage = _OutageStore(real)
        h.runtime.store = outage
        h.runtime.writer.store = outage
        chat = "972507778888@s.whatsapp.net"
        first = await h.say(chat, "down-1", "what are your opening hours")
        assert first.answer == {"status": "accepted"}
        # Acknowledged => durable: the record is in the fsynced journal, not in the database.
        journal = h.runtime.writer.journal
        assert [r.message_id for r in journal.read()] == ["down-1"]
        assert not real.has_chat_message("down-1")
        # A redelivery while the database is down is still recognised.
        again = await h.say(chat, "down-1", "what are your opening hours")
        assert again.answer == {"status": "duplicate"}
        # The chat is answered anyway (history cannot be read: counted, not fatal).
        assert await h.replies(chat, 1) == [HOURS]
        counts = h.events()
        assert counts["whatsapp_journaled"] == 1 and counts["whatsapp_history_unavailable"] == 1
        # The database comes back: the journal replays into it.
        outage.down = False
        await trio.to_thread.run_sync(h.runtime.writer.flush)
        assert real.has_chat_message("down-1")
        assert [r["message_id"] for r in real.chat_history(chat, 10) if r["direction"] == "in"] == ["down-1"]
        await trio.sleep(0.1)
        assert h.sidecar.replies(chat) == [HOURS]


# ---------------------------------------------------------------- sans-IO units


def test_parse_inbound_accepts_the_sidecar_contract_and_names_bad_fields() -> None:
    msg = baileys.parse_inbound(_payload("ABC", "972@s.whatsapp.net", "שלום"), max_text_chars=10)
    assert (msg.id, msg.chat, msg.text, msg.to) == ("ABC", "972@s.whatsapp.net", "שלום", "15550001111@s.whatsapp.net")
    minimal = baileys.parse_inbound({"id": "x", "chat": "c", "text": "t"}, max_text_chars=10)
    assert minimal.sender == "c" and minimal.timestamp == 0
    with pytest.raises(PayloadError) as err:
        baileys.parse_inbound({"id": "x", "chat": "c", "text": "t", "push_name": 3}, max_text_chars=10)
    assert err.value.field == "push_name"


def test_cloud_signature_and_verification() -> None:
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    expected = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert cloud.sign(APP_SECRET, body) == expected
    assert cloud.signature_ok(APP_SECRET, body, expected)
    assert cloud.signature_ok(APP_SECRET, body, expected.upper().replace("SHA256=", "sha256="))
    assert not cloud.signature_ok(APP_SECRET, body + b"x", expected)
    assert not cloud.signature_ok("", body, cloud.sign("", body))
    assert not cloud.signature_ok(APP_SECRET, body, None)
    params = {"hub.mode": "subscribe", "hub.verify_token": "t", "hub.challenge": "42"}
    assert cloud.verify_subscription(params, "t") == "42"
    assert cloud.verify_subscription(params, "") is None
    assert cloud.verify_subscription({**params, "hub.verify_token": "u"}, "t") is None


def test_cloud_parse_flattens_and_names_bad_paths() -> None:
    hook = cloud.parse_webhook(
        _cloud_payload([("wamid.1", "9725", "hi")], statuses=("sent",), extra=[{"type": "reaction", "id": "r", "from": "1"}]),
        max_text_chars=100,
    )
    assert [t.message_id for t in hook.texts] == ["wamid.1"]
    assert hook.texts[0].name == "User 9725" and hook.texts[0].phone_number_id == "PN1"
    assert hook.statuses == ("sent",) and hook.ignored == ("reaction",)
    assert cloud.parse_webhook({"object": "whatsapp_business_account", "entry": []}, max_text_chars=1).texts == ()
    bad = [
        ({"object": "page", "entry": []}, "object"),
        ({"object": "whatsapp_business_account"}, "entry"),
        ({"object": "whatsapp_business_account", "entry": [3]}, "entry[0]"),
        (_cloud_payload([("wamid.1", "9725", "x" * 101)]), "entry[0].changes[0].value.messages[0].text.body"),
    ]
    for obj, field in bad:
        with pytest.raises(PayloadError) as err:
            cloud.parse_webhook(obj, max_text_chars=100)
        assert err.value.field == field
    broken = _cloud_payload([("wamid.1", "9725", "hi")])
    broken["entry"][0]["changes"][0]["value"]["metadata"] = {}
    with pytest.raises(PayloadError) as err:
        cloud.parse_webhook(broken, max_text_chars=100)
    assert err.value.field == "entry[0].changes[0].value.metadata.phone_number_id"


def test_split_text_respects_the_limit() -> None:
    text = "word " * 30
    parts = split_text(text, 22)
    assert all(len(p) <= 22 for p in parts) and " ".join(parts) == text.strip()
    assert split_text("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]
    assert split_text("  ", 5) == []
