"""Policies (``tether/policy.py``): the expression language, its errors, and deny by default.

Unit tests pin each operator, literal, the precedence and the short form, and the position of
each kind of parse error. Properties check the printer against the parser on random trees, the
evaluator against an independent reference interpreter (below) on random attribute maps, and
that no text makes ``parse`` raise anything but :class:`PolicyError`.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.core.errors import TetherError
from tether.identity.policy import ALLOW_ALL, Policy, evaluate, subject_attributes
from tether.identity.policy_syntax import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Attribute,
    Boolean,
    Compare,
    Condition,
    Exists,
    Integer,
    List,
    Member,
    Not,
    Or,
    PolicyError,
    String,
    Value,
    format,
    parse,
)


def flag(name: str) -> Compare:
    return Compare("=", Attribute(f"subject.{name}"), String("true"))


def allows(text: str, attrs: Mapping[str, object]) -> bool:
    return evaluate(parse(text), attrs)


# --- literals and parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('""', String("")),
        ('"db-client"', String("db-client")),
        (r'"say \"hi\""', String('say "hi"')),
        (r'"back\\slash"', String("back\\slash")),
        ('"two\nlines ünï"', String("two\nlines ünï")),
        ("42", Integer(42)),
        ("-7", Integer(-7)),
        ("007", Integer(7)),
        ("9223372036854775807", Integer(2**63 - 1)),
        ("-9223372036854775808", Integer(-(2**63))),
        ("true", Boolean(True)),
        ("false", Boolean(False)),
        ("[]", List(())),
        ('[ "a" , 1,true ]', List((String("a"), Integer(1), Boolean(True)))),
    ],
)
def test_literals(text: str, value: Value) -> None:
    assert parse(f"subject.x = {text}") == Compare("=", Attribute("subject.x"), value)


@pytest.mark.parametrize(
    "name", ["subject.identifier", "resource.name", "action.verb", "subject.a.b-c_2", "subject.2fa"]
)
def test_attribute_names(name: str) -> None:
    assert parse(f"{name} exists?") == Exists(Attribute(name))


def test_every_operator_parses_to_its_node() -> None:
    a, one = Attribute("subject.a"), Integer(1)
    assert parse("subject.a = 1") == Compare("=", a, one)
    assert parse("subject.a != 1") == Compare("!=", a, one)
    assert parse("subject.a < 1") == Compare("<", a, one)
    assert parse("subject.a > 1") == Compare(">", a, one)
    assert parse('subject.a member? ["x"]') == Member(a, List((String("x"),)))
    assert parse("1 member? resource.ports") == Member(one, Attribute("resource.ports"))
    assert parse("subject.a exists?") == Exists(a)
    assert parse("not true") == Not(Boolean(True))
    assert parse("true and false") == And((Boolean(True), Boolean(False)))
    assert parse("true or false") == Or((Boolean(True), Boolean(False)))


def test_and_or_are_n_ary_and_parentheses_keep_the_tree() -> None:
    a, b, c = flag("a"), flag("b"), flag("c")
    assert parse("a and b and c") == And((a, b, c))
    assert parse("a and (b and c)") == And((a, And((b, c))))
    assert parse("(a and b) and c") == And((And((a, b)), c))
    assert parse("a or b or c") == Or((a, b, c))
    assert parse("((a))") == a


def test_precedence() -> None:
    a, b, c = flag("a"), flag("b"), flag("c")
    # and binds tighter than or
    assert parse("a or b and c") == Or((a, And((b, c))))
    assert parse("a and b or c") == Or((And((a, b)), c))
    # comparison binds tighter than and / or
    x1 = Compare("=", Attribute("subject.x"), Integer(1))
    assert parse("subject.x = 1 and b") == And((x1, b))
    assert parse("b or subject.x = 1") == Or((b, x1))
    # not binds tighter than and / or ...
    assert parse("not a and b") == And((Not(a), b))
    assert parse("not a or b") == Or((Not(a), b))
    assert parse("not (a or b)") == Not(Or((a, b)))
    # ... and tighter than comparison: `not x = y` groups as `(not x) = y`, which is refused
    # rather than silently read either way.
    with pytest.raises(PolicyError, match="parenthesize") as info:
        parse('not subject.env = "test"')
    assert info.value.column == 5
    with pytest.raises(PolicyError, match="expected a value, got a condition"):
        parse("not true = false")
    assert parse('not (subject.env = "test")') == Not(
        Compare("=", Attribute("subject.env"), String("test"))
    )


def test_short_form() -> None:
    assert parse("web") == flag("web")
    assert parse("web and not test") == parse(
        'subject.web = "true" and not (subject.test = "true")'
    )
    assert parse("db-client or _x9") == Or((flag("db-client"), flag("_x9")))
    assert parse('web and resource.name = "db"') == And(
        (flag("web"), Compare("=", Attribute("resource.name"), String("db")))
    )
    assert parse("true") == Boolean(True)
    assert parse("  false\n") == Boolean(False)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("web and not test", 'subject.web = "true" and not (subject.test = "true")'),
        ("(a)or(b and c)", 'subject.a = "true" or subject.b = "true" and subject.c = "true"'),
        ("(a or b) and c", '(subject.a = "true" or subject.b = "true") and subject.c = "true"'),
        ("a or (b or c)", 'subject.a = "true" or (subject.b = "true" or subject.c = "true")'),
        ("not not (true)", "not not true"),
        ('subject.r member?["a",-01]', 'subject.r member? ["a", -1]'),
        ('resource.n="q\\"\\\\"', 'resource.n = "q\\"\\\\"'),
        ("subject.x  exists?", "subject.x exists?"),
    ],
)
def test_format_is_canonical(text: str, canonical: str) -> None:
    assert format(parse(text)) == canonical
    assert str(parse(text)) == canonical
    assert parse(canonical) == parse(text)


# --- errors ---------------------------------------------------------------------------------


def caret_column(error: PolicyError) -> int:
    """The 1-based column the caret line points at (both excerpt lines are indented by 2; a
    hint, if any, is the line after them)."""
    lines = str(error).splitlines()
    excerpt, caret = lines[-3:-1] if error.hint else lines[-2:]
    assert caret.strip() == "^"
    assert excerpt.startswith("  ")
    return caret.index("^") - 1


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ('subject.role = "db', 16, "unterminated string"),
        ('subject.role = "db\\', 16, "unterminated string"),
        ('subject.role = "a\\n"', 18, "unknown escape"),
        ("subject.role = ", 16, "expected a value"),
        ("web and", 8, "expected a condition"),
        ("web or or test", 8, "expected a condition, got 'or'"),
        ("not", 4, "expected a condition"),
        ("(web", 1, "unbalanced '('"),
        ("(web and (test)", 1, "unbalanced '('"),
        ("web)", 4, "unbalanced ')'"),
        ("()", 2, "expected a condition, got ')'"),
        ('subject.a == "x"', 11, "unknown operator '=='"),
        ("subject.a >= 1", 11, "unknown operator '>='"),
        ("subject.a contains? 1", 11, "unknown operator 'contains?'"),
        ("web && test", 5, "unknown operator '&&'"),
        ("!web", 1, "unknown operator '!'"),
        ("subject.a in [1]", 11, "expected an operator"),
        ("subject.a = 1 = 1", 15, "comparisons do not chain"),
        ("subject.a ~ 1", 11, "unexpected character '~'"),
        ("", 1, "empty policy"),
        ("   ", 1, "empty policy"),
        ("subject.a", 1, "expected a condition, got a value"),
        ('"x" and web', 1, "expected a condition, got a value"),
        ("web and 5", 9, "expected a condition, got a value"),
        ("foo.bar = 1", 1, "unknown namespace 'foo'"),
        ("subject. = 1", 1, "invalid attribute name"),
        ("subject.a..b = 1", 1, "invalid attribute name"),
        ("subject.a = -", 13, "expected digits"),
        ("subject.a = 9223372036854775808", 13, "out of range"),
        ("subject.a = [1,", 13, "unbalanced '['"),
        ("subject.a = [1 2]", 16, "expected ',' or ']'"),
        ("subject.a = [1,]", 16, "list items must be literals"),
        ("subject.a = [subject.b]", 14, "list items must be literals"),
        ('subject.a member? "x"', 19, "member? needs a list or an attribute"),
        ("[1] member? [1]", 1, "member? tests one value"),
        ('"x" exists?', 1, "exists? follows an attribute"),
        ("subject.a < true", 13, "compares integers"),
        ("[1] > 0", 1, "compares integers"),
        ("web = true", 1, "'web' alone is the condition subject.web"),
    ],
)
def test_parse_errors_point_at_the_problem(text: str, column: int, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(text)
    error = info.value
    assert reason in error.reason
    assert error.position == column - 1
    assert error.line == 1
    assert error.column == column
    assert str(error).startswith(f"{error.reason} at column {column}:\n")
    assert caret_column(error) == column


def test_error_message_shape() -> None:
    with pytest.raises(PolicyError) as info:
        parse("subject.role = ")
    assert str(info.value) == (
        "expected a value, got the end of the policy at column 16:\n"
        "  subject.role = \n"
        "                 ^"
    )


def test_error_on_a_later_line_names_line_and_column() -> None:
    with pytest.raises(PolicyError) as info:
        parse("web and\n  not (test\n")
    error = info.value
    assert (error.line, error.column, error.position) == (2, 7, 14)
    assert "at line 2, column 7:\n    not (test\n" in str(error)
    assert caret_column(error) == 7


def test_policy_error_is_a_tether_value_error() -> None:
    assert issubclass(PolicyError, TetherError)
    assert issubclass(PolicyError, ValueError)


def test_length_limit() -> None:
    at_limit = "true" + " " * (MAX_LENGTH - 4)
    assert parse(at_limit) == Boolean(True)
    with pytest.raises(PolicyError, match=f"longer than {MAX_LENGTH}") as info:
        parse(at_limit + " ")
    assert info.value.column == MAX_LENGTH + 1
    excerpt, caret = str(info.value).splitlines()[-2:]
    assert len(excerpt) < 100  # a long line is shown as a window around the position
    assert caret.index("^") - 2 < len(excerpt)


def test_nesting_limit() -> None:
    assert parse("not " * MAX_DEPTH + "true").depth == MAX_DEPTH
    with pytest.raises(PolicyError, match="nesting deeper") as info:
        parse("not " * (MAX_DEPTH + 1) + "true")
    assert info.value.column == 4 * MAX_DEPTH + 1
    assert parse("(" * MAX_DEPTH + "web" + ")" * MAX_DEPTH) == flag("web")
    with pytest.raises(PolicyError, match="nesting deeper"):
        parse("(" * (MAX_DEPTH + 1) + "web" + ")" * (MAX_DEPTH + 1))
    # An unclosed flood of parentheses within the length limit stops at the limit, no deeper.
    with pytest.raises(PolicyError, match="nesting deeper") as info:
        parse("(" * MAX_LENGTH)
    assert info.value.column == MAX_DEPTH + 1
    # Tree depth counts too: 64 parenthesized levels of `and` put a comparison at level 65.
    nested = "web"
    for _ in range(MAX_DEPTH):
        nested = f"web and ({nested})"
    with pytest.raises(PolicyError, match="nesting deeper"):
        parse(nested)


def test_long_flat_policies_are_not_deep() -> None:
    long_and = " and ".join(["web"] * 500)
    assert len(long_and) < MAX_LENGTH
    expr = parse(long_and)
    assert expr.depth == 2
    assert evaluate(expr, {"subject.web": "true"})


def test_constructors_validate() -> None:
    a = Attribute("subject.a")
    bad: list[Callable[[], object]] = [
        lambda: Attribute("role"),
        lambda: Attribute("other.role"),
        lambda: Attribute("subject."),
        lambda: String(1),  # type: ignore[arg-type]
        lambda: Integer(True),
        lambda: Integer(2**63),
        lambda: Boolean(1),  # type: ignore[arg-type]
        lambda: List((a,)),  # type: ignore[arg-type]
        lambda: Compare("==", a, a),  # type: ignore[arg-type]
        lambda: Compare("=", flag("x"), a),  # type: ignore[arg-type]
        lambda: Compare("<", a, Boolean(True)),
        lambda: Member(List(()), a),
        lambda: Member(a, String("x")),
        lambda: Exists(String("x")),  # type: ignore[arg-type]
        lambda: Not(a),  # type: ignore[arg-type]
        lambda: And((flag("x"),)),
        lambda: Or((flag("x"), a)),  # type: ignore[arg-type]
    ]
    for make in bad:
        with pytest.raises(PolicyError) as info:
            make()
        assert info.value.position is None
        assert info.value.column is None


def test_constructors_enforce_the_depth_limit() -> None:
    expr: Condition = Boolean(True)
    for _ in range(MAX_DEPTH):
        expr = Not(expr)
    assert expr.depth == MAX_DEPTH
    with pytest.raises(PolicyError, match="nesting deeper"):
        Not(expr)
    with pytest.raises(PolicyError, match="nesting deeper"):
        And((Boolean(True), expr))


# --- evaluation -----------------------------------------------------------------------------


def test_equality_and_inequality() -> None:
    env = {"subject.role": "db-client", "subject.port": "5432", "subject.web": "true"}
    assert allows('subject.role = "db-client"', env)
    assert not allows('subject.role = "db"', env)
    assert allows('subject.role != "db"', env)
    assert not allows('subject.role != "db-client"', env)
    # a string that is integer text equals the integer; "true"/"false" equal the booleans
    assert allows("subject.port = 5432", env)
    assert allows("5432 = subject.port", env)
    assert not allows("subject.port = 5431", env)
    assert allows("subject.web = true", env)
    assert allows("subject.web != false", env)
    assert not allows("subject.role = true", env)
    # no coercion between two strings, nor between integers and booleans
    assert not allows('subject.port = "05432"', env)
    assert allows("subject.n = 7", {"subject.n": "+007"})
    assert not allows("subject.one = true", {"subject.one": 1})
    assert allows("subject.yes = true", {"subject.yes": True})
    assert not allows("subject.yes = 1", {"subject.yes": True})
    # literals against literals
    assert allows('"a" = "a"', {})
    assert allows("true != false", {})
    # lists are equal item by item
    assert allows('subject.l = ["a", 1]', {"subject.l": ["a", "1"]})
    assert not allows('subject.l = ["a"]', {"subject.l": ["a", "1"]})
    assert not allows('subject.l = "a"', {"subject.l": ["a"]})
    # attributes against attributes
    assert allows("subject.a = resource.owner", {"subject.a": "x", "resource.owner": "x"})


def test_ordering_compares_integers() -> None:
    env = {"subject.level": "3", "subject.name": "abc", "subject.n": 10, "subject.b": True}
    assert allows("subject.level > 2", env)
    assert allows("subject.level < 10", env)  # numerically, not "3" < "10" as text
    assert not allows("subject.level > 3", env)
    assert not allows("subject.level < 3", env)
    assert allows("2 < subject.level", env)
    assert allows('subject.level < "4"', env)
    assert allows("subject.n > subject.level", env)
    assert not allows("subject.name > 0", env)  # not integer text: false both ways
    assert not allows("subject.name < 0", env)
    assert not allows("subject.b > 0", env)  # booleans are not numbers
    assert allows("-5 < -4", {})
    huge = "9" * 5000  # more digits than int() accepts by default: not a number, no error
    assert not allows("subject.h > 0", {"subject.h": huge})
    assert allows("subject.h > 0", {"subject.h": "9" * 100})


def test_member() -> None:
    env = {"subject.role": "b", "subject.port": "22", "resource.allowed": ["x", "b"]}
    assert allows('subject.role member? ["a", "b"]', env)
    assert not allows('subject.role member? ["a", "c"]', env)
    assert not allows("subject.role member? []", env)
    assert allows("subject.port member? [22, 80]", env)
    assert allows("subject.role member? resource.allowed", env)
    assert not allows('"z" member? resource.allowed', env)
    assert not allows("subject.role member? subject.port", env)  # not a list: false
    assert allows('"b" member? resource.t', {"resource.t": ("a", "b")})


def test_exists() -> None:
    assert allows("subject.x exists?", {"subject.x": ""})
    assert not allows("subject.x exists?", {})
    assert not allows("subject.x exists?", {"subject.x": None})
    assert allows("not (subject.x exists?)", {})


def test_boolean_connectives() -> None:
    for a in (False, True):
        for b in (False, True):
            env = {"subject.a": str(a).lower(), "subject.b": str(b).lower()}
            assert allows("a and b", env) == (a and b)
            assert allows("a or b", env) == (a or b)
            assert allows("not a", env) == (not a)
            assert allows("a and not b or not a and b", env) == (a != b)
    assert allows("true", {})
    assert not allows("false", {})


def test_missing_attributes_deny_by_default() -> None:
    for text in [
        'subject.env = "test"',
        'subject.env != "test"',
        "subject.env < 1",
        "subject.env > 1",
        'subject.env member? ["test"]',
        '"test" member? subject.env',
        "subject.env = subject.env",
        "subject.env exists?",
        "web",
    ]:
        assert not allows(text, {}), text
    # `not` negates the condition as it stands: a missing env is "not test"
    assert allows('not (subject.env = "test")', {})
    # ... whereas != wants the attribute
    assert not allows('subject.env != "test"', {})
    assert allows('subject.env != "test"', {"subject.env": "prod"})


@pytest.mark.parametrize("value", [None, 1.5, b"web", object(), {"a": 1}, {"true"}, [["x"]]])
def test_values_of_other_types_count_as_missing(value: object) -> None:
    env = {"subject.x": value}
    for text in ["subject.x exists?", "subject.x = subject.x", "subject.x != 1", "subject.x > 0"]:
        assert not allows(text, env), text
    assert not allows('"x" member? subject.x', env)


def test_evaluate_does_not_grow_a_defaultdict() -> None:
    env: collections.defaultdict[str, object] = collections.defaultdict(lambda: "true")
    assert not allows("web", env)
    assert dict(env) == {}


class Hostile:
    """A value whose every hook raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __int__(self) -> int:
        raise RuntimeError("int")

    def __iter__(self) -> Iterator[object]:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")


