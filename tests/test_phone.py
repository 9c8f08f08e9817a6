"""Phone numbers as callers say them (``engine.phone``): spoken forms, validity for the
business's country (libphonenumber), grouped read-back, corrections."""

from __future__ import annotations

import pytest

from engine.phone import check, correct, extract_phone, read_back, typical_length


@pytest.mark.parametrize(
    "text, digits",
    [
        ("zero five four nine eight seven six five four three", "0549876543"),
        ("oh five four, nine eight seven, six five four three", "0549876543"),
        ("0 5 4 9 8 7 6 5 4 3", "0549876543"),
        ("My phone number is 054-98-76-543.", "0549876543"),
        ("zero five four double five one two three four five", "0545512345"),
        ("zero five triple seven one two three four five", "0577712345"),
        ("two one two, five five five, sixty five forty three", "2125556543"),
        ("eight hundred, five five five, one two one two", "8005551212"),
        ("nineteen", None),  # two digits: not a number
        ("plus nine seven two five four nine eight seven six five four three", "+972549876543"),
        ("אפס חמש ארבע, תשע שמונה שבע, שש חמש ארבע ושלוש", "0549876543"),
        ("I have two pipes and one sink", None),
        ("I'll be there to fix it for you", None),  # "to"/"for" are never digits
    ],
)
def test_spoken_forms(text: str, digits: str | None) -> None:
    found = extract_phone(text)
    assert (found[0] if found else None) == digits


@pytest.mark.parametrize(
    "digits, region, problem, e164",
    [
        ("0549876543", "IL", "", "+972549876543"),  # a mobile number
        ("035550100", "IL", "", "+97235550100"),  # a Tel Aviv landline
        ("+972549876543", "US", "", "+972549876543"),  # international: its own country
        ("05498765", "IL", "short", ""),  # 8 digits heard of 10
        ("054987654", "IL", "short", ""),  # 9 digits: one lost
        ("0541234567", "IL", "invalid", ""),  # 10 digits in an unallocated range
        ("054987654321", "IL", "long", ""),
        ("2125556543", "US", "", "+12125556543"),
        ("2125556543", "IL", "invalid", ""),
    ],
)
def test_validity_is_the_country_numbering_plan(digits: str, region: str, problem: str, e164: str) -> None:
    result = check(digits, region)
    assert (result.problem, result.e164) == (problem, e164)
    assert result.valid is (problem == "")


def test_read_back_is_digit_by_digit_grouped_as_written() -> None:
    assert read_back("0549876543", "IL") == "0 5 4, 9 8 7, 6 5 4 3"
    assert read_back("035550100", "IL") == "0 3, 5 5 5, 0 1 0 0"
    assert read_back("2125556543", "US") == "2 1 2, 5 5 5, 6 5 4 3"
    assert read_back("+972549876543", "IL") == "plus 9 7 2, 5 4, 9 8 7, 6 5 4 3"
    assert read_back("05498765", "IL") == "0 5 4, 9 8 7, 6 5"  # not a number: threes, then the rest
    assert typical_length("IL") == 10 and typical_length("") == 10


@pytest.mark.parametrize(
    "old, text, new",
    [
        ("0549876543", "no, the last digits are 6 5 4 4", "0549876544"),
        ("0549876543", "it ends with four four", "0549876544"),
        ("0599876543", "no, it's five four", "0549876543"),  # the group it differs from least
        ("0549876543", "no, it starts with 0 5 2", "0529876543"),
        ("0549876543", "no, it's 0 5 2 7 6 5 4 3 2 1", "0527654321"),  # a whole new number
        ("0549876543", "לא, הספרות האחרונות הן שש חמש ארבע ארבע", "0549876544"),
        ("0549876543", "no, it's 0 5 4", None),  # nothing to change
        ("0549876543", "no, the last digits are 1 2 3 4 5 6 7", None),  # no valid number results
        ("0549876543", "no it's wrong", None),
    ],
)
def test_corrections(old: str, text: str, new: str | None) -> None:
    assert correct(old, text, "IL") == new
