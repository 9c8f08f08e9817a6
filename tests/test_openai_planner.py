"""OpenAIPlanner through the real ``openai`` client (httpx2) against the local SSE peer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.business import Business, FaqEntry, load_business
from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta
from engine.providers.openai_planner import MAX_SYSTEM_PROMPT, OpenAIPlanner
from tests.peers.openai_peer import OpenAIPeer, Rule

DEMO = load_business(Path(__file__).resolve().parents[1] / "config" / "businesses" / "demo.toml")
FALLBACK = DEMO.prompt("fallback")
LEAD = {"name": "Dana Levi", "phone": "050-2345678", "need": "a leaking boiler"}
SAVED = {**LEAD, "phone_e164": "+972502345678"}  # the number as given, and normalized


@pytest.fixture
def peer():
    rules = [
        Rule("Caller:", reply="Dana booked a plumber for a leaking boiler."),  # the summary request
        Rule("book me", tool="save_lead", arguments=LEAD),
        Rule("my name", tool="save_lead", arguments={"name": "Dana"}),
        Rule("short number", reply="Thanks, got it.", tool="save_lead", arguments={"phone": "054-987-654"}),
        Rule("no such number", tool="save_lead", arguments={"phone": "0541234567"}),
        Rule("with text", reply="Great, saved.", tool="save_lead", arguments=LEAD),
        Rule("bye", tool="end_call"),
        Rule("count", reply="one two three four five six"),
    ]
    with OpenAIPeer(rules) as p:
        yield p


@pytest.fixture
def planner(peer):
    p = OpenAIPlanner(base_url=peer.base_url, api_key="test-key")
    yield p
    p.close()


def run(conv, text: str, cancel: CancelToken | None = None) -> list:
    return list(conv.reply(text, cancel=cancel or CancelToken()))


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_streamed_deltas_arrive_in_order_and_incrementally(peer, planner):
    peer.set(token_delay_s=0.05)
    conv = planner.open_conversation(DEMO, channel="call")
    seen: list[tuple[float, str]] = []
    for event in conv.reply("count please", cancel=CancelToken()):
        assert isinstance(event, TextDelta)
        seen.append((time.monotonic(), event.text))
    assert [t for _, t in seen] == ["one ", "two ", "three ", "four ", "five ", "six"]
    assert seen[-1][0] - seen[0][0] >= 0.2, "deltas are yielded as they stream, not at the end"


def test_request_shape(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    run(conv, "hello")
    (body,) = peer.requests
    assert body["max_tokens"] == 220 and body["temperature"] == 0.2 and body["stream"] is True
    assert body["model"] == "gpt-4o-mini"
    assert [t["function"]["name"] for t in body["tools"]] == ["save_lead", "end_call"]
    assert set(body["tools"][0]["function"]["parameters"]["properties"]) == {"name", "phone", "need"}
    system = body["messages"][0]
    assert system["role"] == "system" and len(system["content"]) <= MAX_SYSTEM_PROMPT
    assert "Demo Plumbing" in system["content"] and "English" in system["content"]
    assert body["messages"][-1] == {"role": "user", "content": "hello"}
    assert peer.headers[0]["authorization"] == "Bearer test-key"


def test_system_prompt_stays_compact_for_a_large_profile(planner):
    big = Business(
        id="big", name="Very Long Business Name Ltd", language="he-IL", greetings={"he": "שלום"},
        persona="מאוד " * 200,
        faq=tuple(FaqEntry(questions={"he": (f"שאלה {i}",)}, answers={"he": "תשובה ארוכה " * 30}) for i in range(12)),
    )
    prompt = planner.open_conversation(big, channel="chat").system_prompt()
    assert len(prompt) <= MAX_SYSTEM_PROMPT
    assert "Very Long Business Name Ltd" in prompt and "Hebrew" in prompt and "name, phone, need" in prompt
    assert "Facts:" in prompt


def test_stall_yields_the_template_within_the_deadline(peer, planner):
    peer.set(stall_next=1, stall_s=8.0)  # headers, then nothing
    conv = planner.open_conversation(DEMO, channel="call")
    started = time.monotonic()
    events = run(conv, "count please")
    elapsed = time.monotonic() - started
    assert events == [TextDelta(FALLBACK)]
    assert 2.9 <= elapsed <= 3.5, f"template after {elapsed:.2f} s"
    assert planner.failures() == {"timeout": 1}


def test_late_headers_then_stall_still_meets_the_deadline(peer, planner):
    # httpx2's read timeout restarts when the headers arrive (at 2 s): only the overall
    # deadline gets the template out by ~3 s.
    peer.set(headers_delay_s=2.0, stall_next=1, stall_s=8.0)
    conv = planner.open_conversation(DEMO, channel="call")
    started = time.monotonic()
    events = run(conv, "count please")
    elapsed = time.monotonic() - started
    assert events == [TextDelta(FALLBACK)] and elapsed <= 3.5, f"template after {elapsed:.2f} s"


def test_stall_mid_stream_appends_the_template(peer):
    planner = OpenAIPlanner(base_url=peer.base_url, stall_timeout_s=0.5)
    peer.set(token_delay_s=1.5)
    conv = planner.open_conversation(DEMO, channel="call")
    started = time.monotonic()
    events = run(conv, "count please")
    assert time.monotonic() - started < 1.5
    assert events == [TextDelta("one "), TextDelta(" " + FALLBACK)]
    assert planner.failures() == {"stall": 1}
    planner.close()


def test_http_500_yields_the_template_without_retrying(peer, planner):
    peer.set(fail_next=1)
    conv = planner.open_conversation(DEMO, channel="call")
    started = time.monotonic()
    events = run(conv, "count please")
    assert events == [TextDelta(FALLBACK)]
    assert time.monotonic() - started < 1.0
    assert len(peer.requests) == 1, "max_retries=0: exactly one request"
    assert planner.client.max_retries == 0
    assert planner.failures() == {"http_500": 1}
    assert text_of(run(conv, "count please")).startswith("one"), "the next turn works"


def test_unreachable_server_yields_the_template():
    dead = OpenAIPeer().start()
    url = dead.base_url
    dead.stop()
    planner = OpenAIPlanner(base_url=url)
    conv = planner.open_conversation(DEMO, channel="call")
    started = time.monotonic()
    assert run(conv, "hello") == [TextDelta(FALLBACK)]
    assert time.monotonic() - started < 1.5
    assert planner.failures() == {"connection": 1}


def test_save_lead_tool_call_yields_lead_and_confirmation(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    events = run(conv, "please book me a plumber")
    assert events[0] == LeadCaptured(fields=SAVED, complete=True)
    # Read back digit by digit, grouped, on a call.
    assert text_of(events) == "Thanks Dana Levi. We will call you at 0 5 0, 2 3 4, 5 6 7 8 about a leaking boiler. Anything else?"
    # reply() does not change state: the lead is adopted on commit only.
    assert conv.lead == {}
    assert "Collect: name, phone, need" in conv.system_prompt()
    conv.commit("please book me a plumber", text_of(events))
    assert conv.lead == SAVED
    assert "Lead complete." in conv.system_prompt()


def test_partial_lead_asks_for_the_next_field_and_text_is_kept(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    events = run(conv, "my name is Dana")
    assert events == [LeadCaptured(fields={"name": "Dana"}, complete=False), TextDelta(DEMO.prompt("ask_phone"))]
    events = run(conv, "save it with text")
    assert events == [TextDelta("Great, "), TextDelta("saved."), LeadCaptured(fields=SAVED, complete=True)]


def test_save_lead_with_an_incomplete_or_invalid_number_is_not_saved_and_asks_again(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    events = run(conv, "my short number")
    # The model accepted it; the engine does not: 9 digits of a 10-digit mobile number.
    assert LeadCaptured(fields={}, complete=False) in events
    assert text_of(events) == "Thanks, got it. I got 9 digits; could you say the whole number again, digit by digit?"
    events = run(conv, "no such number")
    assert events[0] == LeadCaptured(fields={}, complete=False)
    assert text_of(events).startswith("I heard 0 5 4, 1 2 3, 4 5 6 7, which is not a phone number I can use.")
    assert "digit by digit" in conv.system_prompt() and "Collect: name, phone, need" in conv.system_prompt()


def test_speculative_reply_is_not_history(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call", history=[("user", "hi"), ("assistant", "Hello!")])
    run(conv, "thrown away")  # a speculative reply, never committed
    run(conv, "count please")
    conv.commit("count please", "one two")
    run(conv, "hello")
    msgs = [[(m["role"], m["content"]) for m in body["messages"][1:]] for body in peer.requests]
    assert msgs[1] == [("user", "hi"), ("assistant", "Hello!"), ("user", "count please")]
    assert msgs[2] == [("user", "hi"), ("assistant", "Hello!"), ("user", "count please"),
                       ("assistant", "one two"), ("user", "hello")]


def test_cancel_closes_the_stream_without_a_template(peer, planner):
    peer.set(token_delay_s=0.3)
    conv = planner.open_conversation(DEMO, channel="call")
    cancel = CancelToken()
    got = []
    started = time.monotonic()
    for event in conv.reply("count please", cancel=cancel):
        got.append(event)
        cancel.cancel("barge-in")
    assert got == [TextDelta("one ")]
    assert time.monotonic() - started < 1.0
    assert planner.failures() == {}


def test_end_call_tool_says_goodbye_then_ends(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    assert run(conv, "ok bye") == [TextDelta(DEMO.prompt("goodbye")), EndCall("goodbye")]


def test_summary(peer, planner):
    conv = planner.open_conversation(DEMO, channel="call")
    assert conv.summary() == ""  # nothing to summarize, no request
    assert peer.requests == []
    conv.commit("I need a plumber", "Sure")
    assert conv.summary() == "Dana booked a plumber for a leaking boiler."
    body = peer.requests[-1]
    assert body.get("stream") in (None, False) and "Caller: I need a plumber\nAgent: Sure" in body["messages"][-1]["content"]
    peer.set(fail_next=1)
    assert conv.summary() == ""


def test_bad_arguments():
    with pytest.raises(ValueError):
        OpenAIPlanner(api_key="", base_url="", max_tokens=0)
    planner = OpenAIPlanner(api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError):
        planner.open_conversation(DEMO, channel="fax")