class HostileStr(str):
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = str.__hash__

    def __str__(self) -> str:
        raise RuntimeError("str")


class HostileInt(int):
    def __int__(self) -> int:
        raise RuntimeError("int")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = int.__hash__


class HostileList(list[object]):
    def __iter__(self) -> Iterator[object]:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")


class HostileMapping(Mapping[str, object]):
    def __getitem__(self, key: str) -> object:
        raise RuntimeError("getitem")

    def get(self, key: str, default: object = None) -> object:
        raise RuntimeError("get")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")


def test_hostile_values_never_make_evaluation_raise() -> None:
    # Subclasses of the supported types are read as their exact base values; nothing they
    # override runs.
    env = {"subject.s": HostileStr("7"), "subject.i": HostileInt(7), "subject.l": HostileList([7])}
    assert allows("subject.s = 7 and subject.i = 7 and subject.i = subject.s", env)
    assert allows("7 member? subject.l and subject.s > 6", env)
    assert not allows("subject.h exists?", {"subject.h": Hostile()})
    assert not allows("subject.h = 1", {"subject.h": [Hostile()]})
    assert not allows("subject.h exists?", HostileMapping())
    assert allows("not (subject.h exists?)", HostileMapping())


# --- policies -------------------------------------------------------------------------------


def test_policy_object() -> None:
    policy = Policy.parse("web and not test")
    assert str(policy) == "web and not test"
    assert policy.text == "web and not test"
    assert policy.expression == parse("web and not test")
    assert policy == Policy("web and not test")
    assert policy.allows({"subject.web": "true"})
    assert not policy.allows({"subject.web": "true", "subject.test": "true"})
    assert not policy.allows({})
    with pytest.raises(PolicyError):
        Policy.parse("web and")
    assert ALLOW_ALL.allows({})
    assert str(ALLOW_ALL) == "true"


