"""Policies: attribute-based access control in a small expression language, deny by default.

The language (attributes, the grammar, the limits) is :mod:`tether.identity.policy_syntax`'s; this
module evaluates it.

Semantics — deny by default, and evaluation never raises:

- A missing attribute makes every comparison on it false: ``=``, ``!=``, ``<``, ``>`` and
  ``member?`` alike (so ``subject.env != "test"`` is false without an ``env``). A value of any
  other type than str, int, bool or a list/tuple of those (all of its items) counts as missing.
- ``not`` negates the result of its condition as it stands: ``not (subject.env = "test")`` *is*
  true for a subject without ``env``. To require the attribute, write ``subject.env != "test"``.
- ``a = b``: equal values of the same type; a string equals an integer when it is integer text
  (``"5432" = 5432``, and ``"+7"`` or ``"007"`` equal ``7``); a string equals a boolean when it is
  ``"true"`` or ``"false"``; integers never equal booleans; lists are equal item by item. ``!=``
  is true when both sides are present and not equal.
- ``<`` and ``>`` compare integers; a string that is integer text compares as its number;
  anything else (booleans, lists, other strings) makes the comparison false.
- ``x member? l`` is true when ``l`` is a list with an item equal to ``x``.
- ``a exists?`` is true when the attribute is present (with a value of a supported type).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from tether.identity.policy_syntax import (
    INTEGER_TEXT,
    MAX_DEPTH,
    MAX_LENGTH,
    NAMESPACES,
    And,
    Attribute,
    Boolean,
    Compare,
    Condition,
    Exists,
    Expr,
    Integer,
    List,
    Member,
    Not,
    Or,
    PolicyError,
    Printed,
    String,
    Value,
    format,
    parse,
)

__all__ = [
    "ALLOW_ALL",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "NAMESPACES",
    "And",
    "Attribute",
    "Boolean",
    "Compare",
    "Condition",
    "Exists",
    "Expr",
    "Integer",
    "List",
    "Member",
    "Not",
    "Or",
    "Policy",
    "PolicyError",
    "String",
    "Value",
    "evaluate",
    "format",
    "parse",
    "subject_attributes",
]

# --- evaluation ------------------------------------------------------------------------------


class _Missing(enum.Enum):
    MISSING = enum.auto()


_MISSING = _Missing.MISSING
_Scalar: TypeAlias = "str | int | bool"
_Loaded: TypeAlias = "_Scalar | tuple[_Scalar, ...] | _Missing"


def evaluate(expr: Condition, attrs: Mapping[str, object]) -> bool:
    """Whether ``attrs`` (full names such as ``"subject.role"`` to values) satisfy ``expr``.

    Never raises: a missing attribute, or a value of an unsupported type, makes the comparisons
    on it false (see the module's documentation for the exact rules).
    """
    if isinstance(expr, Boolean):
        return expr.value
    if isinstance(expr, Compare):
        left, right = _value(expr.left, attrs), _value(expr.right, attrs)
        if left is _MISSING or right is _MISSING:
            return False
        if expr.op == "=":
            return _equal(left, right)
        if expr.op == "!=":
            return not _equal(left, right)
        a, b = _number(left), _number(right)
        if a is None or b is None:
            return False
        return a < b if expr.op == "<" else a > b
    if isinstance(expr, Member):
        item, collection = _value(expr.item, attrs), _value(expr.collection, attrs)
        if item is _MISSING or not isinstance(collection, tuple):
            return False
        return any(_equal(item, x) for x in collection)
    if isinstance(expr, Exists):
        return _value(expr.attribute, attrs) is not _MISSING
    if isinstance(expr, Not):
        return not evaluate(expr.operand, attrs)
    if isinstance(expr, And):
        return all(evaluate(o, attrs) for o in expr.operands)
    if isinstance(expr, Or):
        return any(evaluate(o, attrs) for o in expr.operands)
    return False  # not a condition: deny


def _value(expr: Value, attrs: Mapping[str, object]) -> _Loaded:
    if isinstance(expr, Attribute):
        try:
            raw = attrs.get(expr.name, _MISSING)  # .get: a defaultdict must not grow
        except Exception:
            return _MISSING
        return _load(raw)
    if isinstance(expr, List):
        return tuple(i.value for i in expr.items)
    return expr.value


def _load(raw: object) -> _Loaded:
    """The caller's value as exact str/int/bool (or a tuple of them); anything else — including
    a list with any other item — or anything that fails to convert, is missing. Exact types: a
    subclass's overrides never run."""
    try:
        if isinstance(raw, list):
            items = [_scalar(x) for x in list.__iter__(raw)]
        elif isinstance(raw, tuple):
            items = [_scalar(x) for x in tuple.__iter__(raw)]
        else:
            return _scalar(raw)
        scalars = tuple(x for x in items if not isinstance(x, _Missing))
        return scalars if len(scalars) == len(items) else _MISSING
    except Exception:
        return _MISSING


def _scalar(raw: object) -> _Scalar | _Missing:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        return str.__str__(raw)
    if isinstance(raw, int):
        return int.__int__(raw)
    return _MISSING


def _number(value: _Loaded) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than int() accepts
            return None
    return None


def _equal(a: _Loaded, b: _Loaded) -> bool:
    if a is _MISSING or b is _MISSING:
        return False
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if type(a) is type(b):
        return a == b
    if isinstance(a, str):
        a, b = b, a
    if not isinstance(b, str):
        return False  # an integer and a boolean
    if isinstance(a, bool):
        return b == ("true" if a else "false")
    return _number(b) == a


# --- policies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy(Printed):
    """A parsed policy: the text as written, and its expression.

    ``Policy(text)`` and ``Policy.parse(text)`` parse (raising :class:`PolicyError`);
    ``str(policy)`` is the text as written, ``format(policy.expression)`` its canonical form.
    """

    text: str
    expression: Condition = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression", parse(self.text))

    @classmethod
    def parse(cls, text: str) -> Policy:
        return cls(text)

    def allows(self, attrs: Mapping[str, object]) -> bool:
        """Whether the policy admits ``attrs`` (never raises; deny by default)."""
        return evaluate(self.expression, attrs)

    def __str__(self) -> str:
        return self.text


def subject_attributes(identifier: str, attributes: Mapping[str, str]) -> dict[str, object]:
    """The environment for a peer: ``subject.<key>`` for each credential attribute, and
    ``subject.identifier``, which a credential attribute named ``identifier`` cannot override."""
    env: dict[str, object] = {f"subject.{k}": v for k, v in attributes.items()}
    env["subject.identifier"] = identifier
    return env


ALLOW_ALL = Policy.parse("true")
"""The policy that admits everyone (``true``)."""
