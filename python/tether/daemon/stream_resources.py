"""The node daemon's control API for end-to-end encrypted streams (``docs/pipelines.md``):
the streams it produces (``/streams``: create, show, rotate, lease positions to seal with,
delete) and the keys it fetches as a consumer (``/stream-keys``). Keys leave the node only over
its control socket (0600: its own user, e.g. ``tether stream publish`` and ``consume``) and
through secure channels to the consumers a stream's policy allows."""

from __future__ import annotations

from typing import Any

from tether.core.errors import TetherError
from tether.daemon.control import ApiError, Router
from tether.daemon.daemon import Daemon
from tether.daemon.specs import body_field, body_optional, found, trust_of
from tether.pipelines.stream import fetch_keys, key_service
from tether.services.stream_keys import ALGORITHMS, DataKey, StreamKeyError

api: Router[Daemon] = Router()

MAX_LEASE = 1 << 20
"""The most positions one lease hands out."""


def _key(k: DataKey, *, secret: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key_id": k.key_id.hex(),
        "algorithm": k.algorithm,
        "first_position": k.first_position,
        "created_at": k.created_at,
    }
    if secret:
        out["key"] = k.key.hex()
    return out


@api.add("GET", "/streams")
async def list_streams(d: Daemon, _: dict[str, str], __: Any) -> tuple[int, Any]:
    service = await key_service(d.node)
    return 200, [service.info(s) for s in sorted(service.rings)]


@api.add("POST", "/streams")
async def create_stream(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    stream = body_field(body, "stream")
    service = await key_service(d.node)
    if stream in service.rings:
        raise ApiError(409, f"this node already produces stream {stream!r}")
    algorithm = body_optional(body, "algorithm") or "AES-256-GCM"
    if algorithm not in ALGORITHMS:
        raise ApiError(400, f"unknown algorithm {algorithm!r}; use {' or '.join(ALGORITHMS)}")
    spec: dict[str, Any] = {"stream": stream, "allow": body_optional(body, "allow")}
    for name, kind in (("rotate_after_records", int), ("rotate_after_seconds", float)):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ApiError(400, f"{name!r} must be a positive number")
            spec[name] = kind(value)
    spec["algorithm"] = algorithm
    await d.start_stream(spec)
    d.config.streams.append(spec)
    d.persist()
    return 201, service.info(stream)


@api.add("GET", "/streams/{stream}")
async def get_stream(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    service = await key_service(d.node)
    found(service.rings, p["stream"], "stream produced here")
    return 200, service.info(p["stream"])


@api.add("DELETE", "/streams/{stream}")
async def delete_stream(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    service = await key_service(d.node)
    found(service.rings, p["stream"], "stream produced here")
    service.remove(p["stream"])
    d.unsave("streams", "stream", p["stream"])
    return 204, None


@api.add("POST", "/streams/{stream}/rotate")
async def rotate_stream(d: Daemon, p: dict[str, str], _: Any) -> tuple[int, Any]:
    service = await key_service(d.node)
    found(service.rings, p["stream"], "stream produced here").rotate()
    return 200, service.info(p["stream"])


@api.add("POST", "/streams/{stream}/lease")
async def lease(d: Daemon, p: dict[str, str], body: Any) -> tuple[int, Any]:
    """Positions to seal up to ``records`` records with (never handed out again), and the key."""
    service = await key_service(d.node)
    ring = found(service.rings, p["stream"], "stream produced here")
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, int) or isinstance(records, bool) or not 1 <= records <= MAX_LEASE:
        raise ApiError(400, f"'records' must be a whole number from 1 to {MAX_LEASE}")
    got = ring.lease(records)
    return 200, {
        "stream": got.stream,
        "producer": got.producer,
        "first": got.first,
        "count": got.count,
        "key": _key(got.key, secret=True),
    }


@api.add("POST", "/stream-keys")
async def stream_keys(d: Daemon, _: dict[str, str], body: Any) -> tuple[int, Any]:
    """As a consumer: the keys of ``stream`` that the producer's node at ``keys_from`` gives
    this node (through a secure channel; its policy decides)."""
    stream = body_field(body, "stream")
    keys_from = body_field(body, "keys_from")
    try:
        producer, keys = await fetch_keys(d.node, keys_from, stream, trust=trust_of(body))
    except StreamKeyError as e:
        raise ApiError(403, str(e), "StreamKeyError") from None
    except TetherError as e:
        raise ApiError(502, str(e), type(e).__name__) from None
    return 200, {"producer": producer, "keys": [_key(k, secret=True) for k in keys]}