def test_subject_attributes() -> None:
    identifier = "I" + "ab" * 20
    env = subject_attributes(identifier, {"role": "db-client", "web": "true"})
    assert env == {
        "subject.identifier": identifier,
        "subject.role": "db-client",
        "subject.web": "true",
    }
    policy = Policy.parse(f'web and subject.identifier = "{identifier}"')
    assert policy.allows(env)
    # A credential attribute cannot stand in for the authenticated identifier.
    forged = subject_attributes("I" + "00" * 20, {"identifier": identifier})
    assert forged["subject.identifier"] == "I" + "00" * 20
    assert not policy.allows(forged | {"subject.web": "true"})


# --- properties -----------------------------------------------------------------------------

NAMES = ["subject.role", "subject.env", "subject.n", "subject.a.b", "resource.name", "action.x"]
TEXTS = ["", "a", "true", "false", "7", "007", "-3", "+7", "x y", 'q"\\']

names = st.sampled_from(NAMES)
attributes = names.map(Attribute)
strings = st.one_of(st.sampled_from(TEXTS), st.text(max_size=6)).map(String)
integers = st.one_of(st.integers(-10, 10), st.integers(-(2**63), 2**63 - 1)).map(Integer)
booleans = st.booleans().map(Boolean)
scalars = st.one_of(strings, integers, booleans)
lists = st.lists(scalars, max_size=4).map(lambda items: List(tuple(items)))
values = st.one_of(attributes, scalars, lists)
numeric_operands = st.one_of(attributes, strings, integers)

