"""The rule planner against the real demo profiles (English and Hebrew)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.business import load_business, load_businesses
from engine.messages import CancelToken, EndCall, LeadCaptured, TextDelta
from engine.providers.base import Conversation, LanguagePlanner
from engine.providers.rules_planner import RulesPlanner, extract_name, extract_phone

BUSINESSES = Path(__file__).resolve().parent.parent / "config" / "businesses"


@pytest.fixture(scope="module")
def demo():
    return load_business(BUSINESSES / "demo.toml")


@pytest.fixture(scope="module")
def demo_he():
    return load_business(BUSINESSES / "demo-he.toml")


def turn(conv, text):
    """Run one user turn the way the planner actor does: reply, then commit what was said."""
    events = list(conv.reply(text, cancel=CancelToken()))
    spoken = " ".join(e.text for e in events if isinstance(e, TextDelta))
    conv.commit(text, spoken)
    return events, spoken


def leads(events):
    return [e for e in events if isinstance(e, LeadCaptured)]


def test_implements_the_interfaces(demo):
    planner = RulesPlanner()
    assert isinstance(planner, LanguagePlanner)
    assert planner.name == "rules"
    assert isinstance(planner.open_conversation(demo, channel="call"), Conversation)


def test_profiles_load_and_hebrew_profile_is_distinct():
    found = load_businesses(BUSINESSES)
    assert {"demo", "demo-he"} <= set(found)
    he = found["demo-he"]
    assert he.lang == "he" and not he.default
    assert set(he.phone_numbers).isdisjoint(found["demo"].phone_numbers)
    assert [b.id for b in found.values() if b.default] == ["demo"]


def test_three_turn_demo_conversation(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")

    events, spoken = turn(conv, "I have a leaking pipe in the kitchen")
    assert spoken == demo.prompt("ask_name")
    assert leads(events) == [LeadCaptured({"need": "a leaking pipe in the kitchen"}, complete=False)]

    events, spoken = turn(conv, "My name is David Cohen")
    assert spoken == demo.prompt("ask_phone")
    assert leads(events)[0].fields["name"] == "David Cohen"
    assert not leads(events)[0].complete

    events, spoken = turn(conv, "it's 054 987 6543")
    (lead,) = leads(events)
    assert not lead.complete  # read back first
    assert dict(lead.fields) == {
        "name": "David Cohen", "phone": "0549876543", "need": "a leaking pipe in the kitchen",
        "phone_e164": "+972549876543",
    }
    assert spoken == "I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?"  # digit by digit, grouped

    events, spoken = turn(conv, "Yes, that's right")
    (lead,) = leads(events)
    assert lead.complete and lead.fields["phone"] == "0549876543"
    assert spoken.startswith("Thanks David Cohen.")
    assert "a leaking pipe in the kitchen" in spoken
    assert not any(isinstance(e, EndCall) for e in events)
    # One TextDelta per sentence.
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["Thanks David Cohen.", deltas[1], "Anything else?"] and deltas[1].startswith("We will call")
    summary = conv.summary()
    assert "David Cohen" in summary and "0549876543" in summary and "leaking pipe" in summary
    assert "\n" not in summary


def test_chat_confirm_keeps_phone_as_digits(demo):
    conv = RulesPlanner().open_conversation(demo, channel="chat")
    turn(conv, "My name is Dana, my sink is blocked")
    _, spoken = turn(conv, "0527654321")
    assert "0527654321" in spoken and "Dana" in spoken


@pytest.mark.parametrize(
    "question, key",
    [
        ("when are you open?", "Sunday"),
        ("What are your opening hours?", "Sunday"),
        ("are you open on friday", "Sunday"),
        ("how much does it cost", "two hundred"),
        ("what's the price of a visit", "two hundred"),
        ("where are you located", "Tel Aviv"),
    ],
)
def test_faq_matches_demo_questions(demo, question, key):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    events, spoken = turn(conv, question)
    assert key in spoken
    assert not leads(events)
    assert not any(isinstance(e, EndCall) for e in events)


@pytest.mark.parametrize(
    "sentence",
    [
        "I have a leaking pipe in the kitchen",
        "My name is David Cohen",
        "the weather is nice today",
        "I want to open a drain",
        "Hello?",
    ],
)
def test_faq_does_not_match_unrelated_sentences(demo, sentence):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    _, spoken = turn(conv, sentence)
    for faq in demo.faq:
        assert faq.answers["en"] not in spoken


def test_faq_answer_followed_by_pending_lead_question(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    turn(conv, "My boiler is broken")
    events, spoken = turn(conv, "how much do you charge?")
    assert "two hundred" in spoken
    assert spoken.endswith(demo.prompt("ask_name"))
    assert "how much" in conv.summary()


@pytest.mark.parametrize("text", ["bye", "Goodbye!", "that's all", "no thanks", "No, that's it.", "ok thanks, bye"])
def test_goodbye_ends_the_call(demo, text):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    events, spoken = turn(conv, text)
    assert isinstance(events[-1], EndCall)
    assert spoken == demo.prompt("goodbye")
    assert conv.ended


def test_bare_no_after_confirm_is_goodbye_but_not_before(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    events, _ = turn(conv, "no")
    assert not any(isinstance(e, EndCall) for e in events)
    turn(conv, "I have a leak")
    turn(conv, "David")
    turn(conv, "0549876543")
    events, _ = turn(conv, "no")  # to the read-back: the number is wrong, not goodbye
    assert not any(isinstance(e, EndCall) for e in events)
    turn(conv, "0549876543")
    turn(conv, "yes")
    events, _ = turn(conv, "no")
    assert isinstance(events[-1], EndCall)


def test_hebrew_conversation(demo_he):
    conv = RulesPlanner().open_conversation(demo_he, channel="call")
    events, spoken = turn(conv, "שלום, יש לי נזילה במטבח")
    assert spoken == demo_he.prompt("ask_name")
    assert leads(events)[0].fields == {"need": "נזילה במטבח"}

    # "דוד" is a name here, not the boiler.
    events, spoken = turn(conv, "קוראים לי דוד כהן")
    assert spoken == demo_he.prompt("ask_phone")
    assert leads(events)[0].fields["name"] == "דוד כהן"
    assert leads(events)[0].fields["need"] == "נזילה במטבח"

    events, spoken = turn(conv, "המספר שלי אפס חמש ארבע תשע שמונה שבע שש חמש ארבע שלוש")
    (lead,) = leads(events)
    assert not lead.complete and lead.fields["phone"] == "0549876543"
    assert spoken == "רשמתי 0 5 4, 9 8 7, 6 5 4 3. זה נכון?"
    events, spoken = turn(conv, "כן, נכון")
    (lead,) = leads(events)
    assert lead.complete and lead.fields["phone_e164"] == "+972549876543"
    assert spoken.startswith("תודה דוד כהן.")

    _, spoken = turn(conv, "מתי אתם פתוחים?")
    assert "ראשון עד חמישי" in spoken

    events, spoken = turn(conv, "לא תודה")
    assert isinstance(events[-1], EndCall)
    assert spoken == demo_he.prompt("goodbye")


def test_hebrew_business_answers_english_chatter_in_english(demo_he):
    conv = RulesPlanner().open_conversation(demo_he, channel="chat")
    _, spoken = turn(conv, "how much does it cost?")
    assert "two hundred shekels" in spoken


def test_hebrew_weak_name_only_when_asked(demo_he):
    conv = RulesPlanner().open_conversation(demo_he, channel="call")
    events, spoken = turn(conv, "כמה זה עולה?")
    assert not leads(events)
    assert "מאתיים" in spoken
    turn(conv, "אני צריך אינסטלטור")  # a request: we ask for the name
    events, _ = turn(conv, "אני משה")
    assert leads(events)[0].fields["name"] == "משה"


@pytest.mark.parametrize(
    "text, digits",
    [
        ("zero five four one two three four five six seven", "0541234567"),
        ("my number is oh five two, seven six five, four three two one", "0527654321"),
        ("054-123-4567", "0541234567"),
        ("call me at (054) 123 45 67 please", "0541234567"),
        ("+972 54 555 1234", "+972545551234"),
        ("zero five four double five one two three four five", "0545512345"),
        ("אפס חמש שתיים, שבע שש חמש, ארבע שלוש שתיים ואחת", "0527654321"),
    ],
)
def test_extract_phone(text, digits):
    found = extract_phone(text)
    assert found is not None and found[0] == digits


@pytest.mark.parametrize(
    "text", ["I have two pipes and one sink", "call me at 12345", "oh oh oh oh oh oh oh oh", "", "1234567890123456789"]
)
def test_extract_phone_rejects(text):
    assert extract_phone(text) is None


def test_spoken_digits_fill_the_phone_slot(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    turn(conv, "I need someone to fix my boiler")
    turn(conv, "This is Ron")
    events, _ = turn(conv, "zero five four nine eight seven six five four three")
    assert leads(events)[0].fields["phone"] == "0549876543"
    events, _ = turn(conv, "yes")
    assert leads(events)[0].complete


@pytest.mark.parametrize(
    "text, asked, name",
    [
        ("my name is david cohen", False, "david cohen"),  # as said: no re-casing
        ("My name is Ann McDonald", False, "Ann McDonald"),
        ("Hi, this is Sarah, my toilet is clogged", False, "Sarah"),
        ("I'm calling about a leak", False, None),
        ("this is urgent", False, None),
        ("Dana Levi", True, "Dana Levi"),
        ("yes, Dana", True, "Dana"),
        ("Dana Levi", False, None),
        ("I don't know", True, None),
        ("שמי יעל", False, "יעל"),
    ],
)
def test_extract_name(text, asked, name):
    found = extract_name(text, asked=asked)
    assert (found[0] if found else None) == name


def test_reply_does_not_change_state(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    turn(conv, "I have a leaking pipe")
    first = list(conv.reply("My name is David Cohen", cancel=CancelToken()))
    second = list(conv.reply("My name is David Cohen", cancel=CancelToken()))
    assert first == second
    assert conv.lead == {"need": "a leaking pipe"}
    # A speculative reply to something else, thrown away, leaves no trace either.
    list(conv.reply("0549876543", cancel=CancelToken()))
    assert conv.lead == {"need": "a leaking pipe"}
    assert list(conv.reply("My name is David Cohen", cancel=CancelToken())) == first


def test_cancel_stops_the_stream(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    turn(conv, "I have a leak")
    turn(conv, "David")
    token = CancelToken()
    stream = conv.reply("0549876543", cancel=token)
    got = [next(stream), next(stream)]  # the lead, the first sentence
    assert isinstance(got[0], LeadCaptured) and isinstance(got[1], TextDelta)
    token.cancel("barge-in")
    assert list(stream) == []
    assert list(conv.reply("0549876543", cancel=token)) == []


def test_history_restores_lead_state(demo):
    history = [
        ("assistant", demo.greeting()),
        ("user", "I have a leaking pipe in the kitchen"),
        ("assistant", demo.prompt("ask_name")),
        ("user", "Dana"),
        ("assistant", demo.prompt("ask_phone")),
    ]
    conv = RulesPlanner().open_conversation(demo, channel="chat", history=history)
    assert conv.lead == {"need": "a leaking pipe in the kitchen", "name": "Dana"}
    events, _ = turn(conv, "0549876543")  # a chat: typed, so no read-back
    assert leads(events)[0].complete


def test_nothing_matched_gives_fallback_or_reasks(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    _, spoken = turn(conv, "hmm")
    assert spoken == demo.prompt("fallback")
    turn(conv, "I have a leak")
    _, spoken = turn(conv, "hmm")  # we asked for the name: ask again
    assert spoken.endswith(demo.prompt("ask_name"))


def test_bad_input_is_handled(demo):
    with pytest.raises(ValueError, match="channel"):
        RulesPlanner().open_conversation(demo, channel="fax")
    with pytest.raises(ValueError, match="role"):
        RulesPlanner().open_conversation(demo, channel="chat", history=[("system", "x")])
    conv = RulesPlanner().open_conversation(demo, channel="chat")
    for text in ["", "   ", "🙂🙂", "{name} {0} {", "\x00\x01", "א" * 5000]:
        events, _ = turn(conv, text)
        assert all(isinstance(e, (TextDelta, LeadCaptured, EndCall)) for e in events)


def test_custom_lead_field_is_asked_and_filled(demo):
    import dataclasses

    biz = dataclasses.replace(demo, lead_fields=("name", "address"))
    conv = RulesPlanner().open_conversation(biz, channel="chat")
    _, spoken = turn(conv, "My name is Dana")
    assert spoken == "What is your address?"
    events, spoken = turn(conv, "12 Herzl street, Haifa")
    (lead,) = leads(events)
    assert lead.complete and lead.fields == {"name": "Dana", "address": "12 Herzl street, Haifa"}


# ----------------------------------------------------------------- the phone slot on a call


def _up_to_phone(biz, channel="call"):
    conv = RulesPlanner().open_conversation(biz, channel=channel)
    turn(conv, "I have a leaking pipe in the kitchen")
    turn(conv, "My name is David Cohen")
    return conv


@pytest.mark.parametrize(
    "said, count",
    [
        ("zero five four nine eight seven six five", 8),  # two digits lost
        ("my number is 054 987 654", 9),  # one lost: a 7-15 digit rule took this as complete
    ],
)
def test_an_incomplete_number_is_not_stored_and_the_caller_is_told(demo, said, count):
    conv = _up_to_phone(demo)
    events, spoken = turn(conv, said)
    assert not leads(events) and "phone" not in conv.lead
    assert spoken == f"I got {count} digits; could you say the whole number again, digit by digit?"


def test_a_number_with_no_such_range_is_read_back_and_asked_again(demo):
    conv = _up_to_phone(demo)
    events, spoken = turn(conv, "0541234567")  # ten digits, but 054-1xx is not allocated
    assert not leads(events)
    assert spoken.startswith("I heard 0 5 4, 1 2 3, 4 5 6 7, which is not a phone number I can use.")


def test_a_number_split_over_two_turns_is_joined(demo):
    conv = _up_to_phone(demo)
    _, spoken = turn(conv, "zero five four nine eight seven")  # the turn ended at a pause
    assert spoken.startswith("I got 6 digits")
    events, spoken = turn(conv, "six five four three")
    assert leads(events)[0].fields["phone"] == "0549876543"
    assert spoken == "I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?"


@pytest.mark.parametrize(
    "correction, fixed, read",
    [
        ("No, the last digits are 6 5 4 4", "0549876544", "0 5 4, 9 8 7, 6 5 4 4"),
        ("no, it's five two", "0529876543", "0 5 2, 9 8 7, 6 5 4 3"),
        ("No. It's 052 765 4321.", "0527654321", "0 5 2, 7 6 5, 4 3 2 1"),
    ],
)
def test_a_correction_is_understood_and_read_back_again(demo, correction, fixed, read):
    conv = _up_to_phone(demo)
    turn(conv, "zero five four nine eight seven six five four three")
    events, spoken = turn(conv, correction)
    (lead,) = leads(events)
    assert lead.fields["phone"] == fixed and not lead.complete
    assert spoken == f"I have {read}. Is that right?"
    events, spoken = turn(conv, "yes")
    assert leads(events)[0].complete and leads(events)[0].fields["phone"] == fixed
    assert conv.lead["phone_e164"] == "+972" + fixed[1:]
    assert spoken.startswith("Thanks David Cohen. We will call you at " + read)


def test_a_bare_no_clears_the_number_and_asks_again(demo):
    conv = _up_to_phone(demo)
    turn(conv, "0549876543")
    events, spoken = turn(conv, "no")
    (lead,) = leads(events)
    assert lead.fields["phone"] == "" and lead.fields["phone_e164"] == "" and not lead.complete
    assert "phone" not in conv.lead
    assert spoken == demo.prompt("phone_again") or spoken.startswith("Sorry about that.")
    turn(conv, "0527654321")
    events, _ = turn(conv, "that's right")
    assert leads(events)[0].complete and conv.lead["phone"] == "0527654321"


def test_a_question_during_the_read_back_is_answered_then_asked_again(demo):
    conv = _up_to_phone(demo)
    turn(conv, "0549876543")
    events, spoken = turn(conv, "when are you open?")
    assert "Sunday" in spoken and spoken.endswith("I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?")
    assert not any(isinstance(e, EndCall) for e in events)
    events, _ = turn(conv, "yes")
    assert leads(events)[0].complete


def test_the_number_as_said_and_in_e164_both_reach_the_record(demo):
    conv = _up_to_phone(demo, channel="chat")
    events, _ = turn(conv, "+972 54 987 6543")
    (lead,) = leads(events)
    assert lead.complete  # a typed number needs no read-back
    assert lead.fields["phone"] == "+972549876543" and lead.fields["phone_e164"] == "+972549876543"


def test_the_business_country_decides_what_is_valid(demo):
    import dataclasses

    us = dataclasses.replace(demo, country="US")
    conv = _up_to_phone(us)
    _, spoken = turn(conv, "two one two, five five five, sixty five forty three")
    assert spoken == "I have 2 1 2, 5 5 5, 6 5 4 3. Is that right?"
    _, spoken = turn(_up_to_phone(us), "0549876543")  # an Israeli number, no +972
    assert spoken.startswith("I heard")


def test_names_and_needs_keep_the_callers_words(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    turn(conv, "My toilet is blocked and water is everywhere")
    turn(conv, "my name is dana bat-sheva levi")
    assert conv.lead["name"] == "dana bat-sheva levi"
    assert conv.lead["need"] == "my toilet is blocked and water is everywhere"
    turn(conv, "I need someone to fix my boiler, it makes a loud noise")
    assert conv.lead["need"] == "someone to fix my boiler, it makes a loud noise"


def test_hebrew_read_back_correction_and_yes(demo_he):
    conv = RulesPlanner().open_conversation(demo_he, channel="call")
    turn(conv, "יש לי סתימה בכיור")
    turn(conv, "קוראים לי יעל")
    _, spoken = turn(conv, "אפס חמש שתיים, שבע שש חמש, ארבע שלוש שתיים אחת")
    assert spoken == "רשמתי 0 5 2, 7 6 5, 4 3 2 1. זה נכון?"
    events, spoken = turn(conv, "לא, הספרות האחרונות הן ארבע שלוש שתיים שתיים")
    assert leads(events)[0].fields["phone"] == "0527654322"
    assert spoken == "רשמתי 0 5 2, 7 6 5, 4 3 2 2. זה נכון?"
    events, spoken = turn(conv, "כן")
    assert leads(events)[0].complete and spoken.startswith("תודה יעל.")


def test_business_country_is_checked_and_defaults_from_the_profile():
    from engine.business import BusinessError, parse_business

    base = {"id": "x", "name": "X", "greeting": "Hi"}
    assert parse_business({**base, "country": "il"}, "x.toml").country == "IL"
    assert parse_business({**base, "phone_numbers": ["+442071838750"]}, "x.toml").country == "GB"
    assert parse_business({**base, "language": "he-IL"}, "x.toml").country == "IL"
    assert parse_business(base, "x.toml").country == "US"  # en-US, the default language
    with pytest.raises(BusinessError, match="x.toml: key 'country'"):
        parse_business({**base, "country": "Israel"}, "x.toml")


def test_a_number_given_first_is_confirmed_then_the_missing_slots_are_asked(demo):
    conv = RulesPlanner().open_conversation(demo, channel="call")
    _, spoken = turn(conv, "Hi, my number is 054 987 6543")
    assert spoken == "I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?"
    _, spoken = turn(conv, "my sink is blocked")  # not an answer: kept, and asked again
    assert spoken == "I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?" and conv.lead["need"] == "my sink is blocked"
    events, spoken = turn(conv, "yes")
    assert spoken == demo.prompt("ask_name") and not leads(events)[0].complete
    events, spoken = turn(conv, "Dana")
    assert leads(events)[0].complete and spoken.startswith("Thanks Dana.")
