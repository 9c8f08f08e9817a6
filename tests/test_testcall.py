"""Test-call tickets: the browser's way onto ``/twilio/media`` without a Twilio signature.

The pure part (issue, verify: authenticity, expiry, single use, bad input) with
a fixed clock; then against the real host (which checks Twilio signatures):
a ticket from ``POST /admin/testcall`` opens a call that is recorded like any
other, the same ticket is refused the second time, and a forged one is refused.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from engine.testcall import TICKET_TTL_S, issue, verify
from tests.conftest_host import ADMIN_TOKEN, HostProcess
from callsim import new_call_sid, new_stream_sid
from transports.twilio import CallerSideStream

# ---- the ticket ------------------------------------------------------------------------


def test_a_ticket_is_accepted_once_and_carries_its_business() -> None:
    used: dict[str, float] = {}
    ticket = issue("secret", "demo", now=1000.0)
    claims = verify("secret", ticket, now=1001.0, used=used)
    assert claims is not None and claims["b"] == "demo"
    assert verify("secret", ticket, now=1002.0, used=used) is None  # replayed


def test_a_ticket_expires() -> None:
    ticket = issue("secret", "demo", now=1000.0)
    assert verify("secret", ticket, now=1000.0 + TICKET_TTL_S + 0.01, used={}) is None
    assert verify("secret", ticket, now=1000.0 + TICKET_TTL_S - 0.01, used={}) is not None


def test_a_ticket_from_another_admin_token_is_refused() -> None:
    assert verify("other", issue("secret", "demo", now=1000.0), now=1001.0, used={}) is None
    assert verify("", issue("secret", "demo", now=1000.0), now=1001.0, used={}) is None


@pytest.mark.parametrize(
    "ticket",
    ["", ".", "a.b.c", "x" * 600, "eyJ9.bad", "%%%.%%%", "e30.AAAA", "ünïcode.ticket"],
)
def test_malformed_tickets_are_refused_without_raising(ticket: str) -> None:
    assert verify("secret", ticket, now=1000.0, used={}) is None


def test_a_tampered_payload_is_refused() -> None:
    payload, mac = issue("secret", "demo", now=1000.0).split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    assert verify("secret", f"{forged}.{mac}", now=1001.0, used={}) is None


def test_used_nonces_are_forgotten_once_expired() -> None:
    used: dict[str, float] = {}
    verify("secret", issue("secret", "demo", now=1000.0), now=1000.0, used=used)
    assert len(used) == 1
    verify("secret", issue("secret", "demo", now=2000.0), now=2000.0, used=used)
    assert len(used) == 1  # the first one expired and was dropped


# ---- against the host -------------------------------------------------------------------


def _post(host: HostProcess, path: str, body: dict | None, *, token: str | None = ADMIN_TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(host.http + path, data=json.dumps(body or {}).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_ticket_route_needs_the_admin_token(host: HostProcess) -> None:
    status, _ = await trio.to_thread.run_sync(lambda: _post(host, "/admin/testcall", {}, token=None))
    assert status == 401
    status, body = await trio.to_thread.run_sync(lambda: _post(host, "/admin/testcall", {"business": "nope"}))
    assert status == 400 and "nope" in body["error"]
    status, opts = await trio.to_thread.run_sync(lambda: host.get("/admin/testcall"))
    assert status == 200 and "demo" in {b["id"] for b in opts["businesses"]} and opts["default"] == "demo"


async def test_a_ticket_opens_one_call_and_only_one(host: HostProcess) -> None:
    status, grant = await trio.to_thread.run_sync(lambda: _post(host, "/admin/testcall", {"business": "demo"}))
    assert status == 200 and grant["business"] == "demo"
    url = grant["url"]
    assert url.startswith(f"ws://127.0.0.1:{host.port}/twilio/media?testcall=")

    proto = CallerSideStream(new_call_sid(), new_stream_sid())
    got_media = 0
    async with open_websocket_url(url) as ws:  # no X-Twilio-Signature: the ticket admits it
        await ws.send_message(proto.connected())
        await ws.send_message(proto.start({"business": "demo", "from": "browser", "testcall": "1"}))
        with trio.move_on_after(10):
            while got_media < 5:
                if json.loads(await ws.get_message()).get("event") == "media":
                    got_media += 1
        await ws.send_message(proto.stop())
    assert got_media == 5, "the greeting did not play on a test call"
    record = await trio.to_thread.run_sync(lambda: host.call_record(proto.call_sid, turns=0))
    assert record["from"] == "browser" and record["business"] == "demo"

    with pytest.raises(HandshakeError) as again:  # the same ticket, replayed
        async with open_websocket_url(url):
            pass
    assert getattr(again.value, "status_code", 403) == 403

    forged = url[: url.rindex(".") + 1] + "AAAA"
    with pytest.raises(HandshakeError) as bad:
        async with open_websocket_url(forged):
            pass
    assert getattr(bad.value, "status_code", 403) == 403