comparisons = st.one_of(
    st.builds(Compare, st.sampled_from(["=", "!="]), values, values),
    st.builds(Compare, st.sampled_from(["<", ">"]), numeric_operands, numeric_operands),
    st.builds(Member, st.one_of(attributes, scalars), st.one_of(attributes, lists)),
    st.builds(Exists, attributes),
    booleans,
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=4).map(lambda os: And(tuple(os))),
        st.lists(inner, min_size=2, max_size=4).map(lambda os: Or(tuple(os))),
    ),
    max_leaves=16,
)

raw_scalars = st.one_of(
    st.sampled_from(TEXTS),
    st.text(max_size=4),
    st.integers(-10, 10),
    st.integers(),
    st.booleans(),
)
raw_values = st.one_of(
    raw_scalars,
    st.lists(raw_scalars, max_size=4),
    st.lists(raw_scalars, max_size=4).map(tuple),
    st.sampled_from([None, 1.5, b"x", {"a": 1}, [[1]], ["a", None]]),
)
environments = st.dictionaries(names, raw_values)


@given(conditions)
def test_format_round_trips(expr: Condition) -> None:
    text = format(expr)
    assert parse(text) == expr
    assert format(parse(text)) == text


# The reference interpreter: values become (tag, payload) pairs — "s" string, "i" integer, "b"
# boolean, "l" list — or None when missing or unsupported; equality is a table over the tags.
Tagged = tuple[str, object]


