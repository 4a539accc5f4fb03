"""Moving an identity, with its primary private key, to another machine (for example a second
instance of an authority): encrypted under a passphrase, refused when anything is wrong."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tether.core.errors import AlreadyExistsError, IdentityError, InvalidArgumentError
from tether.identity import credential
from tether.identity.registry import SECRET_EXPORT_PREFIX, Registry
from tether.store.local import Store

PASS = "correct horse battery"  # noqa: S105 (a test passphrase)


def registry(tmp_path: Path, name: str) -> Registry:
    return Registry(Store(tmp_path / name))


def test_an_exported_identity_issues_credentials_that_verify_as_the_original(
    tmp_path: Path,
) -> None:
    a, b = registry(tmp_path, "a"), registry(tmp_path, "b")
    original = a.create_identity("authority")
    text = a.export_secret("authority", PASS)
    assert text.startswith(SECRET_EXPORT_PREFIX)
    secret = a.vault.export_secret(original.primary_key_id).reveal()
    assert secret.hex() not in text
    assert base64.urlsafe_b64encode(secret).decode().rstrip("=") not in text
    copy = b.import_secret("auth", text, PASS)
    assert copy.identifier == original.identifier
    # The copy signs with its own credential-signing key, attested by the shared primary key.
    c = b.issue_credential("auth", "I" + "1" * 40, {"role": "db-client"}, 3600)
    verified = credential.verify(
        c.encode(), authorities={original.identifier: original.identity}, now=c.created_at
    )
    assert dict(verified.attributes) == {"role": "db-client"}
    # And it has its own secure-channel key.
    assert b.channel_identity("auth").identity.identifier == original.identifier


def test_wrong_passphrase_damage_and_duplicates_are_refused(tmp_path: Path) -> None:
    a, b = registry(tmp_path, "a"), registry(tmp_path, "b")
    a.create_identity("authority")
    text = a.export_secret("authority", PASS)
    with pytest.raises(InvalidArgumentError, match="wrong passphrase"):
        b.import_secret("x", text, PASS + "!")
    body = text[len(SECRET_EXPORT_PREFIX) :]
    for i in (0, 5, 20, 40, len(body) - 2):
        flipped = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1 :]
        with pytest.raises(InvalidArgumentError):
            b.import_secret("x", SECRET_EXPORT_PREFIX + flipped, PASS)
    for bad in ("", "hello", SECRET_EXPORT_PREFIX, SECRET_EXPORT_PREFIX + "!!!", text[:-20]):
        with pytest.raises(InvalidArgumentError):
            b.import_secret("x", bad, PASS)
    with pytest.raises(InvalidArgumentError, match="at least"):
        a.export_secret("authority", "short")
    b.import_secret("x", text, PASS)
    with pytest.raises(AlreadyExistsError):
        b.import_secret("y", text, PASS)  # the same identity twice
    with pytest.raises(AlreadyExistsError):
        a.import_secret("authority", text, PASS)  # a name (and identity) already here


def test_an_export_older_than_a_rotation_is_refused(tmp_path: Path) -> None:
    a, b = registry(tmp_path, "a"), registry(tmp_path, "b")
    a.create_identity("authority")
    old = a.export_secret("authority", PASS)
    a.rotate("authority")
    b.import_identity(a.get("authority").identity.history)  # b knows the rotated history
    with pytest.raises((IdentityError, AlreadyExistsError)):
        b.import_secret("auth", old, PASS)
    # A fresh export works.
    assert b.import_secret("auth", a.export_secret("authority", PASS), PASS).identifier == (
        a.get("authority").identifier
    )
