"""The policy parser's hints (``tether.identity.policy_syntax``): a text value left unquoted is
refused with a hint that quotes it (``did you mean subject.role = "db-client"?``), and the suggested
text parses and means what the user wrote. Examples, then properties (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.identity.policy import evaluate
from tether.identity.policy_syntax import PolicyError, String, format, parse

ATTRIBUTE = re.compile(r"(?:subject|resource|action)(?:\.[A-Za-z0-9_-]+)+")
KEYWORDS = {"and", "or", "not", "true", "false", "member?", "exists?"}


def hint_of(text: str) -> str | None:
    with pytest.raises(PolicyError) as info:
        parse(text)
    return info.value.hint


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("subject.role = db-client", 'did you mean subject.role = "db-client"?'),
        ("subject.role != db-client and web", 'did you mean subject.role != "db-client"?'),
        ("subject.role = 'db-client'", 'did you mean subject.role = "db-client"?'),
        ("subject.ip = 10.0.0.1", 'did you mean subject.ip = "10.0.0.1"?'),
        ("subject.email = ops@example.org", 'did you mean subject.email = "ops@example.org"?'),
        ("subject.host = example.org", 'did you mean subject.host = "example.org"?'),
        ("web or subject.v = 1.5", 'did you mean subject.v = "1.5"?'),
        ('role = "db-client"', 'did you mean subject.role = "db-client"?'),
        ('subject.team member? [ops, "dev", 3]', 'did you mean ["ops", "dev", 3]?'),
        ("subject.path = a\\b", 'did you mean subject.path = "a\\\\b"?'),
    ],
)
def test_an_unquoted_value_gets_a_hint(text: str, hint: str) -> None:
    assert hint_of(text) == hint


def test_the_hint_is_the_last_line_after_the_caret() -> None:
    with pytest.raises(PolicyError) as info:
        parse("subject.role = db-client")
    assert str(info.value) == (
        "a bare word is not a value: quote text values at column 16:\n"
        "  subject.role = db-client\n"
        "                 ^\n"
        'did you mean subject.role = "db-client"?'
    )
    assert info.value.reason == "a bare word is not a value: quote text values"


@pytest.mark.parametrize(
    "text",
    [
        "subject.a = -",  # a number half written: no text was meant
        "subject.a = 9223372036854775808",
        "subject.a = and",
        "subject.a < true",
        "web = db",  # two flags: which one is the attribute is anyone's guess
        'subject.a = "unterminated',
        "subject.a = 1 = 1",
        "foo.bar = 1",
    ],
)
def test_no_hint_where_quotes_are_not_the_fix(text: str) -> None:
    assert hint_of(text) is None


attributes = st.from_regex(r"(subject|resource|action)\.[a-z][a-z0-9_-]{0,8}", fullmatch=True)
bare_values = st.from_regex(r"[A-Za-z0-9_.:@/+'\-]{1,20}", fullmatch=True).filter(
    lambda w: (
        w not in KEYWORDS
        and not re.fullmatch(r"[+-]?[0-9]*", w)  # a number, or half of one
        and not ATTRIBUTE.fullmatch(w)  # an attribute compared with an attribute
        and not (w.startswith("'") and w.endswith("'") and re.fullmatch(r"'[+-]?[0-9]*'", w))
    )
)


@settings(max_examples=500)
@given(attributes, st.sampled_from(["=", "!="]), bare_values, st.sampled_from([" ", ""]))
def test_every_unquoted_value_is_refused_with_quotes_that_work(
    attribute: str, op: str, value: str, space: str
) -> None:
    """``ATTR = VALUE`` with VALUE bare (not a number, keyword or attribute) is refused; the
    hint quotes it; the suggestion parses and compares the attribute with that very text."""
    text = f"{attribute} {op}{space}{value}"
    meant = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value
    hint = hint_of(text)
    suggestion = f"{attribute} {op} {format(String(meant))}"
    assert hint == f"did you mean {suggestion}?", (text, hint)
    expr = parse(suggestion)
    assert evaluate(expr, {attribute: meant}) is (op == "=")
    assert evaluate(expr, {attribute: meant + "x"}) is (op == "!=")


SOUP = (
    *("subject.a", "=", "!=", "<", "db-client", "1.5", "'x'", "and", "or", "(", ")", "[", "]"),
    *(",", '"v"', "web", "member?", "a@b", "-", "7", "not", "true", ">", "'a b'", "x.y"),
)
token_soup = st.lists(st.sampled_from(SOUP), max_size=12).map(" ".join)


def error_of(text: str) -> PolicyError | None:
    try:
        parse(text)
    except PolicyError as e:
        return e
    return None


@settings(max_examples=1000)
@given(token_soup)
def test_a_suggested_comparison_parses(text: str) -> None:
    """Whatever the text, a hint that suggests a comparison suggests one that parses."""
    error = error_of(text)
    if error is None or error.hint is None:
        return
    assert error.hint.startswith("did you mean "), error.hint
    assert error.hint.endswith("?"), error.hint
    suggestion = error.hint[len("did you mean ") : -1]
    if suggestion.startswith("["):
        suggestion = f"subject.a member? {suggestion}"
    parse(suggestion)