def tag(raw: object) -> Tagged | None:
    kind = type(raw)
    if kind is str:
        return ("s", raw)
    if kind is bool:
        return ("b", raw)
    if kind is int:
        return ("i", raw)
    if kind in (list, tuple):
        assert isinstance(raw, list | tuple)
        items = [tag(x) if type(x) in (str, int, bool) else None for x in raw]
        return None if None in items else ("l", tuple(items))
    return None


def model_value(expr: Value, env: Mapping[str, object]) -> Tagged | None:
    if isinstance(expr, Attribute):
        return tag(env[expr.name]) if expr.name in env else None
    if isinstance(expr, List):
        return ("l", tuple(model_value(i, env) for i in expr.items))
    return tag(expr.value)


def integer_text(text: object) -> int | None:
    if not isinstance(text, str) or not re.fullmatch(r"[+-]?[0-9]+", text):
        return None
    try:
        return int(text)
    except ValueError:  # beyond int()'s digit limit
        return None


def model_equal(a: Tagged | None, b: Tagged | None) -> bool:
    if a is None or b is None:
        return False
    (ta, va), (tb, vb) = sorted([a, b], key=lambda t: t[0])
    pair = ta + tb
    if pair in ("ss", "ii", "bb"):
        return va == vb
    if pair == "ll":
        assert isinstance(va, tuple)
        assert isinstance(vb, tuple)
        return len(va) == len(vb) and all(model_equal(x, y) for x, y in zip(va, vb, strict=True))
    if pair == "is":
        return integer_text(vb) == va
    if pair == "bs":
        return vb == {True: "true", False: "false"}[va]  # type: ignore[index]
    return False  # "bi", or a list against a scalar


