"""The policy language (:mod:`tether.identity.policy`): its expressions, the checks that keep them
well formed, printing, and parsing.

A policy is a condition over *attributes*, named with a namespace and a key:

- ``subject.*`` — the peer: ``subject.identifier`` is its authenticated identifier, and every
  attribute of its currently valid credentials appears as ``subject.<key>`` (a string);
- ``resource.*`` — what is being reached (``resource.name``...);
- ``action.*`` — what is being done (``action.name``...).

An environment is a flat mapping from full names (``"subject.role"``) to values: strings,
integers, booleans, or lists of those (:func:`subject_attributes` builds the subject part).

Grammar (EBNF; whitespace separates tokens; tightest binding first: ``not``, comparison,
``and``, ``or``)::

    policy      = disjunction ;
    disjunction = conjunction { "or" conjunction } ;
    conjunction = comparison { "and" comparison } ;
    comparison  = unary [ ( "=" | "!=" | "<" | ">" ) unary    (* values on both sides   *)
                        | "member?" unary                     (* value member? list     *)
                        | "exists?" ] ;                       (* attribute exists?      *)
    unary       = "not" unary | primary ;
    primary     = "(" disjunction ")" | attribute | flag | literal | list ;
    list        = "[" [ literal { "," literal } ] "]" ;
    literal     = string | integer | "true" | "false" ;
    attribute   = ( "subject" | "resource" | "action" ) "." key { "." key } ;
    key         = ( letter | digit | "_" | "-" ) { letter | digit | "_" | "-" } ;
    flag        = ( letter | "_" ) { letter | digit | "_" | "-" } ;  (* not a keyword *)
    string      = '"' { char other than '"' and '\\' | '\\"' | '\\\\' } '"' ;
    integer     = [ "-" ] digit { digit } ;                           (* signed 64-bit *)

The short form is part of the same grammar: a bare *flag* ``NAME`` means
``subject.NAME = "true"``, so ``web and not test`` reads ``subject.web = "true" and not
(subject.test = "true")``. The parser checks kinds: ``not``, ``and``, ``or`` and the whole policy
take *conditions* (comparisons, flags, ``true``, ``false``); comparisons take *values*
(attributes, literals, lists). Because ``not`` binds tightest, a negated comparison needs
parentheses — ``not (subject.env = "test")`` — and ``not subject.env = "test"`` is refused
rather than read one way or the other. ``member?`` wants a list or an attribute on its right;
``exists?`` follows an attribute; ``<`` and ``>`` take attributes, strings and integers;
comparisons do not chain.

A text value is quoted: ``subject.role = db-client`` is refused (a bare word is a flag), with the
hint ``did you mean subject.role = "db-client"?`` (also for ``10.0.0.1``, ``'single quotes'``).

Limits: a policy text is at most :data:`MAX_LENGTH` characters and nests at most
:data:`MAX_DEPTH` levels (each ``not``, parenthesis and operator is a level), so nothing here
can recurse without bound. Expression objects are frozen dataclasses; :func:`format` prints the
canonical full form, and ``parse(format(e)) == e`` for every expression whose canonical text is
within :data:`MAX_LENGTH`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal as TypingLiteral
from typing import NamedTuple, NoReturn, TypeAlias, cast

from tether.core.errors import TetherError

MAX_LENGTH = 4096
"""The longest policy text :func:`parse` accepts, in characters."""

MAX_DEPTH = 64
"""The deepest nesting :func:`parse` accepts (and any expression may have)."""

NAMESPACES = ("subject", "resource", "action")

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_ATTRIBUTE = re.compile(r"(?:subject|resource|action)(?:\.[A-Za-z0-9_-]+)+")
_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_FLAG = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\??")
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_DIGITS = re.compile(r"-?[0-9]*")
_KEYWORDS = frozenset({"and", "or", "not", "true", "false", "member?", "exists?"})
_COMPARISONS = ("=", "!=", "<", ">")
_OPERATORS = "=, !=, <, >, member? or exists?"
# A value a user left unquoted: up to a space, a bracket, a comma, a quote or an operator.
_BARE = re.compile(r"[^\s()\[\],\"=<>!&|]+")
_NOT_QUOTED = "a bare word is not a value: quote text values"


class PolicyError(TetherError, ValueError):
    """A policy text (or an expression built in code) is not valid.

    ``position`` is the 0-based offset into the text where the problem is, ``line`` and
    ``column`` the same place 1-based; all three are ``None`` for an expression built in code.
    ``reason`` is the message without the location; ``hint`` (or None) a suggestion, such as
    ``did you mean subject.role = "db-client"?``, printed on a last line of its own.
    """

    reason: str
    hint: str | None
    position: int | None
    line: int | None
    column: int | None

    def __init__(
        self,
        reason: str,
        text: str | None = None,
        position: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.hint = hint
        self.position = self.line = self.column = None
        if text is None or position is None:
            super().__init__(reason if hint is None else f"{reason}\n{hint}")
            return
        self.position = position
        self.line = text.count("\n", 0, position) + 1
        start = text.rfind("\n", 0, position) + 1
        end = text.find("\n", position)
        self.column = position - start + 1
        where = f"column {self.column}"
        if "\n" in text:
            where = f"line {self.line}, {where}"
        excerpt, caret = _excerpt(text[start : len(text) if end < 0 else end], self.column - 1)
        message = f"{reason} at {where}:\n  {excerpt}\n  {' ' * caret}^"
        super().__init__(message if hint is None else f"{message}\n{hint}")


def _excerpt(line: str, offset: int, width: int = 72) -> tuple[str, int]:
    """The part of ``line`` around ``offset`` to print, and the caret's offset in it."""
    # One printed character per source character, so the caret lines up.
    shown = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in line)
    if len(shown) <= width:
        return shown, offset
    start = max(0, min(offset - width // 2, len(shown) - width))
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + width < len(shown) else ""
    return prefix + shown[start : start + width] + suffix, offset - start + len(prefix)


# --- expressions -----------------------------------------------------------------------------


def _fail(reason: str | None) -> None:
    if reason is not None:
        raise PolicyError(reason)


class Printed:
    """Every expression node prints as its canonical full form (:func:`format`)."""

    __slots__ = ()

    def __str__(self) -> str:
        return format(self)  # type: ignore[arg-type]  # each subclass is an Expr


@dataclass(frozen=True, slots=True)
class Attribute(Printed):
    """The value of an attribute, by full name (``subject.role``)."""

    name: str
    depth = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ATTRIBUTE.fullmatch(self.name):
            raise PolicyError(
                f"invalid attribute name {self.name!r}: names are subject.KEY, resource.KEY "
                "or action.KEY, keys made of letters, digits, '_', '-' and inner '.'"
            )


@dataclass(frozen=True, slots=True)
class String(Printed):
    """A string literal."""

    value: str
    depth = 0

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise PolicyError(f"a String holds a str, not {type(self.value).__name__}")


@dataclass(frozen=True, slots=True)
class Integer(Printed):
    """A signed 64-bit integer literal."""

    value: int
    depth = 0

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise PolicyError(f"an Integer holds an int, not {type(self.value).__name__}")
        if not _INT_MIN <= self.value <= _INT_MAX:
            raise PolicyError("integer out of range: integers are signed 64-bit")


@dataclass(frozen=True, slots=True)
class Boolean(Printed):
    """``true`` or ``false``: a literal, and also a condition by itself."""

    value: bool
    depth = 0

    def __post_init__(self) -> None:
        if not isinstance(self.value, bool):
            raise PolicyError(f"a Boolean holds a bool, not {type(self.value).__name__}")


Scalar: TypeAlias = "String | Integer | Boolean"


@dataclass(frozen=True, slots=True)
class List(Printed):
    """A list literal: strings, integers and booleans (no attributes, no nested lists)."""

    items: tuple[Scalar, ...]
    depth = 0

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple) or not all(
            isinstance(i, String | Integer | Boolean) for i in self.items
        ):
            raise PolicyError("list items must be literals: strings, integers, true or false")


Value: TypeAlias = "Attribute | String | Integer | Boolean | List"
ComparisonOp: TypeAlias = TypingLiteral["=", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class Compare(Printed):
    """``left op right`` with ``op`` one of ``=``, ``!=``, ``<``, ``>``."""

    op: ComparisonOp
    left: Value
    right: Value
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in _COMPARISONS:
            raise PolicyError(f"unknown comparison {self.op!r}: use =, !=, < or >")
        problem = _compare_problem(self.op, self.left, self.right)
        _fail(problem and problem[1])
        object.__setattr__(self, "depth", 1)


@dataclass(frozen=True, slots=True)
class Member(Printed):
    """``item member? collection``: the collection is a list literal or an attribute."""

    item: Value
    collection: Value
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _member_problem(self.item, self.collection)
        _fail(problem and problem[1])
        object.__setattr__(self, "depth", 1)


@dataclass(frozen=True, slots=True)
class Exists(Printed):
    """``attribute exists?``."""

    attribute: Attribute
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _fail(_exists_problem(self.attribute))
        object.__setattr__(self, "depth", 1)


@dataclass(frozen=True, slots=True)
class Not(Printed):
    """``not operand``."""

    operand: Condition
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _fail(_not_problem(self.operand))
        object.__setattr__(self, "depth", _checked_depth(1 + self.operand.depth))


@dataclass(frozen=True, slots=True)
class And(Printed):
    """``a and b and ...``: two or more conditions."""

    operands: tuple[Condition, ...]
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _fail(_junction_problem(self.operands))
        object.__setattr__(self, "depth", _checked_depth(1 + max(o.depth for o in self.operands)))


@dataclass(frozen=True, slots=True)
class Or(Printed):
    """``a or b or ...``: two or more conditions."""

    operands: tuple[Condition, ...]
    depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _fail(_junction_problem(self.operands))
        object.__setattr__(self, "depth", _checked_depth(1 + max(o.depth for o in self.operands)))


Condition: TypeAlias = "Boolean | Compare | Member | Exists | Not | And | Or"
Expr: TypeAlias = "Value | Condition"

_VALUES = (Attribute, String, Integer, Boolean, List)
_CONDITIONS = (Boolean, Compare, Member, Exists, Not, And, Or)
_NOT_A_CONDITION = f"expected a condition, got a value (compare it with {_OPERATORS})"
_NOT_A_VALUE = (
    "expected a value, got a condition (comparisons do not chain, and a negated comparison "
    "needs parentheses: not (a = b))"
)
_NEGATED_VALUE = "not applies to a condition; to negate a comparison, parenthesize it: not (a = b)"


def _checked_depth(depth: int) -> int:
    if depth > MAX_DEPTH:
        raise PolicyError(f"nesting deeper than {MAX_DEPTH} levels")
    return depth


# Each check returns None, or (0 for the left operand / 1 for the right, reason): the
# constructors raise the reason, the parser points at the operand.
def _compare_problem(op: str, left: object, right: object) -> tuple[int, str] | None:
    for side, operand in enumerate((left, right)):
        if not isinstance(operand, _VALUES):
            return side, _NOT_A_VALUE
        if op in ("<", ">") and isinstance(operand, Boolean | List):
            return side, f"{op!r} compares integers, not booleans or lists"
    return None


def _member_problem(item: object, collection: object) -> tuple[int, str] | None:
    if not isinstance(item, _VALUES):
        return 0, _NOT_A_VALUE
    if isinstance(item, List):
        return 0, "member? tests one value, not a list"
    if not isinstance(collection, List | Attribute):
        return 1, "member? needs a list or an attribute on its right"
    return None


def _exists_problem(attribute: object) -> str | None:
    if not isinstance(attribute, Attribute):
        return "exists? follows an attribute (subject.KEY exists?)"
    return None


def _not_problem(operand: object) -> str | None:
    if isinstance(operand, _CONDITIONS):
        return None
    return _NEGATED_VALUE if isinstance(operand, _VALUES) else _NOT_A_CONDITION


def _junction_problem(operands: object) -> str | None:
    if not isinstance(operands, tuple) or len(operands) < 2:
        return "and/or join a tuple of two or more conditions"
    if not all(isinstance(o, _CONDITIONS) for o in operands):
        return _NOT_A_CONDITION
    return None


# --- printing --------------------------------------------------------------------------------


def format(expr: Expr) -> str:
    """The canonical full-form text of ``expr``: single spaces, no redundant parentheses, no
    short forms. ``parse(format(e)) == e`` whenever the text is within :data:`MAX_LENGTH`."""
    if isinstance(expr, Attribute):
        return expr.name
    if isinstance(expr, String):
        return '"' + expr.value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(expr, Boolean):
        return "true" if expr.value else "false"
    if isinstance(expr, Integer):
        return str(expr.value)
    if isinstance(expr, List):
        return "[" + ", ".join(format(i) for i in expr.items) + "]"
    if isinstance(expr, Compare):
        return f"{format(expr.left)} {expr.op} {format(expr.right)}"
    if isinstance(expr, Member):
        return f"{format(expr.item)} member? {format(expr.collection)}"
    if isinstance(expr, Exists):
        return f"{format(expr.attribute)} exists?"
    if isinstance(expr, Not):
        inner = format(expr.operand)
        return "not " + (inner if isinstance(expr.operand, Not | Boolean) else f"({inner})")
    if isinstance(expr, And):
        # A nested and/or keeps its parentheses: the tree is printed exactly as it is.
        return " and ".join(_operand(o, isinstance(o, And | Or)) for o in expr.operands)
    if isinstance(expr, Or):
        return " or ".join(_operand(o, isinstance(o, Or)) for o in expr.operands)
    raise TypeError(f"not a policy expression: {type(expr).__name__}")


def _operand(expr: Condition, parenthesize: bool) -> str:
    return f"({format(expr)})" if parenthesize else format(expr)


# --- parsing ---------------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str  # "(", ")", "[", "]", ",", "=", "!=", "<", ">", "string", "integer", "word", "end"
    text: str
    pos: int
    value: str | int | None = None


def parse(text: str) -> Condition:
    """Parse a policy (full or short form) into its expression.

    Raises :class:`PolicyError`, pointing at the problem, for anything that is not a valid
    policy, longer than :data:`MAX_LENGTH` or nested deeper than :data:`MAX_DEPTH`.
    """
    if not isinstance(text, str):
        raise TypeError(f"a policy is a str, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise PolicyError(f"policy longer than {MAX_LENGTH} characters", text, MAX_LENGTH)
    return _Parser(text).policy()


class _Parser:
    """Recursive descent, one token of look-ahead, tokens read on demand (so the error
    reported is the leftmost one). Recursion is bounded by the nesting limit."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self.lookahead: _Token | None = None
        self.nesting = 0
        self.flags: set[int] = set()  # where the short-form flags start, for better messages
        # (left operand's start, operator, right operand's start) of each comparison so far:
        # an error in what follows an operator may be a text value left unquoted.
        self.compared: list[tuple[int, _Token, int]] = []

    def error(self, reason: str, position: int, hint: str | None = None) -> NoReturn:
        raise PolicyError(reason, self.text, position, hint or self.quote_hint(position))

    def quote_hint(self, position: int) -> str | None:
        """``did you mean subject.role = "db-client"?`` when ``position`` is in what follows a
        comparison operator and that reads as a text value left unquoted."""
        for left, op, right in reversed(self.compared):
            end = self.text.find("'", right + 1) if self.text[right : right + 1] == "'" else -1
            bare = _BARE.match(self.text, right)
            if end > right and not _BARE.match(self.text, end + 1):  # 'in single quotes'?
                run_end = end + 1
            elif bare is not None:
                run_end = bare.end()
            else:
                continue
            if not right <= position < run_end:
                continue
            value = _unquoted_value(self.text[right:run_end])
            before = ("subject." if left in self.flags else "") + self.text[left : op.pos].strip()
            if value is None or not _ATTRIBUTE.fullmatch(before):
                return None  # (``not web = x``: the left is no attribute either)
            return f"did you mean {before} {op.text} {format(String(value))}?"
        return None

    # tokens

    def peek(self) -> _Token:
        if self.lookahead is None:
            self.lookahead = self.lex()
        return self.lookahead

    def take(self) -> _Token:
        token = self.peek()
        self.lookahead = None
        return token

    def lex(self) -> _Token:
        text, i = self.text, self.offset
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i == len(text):
            self.offset = i
            return _Token("end", "", i)
        c = text[i]
        two = text[i : i + 2]
        if c in "()[],":
            token = _Token(c, c, i)
        elif two == "!=":
            token = _Token("!=", two, i)
        elif two in ("==", "<=", ">=", "<>", "=<", "=>"):
            hint = "equality is '='" if two == "==" else "write (a < b or a = b) and the like"
            self.error(f"unknown operator {two!r}: {hint}", i)
        elif c in "=<>":
            token = _Token(c, c, i)
        elif c == "!":
            self.error("unknown operator '!': negation is 'not'", i)
        elif c in "&|":
            run = re.match(r"[&|]+", text[i:])
            assert run is not None
            self.error(f"unknown operator {run.group()!r}: use 'and' or 'or'", i)
        elif c == '"':
            token = self.lex_string(i)
        elif c == "-" or (c.isascii() and c.isdigit()):
            token = self.lex_integer(i)
        elif c.isascii() and (c.isalpha() or c == "_"):
            word = _WORD.match(text, i)
            assert word is not None
            token = _Token("word", word.group(), i)
        else:
            self.error(f"unexpected character {c!r}", i)
        self.offset = i + len(token.text)
        return token

    def lex_string(self, start: int) -> _Token:
        text, i, out = self.text, start + 1, []
        while True:
            j = i
            while j < len(text) and text[j] not in '"\\':
                j += 1
            out.append(text[i:j])
            if j == len(text):
                self.error("unterminated string: no closing '\"'", start)
            if text[j] == '"':
                return _Token("string", text[start : j + 1], start, "".join(out))
            escaped = text[j + 1 : j + 2]
            if escaped not in ('"', "\\"):
                if not escaped:
                    self.error("unterminated string: no closing '\"'", start)
                self.error(f"unknown escape '\\{escaped}': only \\\" and \\\\ are escapes", j)
            out.append(escaped)
            i = j + 2

    def lex_integer(self, start: int) -> _Token:
        digits = _DIGITS.match(self.text, start)
        assert digits is not None
        literal = digits.group()
        if literal in ("", "-"):
            self.error("expected digits after '-'", start)
        value = int(literal)
        if not _INT_MIN <= value <= _INT_MAX:
            self.error("integer out of range: integers are signed 64-bit", start)
        return _Token("integer", literal, start, value)

    # grammar

    def policy(self) -> Condition:
        if self.peek().kind == "end":
            self.error("empty policy: write true to allow everything, false to allow nothing", 0)
        expr, position = self.disjunction()
        token = self.peek()
        if token.kind != "end":
            if token.kind == ")":
                self.error("unbalanced ')': no '(' to close", token.pos)
            self.unexpected_after_operand(token)
        if not isinstance(expr, _CONDITIONS):
            self.error(_NOT_A_CONDITION, position)
        return expr

    def unexpected_after_operand(self, token: _Token) -> NoReturn:
        if token.kind in _COMPARISONS:
            self.error("comparisons do not chain: join them with and", token.pos)
        if token.kind == "word" and token.text.endswith("?"):
            self.unknown_operator(token)
        self.error(
            f"expected an operator ({_OPERATORS}), 'and', 'or' or the end of the policy, "
            f"got {_show(token)}",
            token.pos,
        )

    def unknown_operator(self, token: _Token) -> NoReturn:
        self.error(f"unknown operator {token.text!r}: operators are {_OPERATORS}", token.pos)

    def disjunction(self) -> tuple[Expr, int]:
        return self.junction("or", Or, self.conjunction)

    def conjunction(self) -> tuple[Expr, int]:
        return self.junction("and", And, self.comparison)

    def junction(
        self,
        keyword: str,
        node: type[And] | type[Or],
        operand: Callable[[], tuple[Expr, int]],
    ) -> tuple[Expr, int]:
        first, start = operand()
        operands = [(first, start)]
        while (token := self.peek()).kind == "word" and token.text == keyword:
            self.take()
            operands.append(operand())
        if len(operands) == 1:
            return first, start
        conditions: list[Condition] = []
        for expr, position in operands:
            if not isinstance(expr, _CONDITIONS):
                self.error(_NOT_A_CONDITION, position)
            conditions.append(expr)
        self.check_depth(1 + max(c.depth for c in conditions), operands[1][1])
        return node(tuple(conditions)), start

    def comparison(self) -> tuple[Expr, int]:
        left, start = self.unary()
        token = self.peek()
        if token.kind in _COMPARISONS:
            self.take()
            value_at = len(self.text) - len(self.text[self.offset :].lstrip(" \t\r\n"))
            self.compared.append((start, token, value_at))  # where the right operand starts
            right, right_start = self.unary("a value")
            problem = _compare_problem(token.kind, left, right)
            if problem is not None:
                if problem[0] == 1 and right_start in self.flags:
                    self.error(_NOT_QUOTED, right_start)  # with the hint that quotes it
                hint = self.flag_hint(start, token, right_start, right)
                self.operand_error(problem, (start, right_start), hint)
            # The check above is the constructor's own, so the casts only tell mypy.
            op = cast(ComparisonOp, token.kind)
            return Compare(op, cast(Value, left), cast(Value, right)), start
        if token.kind == "word" and token.text == "member?":
            self.take()
            collection, right_start = self.unary("a list or an attribute")
            problem = _member_problem(left, collection)
            if problem is not None:
                self.operand_error(problem, (start, right_start))
            return Member(cast(Value, left), cast(Value, collection)), start
        if token.kind == "word" and token.text == "exists?":
            self.take()
            reason = _exists_problem(left)
            if reason is not None:
                self.error(reason, start)
            return Exists(cast(Attribute, left)), start
        if token.kind == "word" and token.text.endswith("?"):
            self.unknown_operator(token)
        return left, start

    def operand_error(
        self, problem: tuple[int, str], positions: tuple[int, int], hint: str | None = None
    ) -> NoReturn:
        position = positions[problem[0]]
        if position in self.flags:
            name = _FLAG.match(self.text, position)
            assert name is not None
            self.error(
                f'{name.group()!r} alone is the condition subject.{name.group()} = "true"; '
                f"write subject.{name.group()} for the attribute's value",
                position,
                hint if problem[0] == 0 else None,
            )
        self.error(problem[1], position)

    def flag_hint(self, start: int, op: _Token, right: int, operand: Expr) -> str | None:
        """``did you mean subject.role = "db-client"?`` for ``role = "db-client"``: a flag
        compared with a value, which the user meant as the attribute."""
        name = _FLAG.match(self.text, start)
        if start not in self.flags or not isinstance(operand, _VALUES) or name is None:
            return None
        meant = Attribute(f"subject.{name.group()}")
        if self.lookahead is not None or _compare_problem(op.kind, meant, operand) is not None:
            return None  # (``web < true``: no better as subject.web < true)
        value = " ".join(self.text[right : self.offset].split())
        return f"did you mean subject.{name.group()} {op.text} {value}?"

    def unary(self, expected: str = "a condition") -> tuple[Expr, int]:
        token = self.peek()
        if token.kind != "word" or token.text != "not":
            return self.primary(expected)
        self.take()
        self.enter(token.pos)
        operand, start = self.unary()
        if not isinstance(operand, _CONDITIONS):
            self.error(_NEGATED_VALUE, start)
        self.nesting -= 1
        self.check_depth(1 + operand.depth, token.pos)
        return Not(operand), token.pos

    def primary(self, expected: str) -> tuple[Expr, int]:
        token = self.take()
        if token.kind == "(":
            self.enter(token.pos)
            if self.peek().kind == "end":
                self.error("unbalanced '(': it is never closed", token.pos)
            inner, _ = self.disjunction()
            closing = self.take()
            if closing.kind != ")":
                if closing.kind == "end":
                    self.error("unbalanced '(': it is never closed", token.pos)
                self.unexpected_after_operand(closing)
            self.nesting -= 1
            return inner, token.pos
        if token.kind == "[":
            return self.list_items(token), token.pos
        if token.kind == "string":
            assert isinstance(token.value, str)
            return String(token.value), token.pos
        if token.kind == "integer":
            assert isinstance(token.value, int)
            return Integer(token.value), token.pos
        if token.kind == "word":
            return self.word(token, expected), token.pos
        self.error(f"expected {expected}, got {_show(token)}", token.pos)

    def word(self, token: _Token, expected: str) -> Expr:
        word = token.text
        if word in ("true", "false"):
            return Boolean(word == "true")
        if word in _KEYWORDS:
            self.error(f"expected {expected}, got {word!r}", token.pos)
        if word.endswith("?"):
            self.unknown_operator(token)
        if "." not in word:
            # The short form: a bare name is the flag subject.NAME = "true".
            assert _FLAG.fullmatch(word)
            self.flags.add(token.pos)
            return Compare("=", Attribute(f"subject.{word}"), String("true"))
        namespace, _, key = word.partition(".")
        if namespace not in NAMESPACES:
            self.error(
                f"unknown namespace {namespace!r}: attributes start with subject., resource. "
                "or action.",
                token.pos,
            )
        if not _KEY.fullmatch(key):
            self.error(f"invalid attribute name {word!r}: empty key or part of a key", token.pos)
        return Attribute(word)

    def list_items(self, opening: _Token) -> List:
        items: list[Scalar] = []
        while True:
            token = self.take()
            if token.kind == "end":
                self.error("unbalanced '[': it is never closed", opening.pos)
            if token.kind == "]" and not items:
                return List(())
            if token.kind == "string":
                assert isinstance(token.value, str)
                items.append(String(token.value))
            elif token.kind == "integer":
                assert isinstance(token.value, int)
                items.append(Integer(token.value))
            elif token.kind == "word" and token.text in ("true", "false"):
                items.append(Boolean(token.text == "true"))
            else:
                self.error(
                    f"list items must be literals (strings, integers, true or false), "
                    f"got {_show(token)}",
                    token.pos,
                    self.list_hint(opening),
                )
            separator = self.take()
            if separator.kind == "]":
                return List(tuple(items))
            if separator.kind == "end":
                self.error("unbalanced '[': it is never closed", opening.pos)
            if separator.kind != ",":
                self.error(f"expected ',' or ']' in a list, got {_show(separator)}", separator.pos)

    def list_hint(self, opening: _Token) -> str | None:
        """``did you mean ["admin", "ops"]?`` for ``[admin, ops]``."""
        close = self.text.find("]", opening.pos)
        if close < 0:
            return None
        items = []
        for item in self.text[opening.pos + 1 : close].split(","):
            item = item.strip()
            if _STRING.fullmatch(item) or INTEGER_TEXT.fullmatch(item) or item in ("true", "false"):
                items.append(item)
                continue
            value = _unquoted_value(item) if _BARE.fullmatch(item) else None
            if value is None:
                return None
            items.append(format(String(value)))
        return f"did you mean [{', '.join(items)}]?"

    def enter(self, position: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            self.error(f"nesting deeper than {MAX_DEPTH} levels", position)

    def check_depth(self, depth: int, position: int) -> None:
        # Checked before building, so the error points at the operator that goes too deep.
        if depth > MAX_DEPTH:
            self.error(f"nesting deeper than {MAX_DEPTH} levels", position)


_STRING = re.compile(r'"(?:[^"\\]|\\["\\])*"')


def _unquoted_value(run: str) -> str | None:
    """The text value ``run`` (a bare word where a value belongs) was meant as, or None when it
    reads as something else (a keyword, an integer, nothing)."""
    if len(run) >= 2 and run[0] == run[-1] == "'":
        run = run[1:-1]  # 'single quotes' mean the same text
    if not run or run in _KEYWORDS or _DIGITS.fullmatch(run) or INTEGER_TEXT.fullmatch(run):
        return None
    return run


def _show(token: _Token) -> str:
    return "the end of the policy" if token.kind == "end" else repr(token.text)
