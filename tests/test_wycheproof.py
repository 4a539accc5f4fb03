"""Wycheproof AEAD vectors (C2SP/wycheproof ``testvectors_v1``) against
:class:`tether.core.aead.Aead`.

The vectors are in ``tests/vectors/wycheproof`` (``tests/vectors/README.md``). A missing folder
or file, or a file that does not parse, FAILS the tests (it never skips them): a silently skipped
conformance suite is worse than none.

The AEAD layer supports exactly 256-bit keys, 96-bit nonces and 128-bit tags. For groups with those
parameters every ``valid`` case must seal to ``ct || tag`` and open back to ``msg``, and every
``invalid`` case must be refused by ``open`` with :class:`~tether.core.errors.DecryptError`
(``acceptable`` cases may go either way, but may never open to anything but ``msg``). Groups with
another key or nonce size must be refused with :class:`~tether.core.errors.InvalidArgumentError`,
and never produce output.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from tether._core import Aead
from tether.core.errors import DecryptError, InvalidArgumentError
from vector_files import VECTORS

WYCHEPROOF = VECTORS / "wycheproof"

#: Vector file -> (the ``algorithm`` field it must have, the name tether's Aead takes).
FILES: dict[str, tuple[str, str]] = {
    "aes_gcm_test.json": ("AES-GCM", "AES-256-GCM"),
    "chacha20_poly1305_test.json": ("CHACHA20-POLY1305", "ChaCha20-Poly1305"),
}

RESULTS = frozenset({"valid", "invalid", "acceptable"})


@dataclass(frozen=True)
class Case:
    file: str
    algorithm: str
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    key_size: int
    iv_size: int
    tag_size: int
    key: bytes
    iv: bytes
    aad: bytes
    msg: bytes
    ct: bytes
    tag: bytes
    result: str

    @property
    def supported(self) -> bool:
        return self.key_size == 256 and self.iv_size == 96 and self.tag_size == 128

    def describe(self) -> str:
        return (
            f"{self.file} tcId {self.tc_id} ({self.result}; key {self.key_size} bits, "
            f"iv {self.iv_size} bits, tag {self.tag_size} bits; {self.comment or 'no comment'}; "
            f"flags {list(self.flags)})"
        )


@dataclass(frozen=True)
class LoadedFile:
    name: str
    cases: tuple[Case, ...]
    declared_count: int | None
    error: str | None


def _load(name: str) -> LoadedFile:
    """Read one vector file. Problems are recorded, not raised, so that they fail tests with a
    clear message instead of breaking (or emptying) the collection."""
    path = WYCHEPROOF / name
    if not WYCHEPROOF.is_dir():
        return LoadedFile(
            name,
            (),
            None,
            f"Wycheproof vector folder {WYCHEPROOF} is missing (tests/vectors/README.md)",
        )
    if not path.is_file():
        return LoadedFile(name, (), None, f"Wycheproof vector file {path} is missing")
    expected_algorithm, tether_name = FILES[name]
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if data["algorithm"] != expected_algorithm:
            return LoadedFile(
                name,
                (),
                None,
                f"{path}: algorithm is {data['algorithm']!r}, expected {expected_algorithm!r}",
            )
        cases = []
        for group in data["testGroups"]:
            for t in group["tests"]:
                cases.append(
                    Case(
                        file=name,
                        algorithm=tether_name,
                        tc_id=int(t["tcId"]),
                        comment=t["comment"],
                        flags=tuple(t["flags"]),
                        key_size=int(group["keySize"]),
                        iv_size=int(group["ivSize"]),
                        tag_size=int(group["tagSize"]),
                        key=bytes.fromhex(t["key"]),
                        iv=bytes.fromhex(t["iv"]),
                        aad=bytes.fromhex(t["aad"]),
                        msg=bytes.fromhex(t["msg"]),
                        ct=bytes.fromhex(t["ct"]),
                        tag=bytes.fromhex(t["tag"]),
                        result=t["result"],
                    )
                )
        declared = data.get("numberOfTests")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return LoadedFile(name, (), None, f"{path} is not a readable Wycheproof AEAD file: {e!r}")
    return LoadedFile(name, tuple(cases), declared, None)


LOADED: dict[str, LoadedFile] = {name: _load(name) for name in FILES}


def _fail_if_unusable(loaded: LoadedFile) -> None:
    if loaded.error is not None:
        pytest.fail(loaded.error, pytrace=False)


def _params() -> list[Any]:
    params: list[Any] = []
    for name, loaded in LOADED.items():
        stem = name.removesuffix("_test.json")
        if loaded.error is not None or not loaded.cases:
            # One failing placeholder, so a missing or empty file cannot pass by having no cases.
            params.append(pytest.param(loaded, id=f"{stem}-UNUSABLE"))
            continue
        params.extend(pytest.param(c, id=f"{stem}-tc{c.tc_id}") for c in loaded.cases)
    return params


@pytest.mark.parametrize("name", sorted(FILES))
def test_vector_file_is_complete(name: str) -> None:
    """The file is present, parses, holds as many tests as it declares, and has cases of every
    kind this module checks (so a file emptied or cut short by mistake fails)."""
    loaded = LOADED[name]
    _fail_if_unusable(loaded)
    cases = loaded.cases
    assert cases, f"{name}: no test cases"
    assert loaded.declared_count == len(cases), (
        f"{name}: numberOfTests is {loaded.declared_count} but {len(cases)} tests were read"
    )
    ids = Counter(c.tc_id for c in cases)
    assert not [i for i, n in ids.items() if n > 1], f"{name}: duplicate tcIds"
    kinds = Counter(
        ("supported" if c.supported else "unsupported", c.result if c.supported else "-")
        for c in cases
    )
    assert kinds["supported", "valid"] > 0, f"{name}: no valid cases the layer supports"
    assert kinds["supported", "invalid"] > 0, f"{name}: no invalid cases the layer supports"
    assert kinds["unsupported", "-"] > 0, f"{name}: no cases with unsupported parameters"
    unknown = {c.result for c in cases} - RESULTS
    assert not unknown, f"{name}: unknown result values {sorted(unknown)}"


@pytest.mark.parametrize("case", _params())
def test_vector(case: Case | LoadedFile) -> None:
    if isinstance(case, LoadedFile):
        _fail_if_unusable(case)
        pytest.fail(f"{case.name}: no test cases", pytrace=False)
    what = case.describe()
    # The file's declared sizes must describe its own data, or the classification is wrong.
    assert len(case.key) * 8 == case.key_size, f"{what}: key length disagrees with keySize"
    assert len(case.iv) * 8 == case.iv_size, f"{what}: iv length disagrees with ivSize"
    assert case.result in RESULTS, f"{what}: unknown result"
    sealed = case.ct + case.tag

    if case.key_size != 256:
        with pytest.raises(InvalidArgumentError):
            Aead(case.algorithm, case.key)
        return
    aead = Aead(case.algorithm, case.key)
    if case.iv_size != 96:
        with pytest.raises(InvalidArgumentError):
            aead.seal(case.iv, case.msg, aad=case.aad)
        with pytest.raises(InvalidArgumentError):
            aead.open(case.iv, sealed, aad=case.aad)
        return
    # (Cases with an unusable key or nonce may carry no ct/tag at all; these ones must.)
    assert len(case.tag) * 8 == case.tag_size, f"{what}: tag length disagrees with tagSize"
    if case.tag_size != 128:
        # Truncated tags are not supported: such a message must never open.
        with pytest.raises((DecryptError, InvalidArgumentError)):
            aead.open(case.iv, sealed, aad=case.aad)
        return

    if case.result == "valid":
        assert aead.seal(case.iv, case.msg, aad=case.aad) == sealed, f"{what}: wrong seal output"
        assert aead.open(case.iv, sealed, aad=case.aad) == case.msg, f"{what}: wrong plaintext"
    elif case.result == "invalid":
        with pytest.raises(DecryptError):
            aead.open(case.iv, sealed, aad=case.aad)
    else:  # acceptable: refusing is fine, opening to anything but msg is not
        try:
            opened = aead.open(case.iv, sealed, aad=case.aad)
        except DecryptError:
            return
        assert opened == case.msg, f"{what}: opened to the wrong plaintext"
