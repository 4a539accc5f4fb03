"""Wycheproof Ed25519 and X25519 vectors against the code tether's identities and channels use.

* ``ed25519_test.json`` (EdDSA verification) against
  :func:`tether.identity.identity.ed25519_verify`, the
  check behind every change-history, attestation, credential and revocation-list signature:
  ``valid`` cases verify, ``invalid`` ones do not. (Wycheproof's Ed25519 file has no private
  keys, so signing is not checked here.)
* ``x25519_test.json`` against :func:`tether.core.noise.x25519`, the same AWS-LC call as the Noise
  handshake's DH: ``valid`` cases give exactly the expected shared secret. ``acceptable`` cases
  (low-order and non-canonical public keys) give the expected secret too, or are refused with
  :class:`~tether.core.errors.InvalidArgumentError` — and only a case whose expected secret is all
  zeros (a low-order point) may be refused.

The vectors are read from ``tests/vectors/wycheproof`` (``tests/vector_files.py``); a missing file
fails collection loudly, it never skips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tether._core import x25519
from tether.core.errors import InvalidArgumentError
from tether.identity.identity import ed25519_verify
from vector_files import load


@dataclass(frozen=True)
class Ed25519Case:
    tc_id: int
    public_key: bytes
    message: bytes
    signature: bytes
    result: str
    comment: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class X25519Case:
    tc_id: int
    private: bytes
    public: bytes
    shared: bytes
    result: str
    comment: str
    flags: tuple[str, ...]


def _ed25519_cases() -> tuple[dict[str, Any], list[Ed25519Case]]:
    data = load("wycheproof/ed25519_test.json")
    cases = [
        Ed25519Case(
            tc_id=int(t["tcId"]),
            public_key=bytes.fromhex(group["publicKey"]["pk"]),
            message=bytes.fromhex(t["msg"]),
            signature=bytes.fromhex(t["sig"]),
            result=t["result"],
            comment=t["comment"],
            flags=tuple(t["flags"]),
        )
        for group in data["testGroups"]
        for t in group["tests"]
    ]
    return data, cases


def _x25519_cases() -> tuple[dict[str, Any], list[X25519Case]]:
    data = load("wycheproof/x25519_test.json")
    cases = [
        X25519Case(
            tc_id=int(t["tcId"]),
            private=bytes.fromhex(t["private"]),
            public=bytes.fromhex(t["public"]),
            shared=bytes.fromhex(t["shared"]),
            result=t["result"],
            comment=t["comment"],
            flags=tuple(t["flags"]),
        )
        for group in data["testGroups"]
        for t in group["tests"]
    ]
    return data, cases


ED25519_FILE, ED25519_CASES = _ed25519_cases()
X25519_FILE, X25519_CASES = _x25519_cases()


def _describe(case: Ed25519Case | X25519Case) -> str:
    return f"tcId {case.tc_id} ({case.result}; {case.comment or 'no comment'}; {list(case.flags)})"


# ---------------------------------------------------------------------------------------------
# The files themselves
# ---------------------------------------------------------------------------------------------


def test_ed25519_file_is_complete() -> None:
    assert ED25519_FILE["algorithm"] == "EDDSA"
    assert all(g["type"] == "EddsaVerify" for g in ED25519_FILE["testGroups"])
    assert all(g["publicKey"]["curve"] == "edwards25519" for g in ED25519_FILE["testGroups"])
    assert len(ED25519_CASES) > 0
    assert len(ED25519_CASES) == ED25519_FILE["numberOfTests"]
    assert len({c.tc_id for c in ED25519_CASES}) == len(ED25519_CASES)
    results = {c.result for c in ED25519_CASES}
    assert results <= {"valid", "invalid"}  # no "acceptable" cases to interpret
    assert {"valid", "invalid"} <= results


def test_x25519_file_is_complete() -> None:
    assert X25519_FILE["algorithm"] == "XDH"
    assert all(g["curve"] == "curve25519" for g in X25519_FILE["testGroups"])
    assert all(g["type"] == "XdhComp" for g in X25519_FILE["testGroups"])
    assert len(X25519_CASES) > 0
    assert len(X25519_CASES) == X25519_FILE["numberOfTests"]
    assert len({c.tc_id for c in X25519_CASES}) == len(X25519_CASES)
    assert {c.result for c in X25519_CASES} <= {"valid", "acceptable", "invalid"}
    assert all(len(c.private) == 32 and len(c.public) == 32 for c in X25519_CASES)


# ---------------------------------------------------------------------------------------------
# Ed25519
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ED25519_CASES, ids=lambda c: f"tc{c.tc_id}")
def test_ed25519_verify(case: Ed25519Case) -> None:
    got = ed25519_verify(case.public_key, case.message, case.signature)
    assert got is (case.result == "valid"), _describe(case)


def test_ed25519_valid_signatures_do_not_verify_other_messages() -> None:
    """A control: the valid vectors are not passing because verification says yes to anything."""
    valid = [c for c in ED25519_CASES if c.result == "valid"]
    assert valid
    for case in valid:
        assert not ed25519_verify(case.public_key, case.message + b"\0", case.signature)


# ---------------------------------------------------------------------------------------------
# X25519
# ---------------------------------------------------------------------------------------------

ZERO = bytes(32)


@pytest.mark.parametrize("case", X25519_CASES, ids=lambda c: f"tc{c.tc_id}")
def test_x25519(case: X25519Case) -> None:
    try:
        shared = x25519(case.private, case.public)
    except InvalidArgumentError:
        # Refusing is allowed only for an acceptable case whose secret is all zeros (a low-order
        # public key, which Noise allows to refuse); nothing else may be refused.
        assert case.result == "acceptable", _describe(case)
        assert case.shared == ZERO, _describe(case)
        return
    assert case.result != "invalid", _describe(case)
    assert shared == case.shared, _describe(case)


def test_x25519_refusals_are_exactly_the_all_zero_secrets() -> None:
    """Every all-zero case is refused (the implementation refuses low-order points: none may
    slip through as a zero secret), and the tally adds up to the whole file."""
    refused = accepted = 0
    for case in X25519_CASES:
        try:
            shared = x25519(case.private, case.public)
        except InvalidArgumentError:
            assert case.shared == ZERO, _describe(case)
            refused += 1
        else:
            assert shared == case.shared, _describe(case)
            assert shared != ZERO, _describe(case)
            accepted += 1
    zero_cases = sum(1 for c in X25519_CASES if c.shared == ZERO)
    assert refused == zero_cases > 0
    assert accepted + refused == len(X25519_CASES)


@pytest.mark.parametrize(("private_len", "public_len"), [(31, 32), (32, 31), (33, 32), (32, 0)])
def test_x25519_refuses_wrong_key_sizes(private_len: int, public_len: int) -> None:
    case = next(c for c in X25519_CASES if c.result == "valid")
    with pytest.raises(InvalidArgumentError):
        x25519(case.private[:private_len].ljust(private_len, b"\1"), case.public[:public_len])
