"""The NATS client protocol codec (``rust/src/nats.rs``, through ``tether._core``): against a
real ``nats-server`` on loopback (its INFO, a publish to ourselves, PING/PONG, a refusal), and
its decoder under any chunking of a server's stream."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers import running
from tether._core import (
    NATS_PING,
    NATS_PONG,
    NatsDecoder,
    nats_connect,
    nats_publish,
    nats_subscribe,
    nats_unsubscribe,
)
from tether.core.errors import FrameError, InvalidArgumentError


def read_until(sock: socket.socket, decoder: NatsDecoder, kind: str) -> list[tuple[object, ...]]:
    """Operations up to and including the first of ``kind``."""
    ops: list[tuple[object, ...]] = []
    while not any(op[0] == kind for op in ops):
        data = sock.recv(65536)
        assert data, f"the server closed the connection before {kind}: {ops}"
        ops += decoder.feed(data)
    return ops


def test_a_round_trip_through_a_real_server(tmp_path: Path) -> None:
    with (
        running("nats", tmp_path) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        decoder = NatsDecoder()
        (info,) = read_until(sock, decoder, "INFO")
        assert info[0] == "INFO"
        limits = json.loads(str(info[1]))
        max_payload = int(limits["max_payload"])
        decoder.set_max_payload(max_payload)
        body = bytes(range(256)) * 64 + b"\r\nMSG x 1 2\r\n"  # the protocol's own bytes, inside
        sock.sendall(
            nats_connect(json.dumps({"verbose": False, "pedantic": True, "protocol": 1}))
            + nats_subscribe("tether.me.*", 7)
            + nats_publish("tether.me.peer", body, max_payload, reply="tether.peer.me")
            + nats_publish("tether.other.peer", b"not for us", max_payload)
            + NATS_PING
        )
        ops = read_until(sock, decoder, "PONG")
        msgs = [op for op in ops if op[0] == "MSG"]
        assert msgs == [("MSG", "tether.me.peer", 7, "tether.peer.me", body)]
        # The server's PING is answered; after UNSUB nothing more arrives for us.
        sock.sendall(nats_unsubscribe(7) + nats_publish("tether.me.x", b"late", 10) + NATS_PING)
        ops = read_until(sock, decoder, "PONG")
        assert not [op for op in ops if op[0] == "MSG"]
        sock.sendall(NATS_PONG)
        # A refusal the server reports: a subject that is no subject (pedantic mode).
        sock.sendall(b"PUB bad..subject 1\r\nx\r\n" + NATS_PING)
        ops = read_until(sock, decoder, "-ERR")
        assert any(op[0] == "-ERR" and "Subject" in str(op[1]) for op in ops), ops


def test_what_the_encoders_refuse() -> None:
    for subject in ["", "a..b", "a b", "a.*", "a.>", "x" * 256]:
        with pytest.raises(InvalidArgumentError, match="not a NATS subject"):
            nats_publish(subject, b"x", 100)
    with pytest.raises(InvalidArgumentError, match="over the server's max_payload of 4 bytes"):
        nats_publish("a", b"12345", 4)
    with pytest.raises(InvalidArgumentError, match="not a NATS subject"):
        nats_subscribe("a.>.b", 1)
    assert nats_subscribe("a.*.>", 3, queue="q") == b"SUB a.*.> q 3\r\n"


def test_a_broken_stream_is_refused_for_good() -> None:
    d = NatsDecoder(max_payload=16)
    assert d.feed(b"PING\r\nMSG a 1 17\r\n") == [("PING",)]  # what came first is handed over
    with pytest.raises(FrameError, match="over max_payload"):
        d.feed(b"")
    with pytest.raises(FrameError, match="over max_payload"):
        d.feed(b"PING\r\n")
    d = NatsDecoder()
    with pytest.raises(FrameError, match="control line longer than 4096"):
        d.feed(b"INFO " + b"x" * 5000)


subjects = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8),
    min_size=1,
    max_size=4,
).map(".".join)


@given(
    msgs=st.lists(
        st.tuples(subjects, st.integers(0, 2**32), st.none() | subjects, st.binary(max_size=300)),
        max_size=6,
    ),
    cut=st.integers(1, 50),
)
def test_any_chunking_decodes_the_same(
    msgs: list[tuple[str, int, str | None, bytes]], cut: int
) -> None:
    wire = b""
    for subject, sid, reply, payload in msgs:
        middle = f" {reply}" if reply else ""
        wire += f"MSG {subject} {sid}{middle} {len(payload)}\r\n".encode() + payload + b"\r\n"
    d = NatsDecoder(max_payload=300)
    got: list[tuple[object, ...]] = []
    for i in range(0, len(wire), cut):
        got += d.feed(wire[i : i + cut])
    assert got == [("MSG", s, sid, r, p) for s, sid, r, p in msgs]
    assert d.buffered() == 0