def model_number(a: Tagged | None) -> int | None:
    if a is None:
        return None
    if a[0] == "i":
        assert isinstance(a[1], int)
        return a[1]
    return integer_text(a[1]) if a[0] == "s" else None


def model(expr: Condition, env: Mapping[str, object]) -> bool:
    match expr:
        case Boolean(value=value):
            return value
        case Not(operand=operand):
            return not model(operand, env)
        case And(operands=operands):
            return all(model(o, env) for o in operands)
        case Or(operands=operands):
            return any(model(o, env) for o in operands)
        case Exists(attribute=attribute):
            return model_value(attribute, env) is not None
        case Member(item=item, collection=collection):
            a, coll = model_value(item, env), model_value(collection, env)
            if a is None or coll is None or coll[0] != "l":
                return False
            assert isinstance(coll[1], tuple)
            return any(model_equal(a, x) for x in coll[1])
        case Compare(op=op, left=left, right=right):
            a, b = model_value(left, env), model_value(right, env)
            if a is None or b is None:
                return False
            if op == "=":
                return model_equal(a, b)
            if op == "!=":
                return not model_equal(a, b)
            x, y = model_number(a), model_number(b)
            if x is None or y is None:
                return False
            return x < y if op == "<" else x > y
    raise AssertionError(expr)


