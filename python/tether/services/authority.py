"""The authority: a project's member registry, enrollment with one-time tickets, and the
credentials (and revocations) that policies everywhere else check.

**The service.** A node runs an authority (``Node.create_authority`` or ``tether authority
create``) as the service ``authority``. Its identity is the node's; its member registry — who
is a member (identifier → attributes), the tickets, the credentials it issued — lives in a
:mod:`shared store <tether.store.authority>`: the node's SQLite store by default, or PostgreSQL, so
that several authority instances (same identity) on different machines serve one project.

Requests reach the service only through a secure channel, so the caller is the channel's
authenticated peer. Each request and response is a JSON object (at most :data:`MAX_REQUEST`
bytes):

* ``{"op": "enroll", "secret": HEX}``: present a ticket's secret; the caller becomes a member
  with the ticket's attributes and gets a credential.
* ``{"op": "credential"}``: a fresh credential for a member (its current attributes).
* ``{"op": "revocations"}``: the signed list of revoked, unexpired credential ids.
* admin operations — the caller's member attributes must satisfy the authority's admin policy
  (default ``subject.admin = "true"``): ``create_ticket`` (``attributes``, ``expires_in``,
  ``usage_count``, ``relay``), ``add_member`` (``identifier``, ``attributes``),
  ``delete_member`` (``identifier``; its credentials are revoked), ``members``.

**Tickets.** ``tether-ticket1:`` + base64url of (version, the authority's identity history, the
route to the authority, a 32-byte random secret, a relay name). The authority stores only the
SHA-256 of the secret, with the attributes, the expiry and the uses left: a ticket cannot be
forged (the secret is unguessable), replayed beyond its usage count (the count is decremented
atomically in the shared store), or used after it expires.

**Members' side.** ``Node.enroll(ticket)`` opens a secure channel to the authority (checking its
identifier against the ticket), enrolls, stores the credential, trusts the authority for
verifying others' credentials, presents the credential in every later handshake, refreshes it
before it expires (and re-presents it on open channels), and polls the revocation list, so a
revoked credential stops granting attributes within :attr:`Membership.poll_interval`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from tether.channel.channel import SecureChannel, origin_channel
from tether.core.encoding import Reader, Writer, from_base64url, to_base64url
from tether.core.errors import (
    AlreadyExistsError,
    EncodingError,
    IdentityError,
    InvalidArgumentError,
    TetherError,
)
from tether.core.message import KIND_DATA, Address, Message, WorkerContext
from tether.identity import credential as cred
from tether.identity.identity import Identity, verify_history
from tether.identity.policy import Policy, subject_attributes
from tether.identity.registry import Registry
from tether.identity.trust import TrustPolicy
from tether.node.node import BaseNode
from tether.store.authority import SharedStore

log = logging.getLogger("tether.authority")

SERVICE = "authority"
TICKET_PREFIX = "tether-ticket1:"
SECRET_LEN = 32
MAX_HISTORY = 60_000
MAX_ROUTE = 2048
MAX_REQUEST = 64 * 1024
DEFAULT_CREDENTIAL_TTL = 30 * 24 * 3600
DEFAULT_TICKET_TTL = 10 * 60
DEFAULT_ADMIN_POLICY = 'subject.admin = "true"'
MAX_TICKET_TTL = 365 * 24 * 3600
MAX_USAGE_COUNT = 1_000_000
PURGE_INTERVAL = 3600.0


class AuthorityError(TetherError):
    """The authority refused a request (the message says why and what to do)."""


class NotAMemberError(AuthorityError):
    pass


class NotAnAdminError(AuthorityError):
    pass


# --- tickets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """What ``tether ticket create`` prints and ``tether enroll`` presents."""

    authority: Identity
    route: str
    secret: bytes = field(repr=False)
    relay: str = ""

    def encode(self) -> str:
        w = Writer().u8(1)
        w.var(self.authority.history, MAX_HISTORY)
        w.var(self.route.encode(), MAX_ROUTE)
        w.var(self.secret, SECRET_LEN)
        w.var(self.relay.encode(), 255)
        return TICKET_PREFIX + to_base64url(w.getvalue())

    @classmethod
    def decode(cls, text: str) -> Ticket:
        text = text.strip()
        if not text.startswith(TICKET_PREFIX):
            raise InvalidArgumentError(
                f"not a tether ticket: it must start with {TICKET_PREFIX!r} (copy the whole "
                "line `tether ticket create` printed)"
            )
        body = text[len(TICKET_PREFIX) :]
        if len(body) > 2 * MAX_HISTORY:
            raise InvalidArgumentError("the ticket is too long to be a tether ticket")
        try:
            raw = from_base64url(body)
        except ValueError:
            raise InvalidArgumentError(
                "the ticket is damaged (not base64url): it may hold only letters, digits, '-' "
                f"and '_' after {TICKET_PREFIX!r}"
            ) from None
        try:
            r = Reader(raw, "ticket", 4 * MAX_HISTORY)
            version = r.u8("version")
            if version != 1:  # most often text that only looks like a ticket, not a newer one
                raise InvalidArgumentError(
                    f"not a ticket: what follows {TICKET_PREFIX!r} is not a ticket this "
                    "tether can read (copy the whole line `tether ticket create` printed)"
                )
            history = r.var(MAX_HISTORY, "authority identity")
            route = r.var(MAX_ROUTE, "route").decode()
            secret = r.var(SECRET_LEN, "secret")
            relay = r.var(255, "relay").decode()
            r.end()
            authority = verify_history(history)
        except (EncodingError, IdentityError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(f"the ticket is damaged: {e}") from None
        if len(secret) != SECRET_LEN:
            raise InvalidArgumentError("the ticket is damaged: its secret has the wrong length")
        return cls(authority, route, secret, relay)

    def __repr__(self) -> str:
        return f"Ticket(authority={self.authority.identifier}, route={self.route!r})"


def _hash(secret: bytes) -> bytes:
    return hashlib.sha256(b"tether ticket\0" + secret).digest()


def _check_attributes(attributes: Any) -> dict[str, str]:
    """Attributes that a credential can carry (checked before anything is stored)."""
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise InvalidArgumentError("attributes must be an object of strings")
    if len(attributes) > cred.MAX_ATTRIBUTES:
        raise InvalidArgumentError(f"at most {cred.MAX_ATTRIBUTES} attributes")
    for k, v in attributes.items():
        if not k or len(k.encode()) > cred.MAX_KEY_LEN:
            raise InvalidArgumentError(f"attribute names are 1 to {cred.MAX_KEY_LEN} bytes: {k!r}")
        if len(v.encode()) > cred.MAX_VALUE_LEN:
            raise InvalidArgumentError(
                f"attribute {k!r}: values are at most {cred.MAX_VALUE_LEN} bytes"
            )
    return dict(attributes)


# --- the service -----------------------------------------------------------------------------


class Authority:
    """The ``authority`` service of a node (see the module documentation)."""

    def __init__(
        self,
        node: BaseNode,
        registry: Registry,
        identity_name: str,
        shared: SharedStore,
        *,
        name: str = "authority",
        credential_ttl: int = DEFAULT_CREDENTIAL_TTL,
        admin_policy: str = DEFAULT_ADMIN_POLICY,
    ) -> None:
        self.node = node
        self.registry = registry
        self.identity_name = identity_name
        self.identifier = registry.get(identity_name).identifier
        self.shared = shared
        self.name = name
        if not 0 < credential_ttl <= 5 * 365 * 86400:
            raise InvalidArgumentError(
                f"credentials live 1 s to 5 years, not {credential_ttl} s (--credential-ttl)"
            )
        self.credential_ttl = credential_ttl
        self.admin_policy = Policy.parse(admin_policy)
        self._scope = anyio.CancelScope()
        self.enrolled = 0
        self.issued = 0
        self.refused = 0
        self.last_error = ""

    @property
    def identity(self) -> Identity:
        return self.registry.get(self.identity_name).identity

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "identifier": self.identifier,
            "service": SERVICE,
            "credential_ttl": self.credential_ttl,
            "admin_policy": str(self.admin_policy),
            "database": repr(self.shared),
            "enrolled": self.enrolled,
            "issued": self.issued,
            "refused": self.refused,
            "last_error": self.last_error,
        }

    # Shared-store calls run in a worker thread (PostgreSQL may take a while; SQLite too).
    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # --- local operations (the node's operator, through its control API) -------------------

    async def create_ticket(
        self,
        attributes: Mapping[str, str],
        *,
        expires_in: int = DEFAULT_TICKET_TTL,
        usage_count: int = 1,
        relay: str = "",
        route: str,
        created_by: str | None = None,
    ) -> Ticket:
        if not 0 < expires_in <= MAX_TICKET_TTL:
            raise InvalidArgumentError(
                f"a ticket expires in 1 s to {MAX_TICKET_TTL // 86400} days, not {expires_in} s"
            )
        if not 0 < usage_count <= MAX_USAGE_COUNT:
            raise InvalidArgumentError(f"usage count must be 1 to {MAX_USAGE_COUNT}")
        attributes = _check_attributes(dict(attributes))
        secret = os.urandom(SECRET_LEN)
        now = int(time.time())
        await self._db(
            self.shared.add_ticket,
            self.identifier,
            _hash(secret),
            dict(attributes),
            expires_at=now + expires_in,
            usage_count=usage_count,
            created_by=created_by,
            now=now,
        )
        return Ticket(self.identity, route, secret, relay)

    async def add_member(
        self, identifier: str, attributes: Mapping[str, str], *, added_by: str | None = None
    ) -> None:
        if not (identifier.startswith("I") and len(identifier) == 41):
            raise InvalidArgumentError(f"not an identifier: {identifier!r} (I + 40 hex digits)")
        attributes = _check_attributes(dict(attributes))
        await self._db(
            self.shared.add_member,
            self.identifier,
            identifier,
            dict(attributes),
            added_by=added_by,
            now=int(time.time()),
        )

    async def delete_member(self, identifier: str) -> list[str]:
        """Remove a member and revoke its credentials; the revoked ids."""
        now = int(time.time())
        await self._db(self.shared.delete_member, self.identifier, identifier)
        return list(
            await self._db(self.shared.revoke_subject, self.identifier, identifier, now=now)
        )

    async def members(self) -> list[dict[str, object]]:
        ms = await self._db(self.shared.list_members, self.identifier)
        return [
            {
                "identifier": m.identifier,
                "attributes": m.attributes,
                "added_by": m.added_by,
                "added_at": m.added_at,
            }
            for m in ms
        ]

    async def issue(self, subject: str, attributes: Mapping[str, str]) -> cred.Credential:
        for _ in range(3):
            c: cred.Credential = await self._db(
                self.registry.issue_credential,
                self.identity_name,
                subject,
                dict(attributes),
                self.credential_ttl,
            )
            try:
                await self._db(
                    self.shared.record_credential,
                    self.identifier,
                    c.id,
                    subject,
                    expires_at=c.expires_at,
                    now=int(time.time()),
                )
            except AlreadyExistsError:
                # The same credential (subject, attributes, times: to the second) was issued a
                # moment ago, e.g. a member enrolling twice in one second: a distinct one comes
                # with the next second (the first may be revoked on its own).
                await anyio.sleep(1.01 - time.time() % 1.0)
                continue
            self.issued += 1
            return c
        raise TetherError(f"could not record a new credential for {subject}; try again")

    async def revocation_list(self) -> cred.RevocationList:
        now = int(time.time())
        ids = await self._db(self.shared.revoked, self.identifier, now=now)
        key_id, att = await self._db(self.registry.credential_signer, self.identity_name)
        # The sequence is the time in microseconds: instances sharing a store never go back.
        return cred.sign_revocations(
            self.registry.vault, key_id, att, ids, sequence=time.time_ns() // 1000, now=now
        )

    async def purge(self) -> int:
        """Forget expired tickets and expired credential records (the shared store would
        otherwise only grow)."""
        return int(await self._db(self.shared.purge, self.identifier, now=int(time.time())))

    async def run_maintenance(self, interval: float = PURGE_INTERVAL) -> None:
        """Purge every ``interval`` seconds (errors are logged and retried), until
        :meth:`stop`."""
        with self._scope:
            await self._maintain(interval)

    def stop(self) -> None:
        self._scope.cancel()

    async def _maintain(self, interval: float) -> None:
        while True:
            try:
                n = await self.purge()
                if n:
                    log.info("authority: purged %d expired tickets and credential records", n)
            except TetherError as e:
                log.warning("authority: could not purge expired records: %s", e)
            await anyio.sleep(interval)

    # --- the service: requests through secure channels --------------------------------------

    async def handle(self, ctx: WorkerContext, msg: Message) -> None:
        if msg.kind != KIND_DATA or not msg.return_route:
            return
        channel = origin_channel(self.node, msg.origin)
        try:
            if channel is None:
                raise AuthorityError(
                    "the authority answers only through a secure channel: add /secure/api "
                    "before /service/authority"
                )
            if len(msg.payload) > MAX_REQUEST:
                raise AuthorityError(f"request over {MAX_REQUEST} bytes")
            try:
                request = json.loads(msg.payload)
            except (ValueError, UnicodeDecodeError):
                raise AuthorityError("the request is not JSON") from None
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise AuthorityError('the request must be a JSON object with an "op"')
            response = await self._serve(channel, request)
        except (TetherError, ValueError) as e:
            self.refused += 1
            self.last_error = str(e)
            log.info("authority: refused a request: %s", e)
            response = {"ok": False, "error": str(e), "type": type(e).__name__}
        await ctx.reply(msg, json.dumps(response).encode())

    async def _serve(self, channel: SecureChannel, request: dict[str, Any]) -> dict[str, Any]:
        caller = channel.peer.identifier
        op = request["op"]
        if op == "enroll":
            secret = request.get("secret")
            try:
                raw = bytes.fromhex(secret) if isinstance(secret, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != SECRET_LEN:
                raise AuthorityError("the ticket's secret is malformed")
            info = await self._db(
                self.shared.use_ticket, self.identifier, _hash(raw), now=int(time.time())
            )
            existing = await self._db(self.shared.get_member, self.identifier, caller)
            attributes = {**(existing.attributes if existing else {}), **info.attributes}
            if len(attributes) > cred.MAX_ATTRIBUTES:
                attributes = dict(info.attributes)  # the ticket's own always fit (checked)
            await self._db(
                self.shared.add_member,
                self.identifier,
                caller,
                attributes,
                added_by=info.created_by,
                now=int(time.time()),
            )
            c = await self.issue(caller, attributes)
            self.enrolled += 1
            log.info("authority: enrolled %s with %s", caller, attributes)
            return {"ok": True, "credential": c.encode().hex(), "attributes": attributes}
        member = await self._db(self.shared.get_member, self.identifier, caller)
        if op == "credential":
            if member is None:
                raise NotAMemberError(
                    f"{caller} is not a member of this authority: enroll with a ticket"
                )
            c = await self.issue(caller, member.attributes)
            return {"ok": True, "credential": c.encode().hex(), "attributes": member.attributes}
        if op == "revocations":
            if member is None:
                raise NotAMemberError(f"{caller} is not a member of this authority")
            return {"ok": True, "revocations": (await self.revocation_list()).encode().hex()}
        # Admin operations: who may do them is itself an attribute (the admin policy).
        env = subject_attributes(caller, member.attributes if member else {})
        env.update({"resource.type": "authority", "action.name": op})
        if member is None or not self.admin_policy.allows(env):
            raise NotAnAdminError(
                f"{caller} may not {op}: the authority's admin policy is {self.admin_policy}"
            )
        if op == "create_ticket":
            route = request.get("route")
            if not isinstance(route, str) or not route:
                raise AuthorityError(
                    'create_ticket needs a "route": how members reach this authority\'s node'
                )
            t = await self.create_ticket(
                _check_attributes(request.get("attributes", {})),
                expires_in=int(request.get("expires_in", DEFAULT_TICKET_TTL)),
                usage_count=int(request.get("usage_count", 1)),
                relay=str(request.get("relay", "")),
                route=route,
                created_by=caller,
            )
            return {"ok": True, "ticket": t.encode()}
        if op == "add_member":
            identifier = str(request.get("identifier", ""))
            await self.add_member(
                identifier, _check_attributes(request.get("attributes", {})), added_by=caller
            )
            return {"ok": True}
        if op == "delete_member":
            revoked = await self.delete_member(str(request.get("identifier", "")))
            return {"ok": True, "revoked": revoked}
        if op == "members":
            return {"ok": True, "members": await self.members()}
        raise AuthorityError(f"unknown operation {op!r}")


# --- the members' side -----------------------------------------------------------------------


async def call(
    node: BaseNode,
    route: str | tuple[Address, ...],
    request: dict[str, Any],
    timeout: float = 15.0,
    *,
    trust: TrustPolicy | None = None,
) -> dict[str, Any]:
    """Send one request to an authority (``route`` ends at its service; ``trust``: who must
    answer its secure channel, by default the node's, see ``tether.identity.trust.initiator_trust``)
    and return the response; raises AuthorityError with the authority's reason if it
    refused."""
    raw = await node.request(route, json.dumps(request).encode(), timeout=timeout, trust=trust)
    try:
        response = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthorityError("the authority's answer is not JSON") from None
    if not isinstance(response, dict):
        raise AuthorityError("the authority's answer is not a JSON object")
    if not response.get("ok"):
        kind = {"NotAMemberError": NotAMemberError, "NotAnAdminError": NotAnAdminError}.get(
            str(response.get("type")), AuthorityError
        )
        raise kind(f"the authority refused: {response.get('error', 'no reason given')}")
    return response


__all__ = [
    "Authority",
    "AuthorityError",
    "NotAMemberError",
    "NotAnAdminError",
    "Ticket",
    "call",
]
