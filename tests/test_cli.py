"""The real ``tether`` command, driven as a user would, in temporary ``$TETHER_HOME``s."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli_run import Cli


def run(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return Cli(home).run(*args, ok=ok)


def js(home: Path, *args: str) -> Any:
    return Cli(home).js(*args)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_identity_lifecycle(home: Path) -> None:
    identifier = run(home, "identity", "create", "alice").stdout.strip()
    assert identifier.startswith("I")
    assert len(identifier) == 41
    assert (home.stat().st_mode & 0o777) == 0o700
    assert ((home / "state.sqlite3").stat().st_mode & 0o777) == 0o600

    listed = js(home, "identity", "list")
    assert [(i["name"], i["identifier"]) for i in listed] == [("alice", identifier)]
    shown = js(home, "identity", "show", "alice")
    assert shown["changes"] == 1
    assert "history" not in shown
    full = js(home, "identity", "show", "alice", "--full")
    assert bytes.fromhex(full["history"])[0] == 0x02

    rotated = js(home, "identity", "rotate", "alice")
    assert rotated["identifier"] == identifier
    assert rotated["changes"] == 2
    assert rotated["primary_key"] != shown["primary_key"]
    # The channel key stays the same, re-attested by the new primary key.
    after = js(home, "identity", "show", "alice")
    assert after["secure_channel_key"]["public_key"] == shown["secure_channel_key"]["public_key"]

    dup = run(home, "identity", "create", "alice", ok=False)
    assert dup.returncode == 1
    assert "already exists" in dup.stderr

    run(home, "identity", "delete", "alice")
    assert js(home, "identity", "list") == []
    missing = run(home, "identity", "show", "alice", ok=False)
    assert missing.returncode == 1
    assert "no identity named 'alice'" in missing.stderr
    err = json.loads(run(home, "identity", "show", "alice", "--json", ok=False).stdout)
    assert err["error"]["type"] == "NotFoundError"


def test_credentials_across_two_homes(tmp_path: Path) -> None:
    auth_home, verifier_home = tmp_path / "authority", tmp_path / "verifier"
    authority = run(auth_home, "identity", "create", "authority").stdout.strip()
    alice = run(verifier_home, "identity", "create", "alice").stdout.strip()

    issued = js(
        auth_home,
        "credential",
        "issue",
        "--issuer",
        "authority",
        "--for",
        alice,
        "--attribute",
        "role=db-client",
        "--attribute",
        "team=data",
        "--ttl",
        "2h",
    )
    assert issued["attributes"] == {"role": "db-client", "team": "data"}
    assert issued["expires_at"] - issued["created_at"] == 7200
    cred_file = tmp_path / "alice.cred"
    cred_file.write_text(issued["credential"])

    # The verifier does not know the authority yet: refused, and told what to do.
    p = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential-file",
        str(cred_file),
        ok=False,
    )
    assert p.returncode == 1
    assert "import its identity" in p.stderr

    history = js(auth_home, "identity", "show", "authority", "--full")["history"]
    run(verifier_home, "identity", "import", history)
    ok = js(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential-file",
        str(cred_file),
        "--for",
        alice,
    )
    assert ok["valid"] is True
    assert ok["attributes"] == {"role": "db-client", "team": "data"}
    human = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential",
        issued["credential"],
    ).stdout
    assert "  role=db-client" in human
    # --issuer takes a local identity's name too, as `credential issue` does.
    by_name = js(
        auth_home,
        "credential",
        "verify",
        "--issuer",
        "authority",
        "--credential",
        issued["credential"],
    )
    assert by_name["issuer"] == authority
    p = run(auth_home, "credential", "verify", "--issuer", "nobody", "--credential", "00", ok=False)
    assert p.returncode == 1
    assert "no identity named 'nobody'" in p.stderr

    # Wrong issuer, wrong subject, tampered: non-zero with the reason.
    p = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        alice,
        "--credential",
        issued["credential"],
        ok=False,
    )
    assert p.returncode == 1
    assert "issued by" in p.stderr
    p = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential",
        issued["credential"],
        "--for",
        authority,
        ok=False,
    )
    assert "is about" in p.stderr
    tampered = issued["credential"].replace(b"db-client".hex(), b"db-admin!".hex())
    assert tampered != issued["credential"]
    p = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential",
        tampered,
        ok=False,
    )
    assert p.returncode == 1
    assert "altered" in p.stderr

    # Revocation: the authority revokes and publishes its list; the verifier imports it.
    revoked = js(
        auth_home,
        "credential",
        "revoke",
        "--issuer",
        "authority",
        "--credential-file",
        str(cred_file),
    )
    assert revoked["revoked"] == issued["id"]
    p = run(
        auth_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential",
        issued["credential"],
        ok=False,
    )
    assert "revoked" in p.stderr
    run(verifier_home, "credential", "import-revocations", revoked["revocation_list"])
    p = run(
        verifier_home,
        "credential",
        "verify",
        "--issuer",
        authority,
        "--credential-file",
        str(cred_file),
        ok=False,
    )
    assert p.returncode == 1
    assert "revoked" in p.stderr
    # An old list is not accepted over a newer one.
    again = run(
        verifier_home, "credential", "import-revocations", revoked["revocation_list"], ok=False
    )
    assert "not newer" in again.stderr

    listed = js(auth_home, "credential", "list")
    assert [c["id"] for c in listed] == [issued["id"]]


def test_bad_input_gets_clear_errors(home: Path) -> None:
    run(home, "identity", "create", "authority")
    cases = [
        (["identity", "create", "bad name"], "invalid identity name"),
        (
            [
                "credential",
                "issue",
                "--issuer",
                "authority",
                "--for",
                "Inothex",
                "--attribute",
                "a=b",
            ],
            "not an identifier",
        ),
        (["credential", "verify", "--issuer", "I" + "0" * 40, "--credential", "zz"], "not hex"),
        (["credential", "verify", "--issuer", "I" + "0" * 40, "--credential", "0401"], "truncated"),
        (["identity", "import", "00"], "identity history"),
    ]
    for args, reason in cases:
        p = run(home, *args, ok=False)
        assert p.returncode == 1, args
        assert reason in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    usage = run(
        home,
        "credential",
        "issue",
        "--issuer",
        "authority",
        "--for",
        "I" + "0" * 40,
        "--ttl",
        "soon",
        ok=False,
    )
    assert usage.returncode == 2
    assert "invalid duration" in usage.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["identity"],
        ["identity", "create"],
        ["identity", "list"],
        ["identity", "show"],
        ["identity", "rotate"],
        ["identity", "delete"],
        ["identity", "import"],
        ["credential"],
        ["credential", "issue"],
        ["credential", "verify"],
        ["credential", "revoke"],
        ["credential", "import-revocations"],
        ["credential", "list"],
    ],
    ids=lambda c: " ".join(c) or "tether",
)
def test_every_command_has_help_with_an_example(command: list[str], tmp_path: Path) -> None:
    p = run(tmp_path, *command, "--help")
    assert "usage: tether" in p.stdout
    assert "example" in p.stdout


def test_no_secret_is_ever_printed(home: Path) -> None:
    outputs = [run(home, "identity", "create", "authority").stdout]
    alice = run(home, "identity", "create", "alice").stdout.strip()
    outputs.append(alice)
    for args in (
        ["identity", "list", "--json"],
        ["identity", "show", "alice", "--full", "--json"],
        ["identity", "show", "alice", "--full"],
        ["identity", "rotate", "alice", "--json"],
        ["credential", "issue", "--issuer", "authority", "--for", alice, "--json"],
        ["credential", "list", "--json"],
    ):
        p = run(home, *args)
        outputs += [p.stdout, p.stderr]
    with sqlite3.connect(home / "state.sqlite3") as db:
        secrets = [bytes(r[0]) for r in db.execute("SELECT secret FROM secrets")]
    assert len(secrets) >= 4  # two primary keys, two channel keys, one signing key
    text = "\n".join(outputs)
    for s in secrets:
        assert s.hex() not in text
        assert s.hex().upper() not in text