@settings(max_examples=500)
@given(conditions, environments)
def test_evaluate_agrees_with_the_reference_model(expr: Condition, env: dict[str, object]) -> None:
    assert evaluate(expr, env) == model(expr, env)
    assert Policy(format(expr)).allows(env) == model(expr, env)


VOCABULARY = [
    "subject.role",
    "resource.name",
    "foo.bar",
    "subject.",
    "web",
    "not",
    "and",
    "or",
    "true",
    "false",
    "member?",
    "exists?",
    "maybe?",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "!=",
    "<",
    ">",
    "==",
    "!",
    "&&",
    "-",
    "7",
    "-12",
    "99999999999999999999",
    '"a"',
    '"',
    '"\\"',
    "\\",
    "\n",
    "é",
]
token_soup = st.lists(st.sampled_from(VOCABULARY), max_size=20).flatmap(
    lambda tokens: st.sampled_from([" ", ""]).map(lambda sep: sep.join(tokens))
)


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=40), token_soup))
def test_parse_raises_only_policy_error(text: str) -> None:
    try:
        expr = parse(text)
    except PolicyError as e:
        position = e.position
        assert position is not None
        assert 0 <= position <= len(text)
        return
    canonical = format(expr)
    assert parse(canonical) == expr
    assert format(parse(canonical)) == canonical


hostile_values = st.one_of(
    st.builds(Hostile),
    st.builds(HostileStr, st.sampled_from(TEXTS)),
    st.builds(HostileInt, st.integers(-10, 10)),
    st.builds(HostileList, st.lists(st.builds(Hostile), max_size=2)),
)


@given(conditions, st.dictionaries(names, hostile_values))
def test_evaluate_never_raises(expr: Condition, env: dict[str, object]) -> None:
    assert evaluate(expr, env) in (True, False)
