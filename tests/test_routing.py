"""Route strings (``tether.node.routing``): every form parses to the right addresses, formats back
to the same string, and every syntax error points at the segment that is wrong.

Hypothesis: generated valid routes round-trip; arbitrary strings (and strings built from route
keywords, digits of every script and junk) parse to a tuple of wire-valid addresses or raise
:class:`RouteSyntaxError`, never anything else.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tether.core.errors import RouteError
from tether.core.message import LOCAL, TCP, Address, RoutedMessage
from tether.node.routing import (
    NodeResolver,
    RouteSyntaxError,
    format_route,
    host_and_port,
    host_port_problem,
    parse,
    split_host_port,
)


def tcp(value: str) -> Address:
    return Address(TCP, value.encode())


def svc(name: str) -> Address:
    return Address(LOCAL, name.encode())


NODES = {"n2": (tcp("127.0.0.1:4002"),), "relay": (tcp("127.0.0.1:5000"), svc("hop"))}


def resolver(name: str) -> tuple[Address, ...]:
    return NODES[name]


# --- every form --------------------------------------------------------------------------------

# (route, addresses, the canonical string format_route gives back)
VALID = [
    ("/service/echo", (svc("echo"),), "/service/echo"),
    ("/worker/echo", (svc("echo"),), "/service/echo"),
    ("/service/echo/", (svc("echo"),), "/service/echo"),
    ("/service/a_b.c#1:x@y+z-W9", (svc("a_b.c#1:x@y+z-W9"),), "/service/a_b.c#1:x@y+z-W9"),
    ("/service/" + "n" * 255, (svc("n" * 255),), "/service/" + "n" * 255),
    (
        "/ip4/127.0.0.1/tcp/4000/service/echo",
        (tcp("127.0.0.1:4000"), svc("echo")),
        "/ip4/127.0.0.1/tcp/4000/service/echo",
    ),
    ("/ip4/10.0.0.1/tcp/1", (tcp("10.0.0.1:1"),), "/ip4/10.0.0.1/tcp/1"),
    ("/ip4/10.0.0.1/tcp/65535", (tcp("10.0.0.1:65535"),), "/ip4/10.0.0.1/tcp/65535"),
    (
        "/ip6/::1/tcp/4000/service/echo",
        (tcp("[::1]:4000"), svc("echo")),
        "/ip6/::1/tcp/4000/service/echo",
    ),
    (
        "/ip6/2001:db8::42/tcp/443",
        (tcp("[2001:db8::42]:443"),),
        "/ip6/2001:db8::42/tcp/443",
    ),
    (
        "/dnsaddr/localhost/tcp/4000/service/echo",
        (tcp("localhost:4000"), svc("echo")),
        "/dnsaddr/localhost/tcp/4000/service/echo",
    ),
    (
        "/dnsaddr/node-1.example.org/tcp/80",
        (tcp("node-1.example.org:80"),),
        "/dnsaddr/node-1.example.org/tcp/80",
    ),
    (
        "/ip4/127.0.0.1/tcp/4002/ip4/127.0.0.1/tcp/4003/service/echo",
        (tcp("127.0.0.1:4002"), tcp("127.0.0.1:4003"), svc("echo")),
        "/ip4/127.0.0.1/tcp/4002/ip4/127.0.0.1/tcp/4003/service/echo",
    ),
    (
        "/service/fwd/ip6/::1/tcp/9/dnsaddr/localhost/tcp/10/service/echo",
        (svc("fwd"), tcp("[::1]:9"), tcp("localhost:10"), svc("echo")),
        "/service/fwd/ip6/::1/tcp/9/dnsaddr/localhost/tcp/10/service/echo",
    ),
]


@pytest.mark.parametrize(("route", "addresses", "canonical"), VALID)
def test_every_form_parses_and_formats_back(
    route: str, addresses: tuple[Address, ...], canonical: str
) -> None:
    assert parse(route) == addresses
    assert format_route(addresses) == canonical
    assert parse(canonical) == addresses


def test_node_names_use_the_resolver() -> None:
    assert parse("/node/n2/service/echo", resolver) == (tcp("127.0.0.1:4002"), svc("echo"))
    assert parse("/node/relay/node/n2", resolver) == (
        tcp("127.0.0.1:5000"),
        svc("hop"),
        tcp("127.0.0.1:4002"),
    )
    assert format_route(parse("/node/n2/service/echo", resolver)) == (
        "/ip4/127.0.0.1/tcp/4002/service/echo"
    )


def test_resolver_is_only_asked_about_node_segments() -> None:
    asked: list[str] = []

    def spy(name: str) -> tuple[Address, ...]:
        asked.append(name)
        return NODES[name]

    parse("/ip4/127.0.0.1/tcp/1/node/n2/service/x/node/relay", spy)
    assert asked == ["n2", "relay"]


def test_split_host_port() -> None:
    assert split_host_port(b"127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert split_host_port(b"[::1]:4000") == ("::1", 4000)
    assert split_host_port(b"localhost:1") == ("localhost", 1)
    for bad in (b"localhost", b"localhost:", b"host:port"):
        with pytest.raises(RouteError):
            split_host_port(bad)


def test_format_route_of_unknown_transport_is_explicit() -> None:
    assert format_route((Address(7, b"\x01\xff"),)) == "/7/01ff"


# --- syntax errors point at the bad segment -------------------------------------------------------


def assert_points_at(err: RouteSyntaxError, route: str, index: int) -> None:
    """The error names segment ``index`` of ``route``: its ``index``, and a caret line under the
    route (indented by two) whose carets sit exactly under that segment."""
    assert err.route == route
    assert err.index == index
    lines = str(err).split("\n")
    assert lines[0].startswith(f"bad route {route!r}: ")
    assert lines[-2] == "  " + route
    caret = lines[-1]
    assert caret.strip(" "), caret
    assert set(caret.strip(" ")) == {"^"}, caret
    start = len(caret) - len(caret.lstrip(" ")) - 2
    width = len(caret.strip(" "))
    segments = route.split("/")
    segment = segments[index]
    assert start == sum(len(s) + 1 for s in segments[:index])
    if segment:
        assert route[start : start + width] == segment
    else:
        assert width == 1  # an empty (or missing) segment: one caret where it is


# (route, index of the bad segment, words the explanation must contain)
ERRORS = [
    ("", 0, "starts with '/'"),
    ("service/echo", 0, "starts with '/'"),
    ("/", 0, "empty route"),
    ("//", 1, "empty segment"),
    ("/service//service/echo", 2, "'service' needs a name"),
    ("/service/echo//service/x", 3, "empty segment"),
    ("/service/echo//", 3, "empty segment"),
    ("/service", 1, "'service' needs a name"),
    ("/service/", 2, "'service' needs a name"),
    ("/service/ech o", 2, "'ech o' is not a valid worker name"),
    ("/service/caf\u00e9", 2, "not a valid worker name"),
    ("/service/" + "n" * 256, 2, "not a valid worker name"),
    ("/worker/a/b", 3, "unknown segment 'b'"),
    ("/udp/1", 1, "unknown segment 'udp'"),
    ("/IP4/127.0.0.1/tcp/1", 1, "unknown segment 'IP4'"),
    ("/ip4", 1, "'ip4' needs an address"),
    ("/ip4/127.0.0.1", 2, "needs '/tcp/PORT'"),
    ("/ip4/127.0.0.1/tcp", 3, "'ip4' needs a port"),
    ("/ip4/127.0.0.1/tcp/", 4, "'ip4' needs a port"),
    ("/ip4/1.2.3/tcp/1", 2, "'1.2.3' is not an IPv4 address"),
    ("/ip4/256.0.0.1/tcp/1", 2, "not an IPv4 address"),
    ("/ip4/::1/tcp/1", 2, "not an IPv4 address"),
    ("/ip4/localhost/tcp/1", 2, "not an IPv4 address"),
    ("/ip6/127.0.0.1/tcp/1", 2, "'127.0.0.1' is not an IPv6 address"),
    ("/ip6/[::1]/tcp/1", 2, "not an IPv6 address"),
    ("/dnsaddr/-bad/tcp/1", 2, "'-bad' is not a host name"),
    ("/dnsaddr/a..b/tcp/1", 2, "not a host name"),
    ("/dnsaddr/under_score/tcp/1", 2, "not a host name"),
    ("/dnsaddr/" + "a" * 64 + "/tcp/1", 2, "not a host name"),
    ("/ip4/127.0.0.1/udp/1", 3, "expected 'tcp' after the address, got 'udp'"),
    ("/ip4/127.0.0.1/tcp/0", 4, "'0' is not a TCP port"),
    ("/ip4/127.0.0.1/tcp/65536", 4, "'65536' is not a TCP port"),
    ("/ip4/127.0.0.1/tcp/080", 4, "'080' is not a TCP port"),
    ("/ip4/127.0.0.1/tcp/-1", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/+80", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/ 80", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/http", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/80/echo", 5, "unknown segment 'echo'"),
    ("/node/n2/service/echo", 1, "'/node/NAME' can only be used where nodes are known"),
    # digits that are not ASCII digits (str.isdigit() is true for them) and absurdly long ports
    ("/ip4/127.0.0.1/tcp/\u00b2", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/\u0664\u0660", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/\u2460", 4, "not a TCP port"),
    ("/ip4/127.0.0.1/tcp/" + "1" * 5000, 4, "not a TCP port"),
]


@pytest.mark.parametrize(("route", "index", "words"), ERRORS)
def test_syntax_errors_point_at_the_bad_segment(route: str, index: int, words: str) -> None:
    with pytest.raises(RouteSyntaxError) as info:
        parse(route)
    assert words in str(info.value).split("\n")[0]
    assert_points_at(info.value, route, index)


def test_syntax_error_is_a_route_error_and_a_value_error() -> None:
    with pytest.raises(RouteSyntaxError) as info:
        parse("/nope")
    assert isinstance(info.value, RouteError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("route", "index"),
    [
        ("/service/echo\n", 2),
        ("/service/echo\n/service/x", 2),
        ("/service/\techo", 2),
        ("/dnsaddr/localhost\n/tcp/1", 2),
    ],
)
def test_control_characters_are_not_names(route: str, index: int) -> None:
    # Worker names are [A-Za-z0-9_.#:@+-]{1,255} and host names are letters, digits, hyphens and
    # dots: a trailing newline is neither (a `$`-anchored regex would let it through).
    with pytest.raises(RouteSyntaxError) as info:
        parse(route)
    assert info.value.index == index


def test_tcp_address_too_long_for_the_wire_is_a_syntax_error() -> None:
    # A 253-character host name is a valid DNS name, but "host:65535" is 259 bytes and an
    # address on the wire is at most 255 (docs/wire-format.md): parse must refuse it, at the host.
    host = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(host) == 253
    route = f"/dnsaddr/{host}/tcp/65535/service/echo"
    with pytest.raises(RouteSyntaxError) as info:
        parse(route)
    assert_points_at(info.value, route, 2)
    # while one that fits (247 + ":65535" = 253 bytes) parses and encodes
    short = ".".join(["a" * 63] * 3 + ["b" * 55])
    addresses = parse(f"/dnsaddr/{short}/tcp/65535")
    RoutedMessage(addresses, (), b"\0").encode()


def test_resolver_errors_are_not_swallowed() -> None:
    with pytest.raises(KeyError):
        parse("/node/unknown/service/echo", resolver)


# --- properties -----------------------------------------------------------------------------------

ports = st.integers(1, 65535)
names = st.from_regex(r"[A-Za-z0-9_.#:@+-]{1,255}", fullmatch=True)
labels = st.from_regex(r"[a-zA-Z]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)


@st.composite
def hops(draw: st.DrawFn) -> tuple[str, Address]:
    kind = draw(st.sampled_from(["ip4", "ip6", "dnsaddr", "service"]))
    if kind == "service":
        name = draw(names)
        return f"/service/{name}", svc(name)
    port = draw(ports)
    if kind == "ip4":
        host = str(draw(st.ip_addresses(v=4)))
        return f"/ip4/{host}/tcp/{port}", tcp(f"{host}:{port}")
    if kind == "ip6":
        host = str(draw(st.ip_addresses(v=6)))
        return f"/ip6/{host}/tcp/{port}", tcp(f"[{host}]:{port}")
    host = draw(hostnames)
    return f"/dnsaddr/{host}/tcp/{port}", tcp(f"{host}:{port}")


@given(st.lists(hops(), min_size=1, max_size=8))
def test_generated_routes_round_trip(route_hops: list[tuple[str, Address]]) -> None:
    route = "".join(text for text, _ in route_hops)
    expected = tuple(a for _, a in route_hops)
    assert parse(route) == expected
    assert format_route(expected) == route
    assert parse(route + "/") == expected


@given(st.lists(hops(), min_size=1, max_size=8))
def test_addresses_round_trip_through_format(route_hops: list[tuple[str, Address]]) -> None:
    addresses = tuple(a for _, a in route_hops)
    assert parse(format_route(addresses)) == addresses
    # and what parse gives can go on the wire
    encoded = RoutedMessage(addresses, (), b"\0").encode()
    assert RoutedMessage.decode(encoded).onward == addresses


KEYWORDS = ["ip4", "ip6", "dnsaddr", "tcp", "service", "worker", "node", "", "udp"]
segment_texts = st.one_of(
    st.sampled_from(KEYWORDS),
    st.sampled_from(["127.0.0.1", "::1", "localhost", "0", "1", "65535", "65536", "echo"]),
    st.text(max_size=12),
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6),
    st.from_regex(r"[0-9]{1,7}", fullmatch=True),
    names,
    hostnames,
)
route_like = st.one_of(
    st.text(),
    st.lists(segment_texts, max_size=12).map(lambda s: "/" + "/".join(s)),
    st.lists(segment_texts, max_size=12).map("/".join),
)


def assert_parses_or_refuses(route: str, resolve: NodeResolver | None = None) -> None:
    try:
        result = parse(route, resolve)
    except RouteSyntaxError as e:
        index = e.index
        assert 0 <= index < max(1, len(route.split("/")))
        return
    assert isinstance(result, tuple)
    assert result
    for a in result:
        assert isinstance(a, Address)
        assert a.transport in (LOCAL, TCP)
        assert 1 <= len(a.value) <= 255  # what one address may be on the wire
        if a.transport == TCP:
            host, port = split_host_port(a.value)
            assert 1 <= port <= 65535
            assert host
        else:
            assert a.value.isascii()


@given(route_like)
@example("/ip4/127.0.0.1/tcp/\u00b2")
@example("/ip4/127.0.0.1/tcp/" + "9" * 4301)
@example("/service/echo\n")
def test_arbitrary_strings_parse_or_raise_route_syntax_error(route: str) -> None:
    assert_parses_or_refuses(route)


@given(route_like)
@example("/node/n2")
@example("/node/relay/service/x/")
def test_arbitrary_strings_with_a_resolver(route: str) -> None:
    def resolve(name: str) -> tuple[Address, ...]:
        if name not in NODES:
            raise RouteSyntaxError(route, 0, f"no node {name!r}")
        return NODES[name]

    assert_parses_or_refuses(route, resolve)


def test_ip_forms_agree_with_ipaddress() -> None:
    for text in ("10.0.0.0", "255.255.255.255", "192.168.1.1"):
        assert parse(f"/ip4/{text}/tcp/1") == (tcp(f"{ipaddress.IPv4Address(text)}:1"),)
    for text in ("::", "fe80::1", "2001:db8:0:0:0:0:0:1"):
        assert parse(f"/ip6/{text}/tcp/1") == (tcp(f"[{text}]:1"),)
        assert format_route(parse(f"/ip6/{text}/tcp/1")) == f"/ip6/{text}/tcp/1"


# --- HOST:PORT: the one rule for every TCP address a user or a peer gives ----------------------


@pytest.mark.parametrize(
    ("text", "any_port", "expected"),
    [
        ("127.0.0.1:4000", False, ("127.0.0.1", 4000)),
        ("[::1]:9464", False, ("::1", 9464)),
        ("db.internal:5432", False, ("db.internal", 5432)),
        ("127.0.0.1:0", True, ("127.0.0.1", 0)),
    ],
)
def test_host_and_port(text: str, any_port: bool, expected: tuple[str, int]) -> None:
    assert host_and_port(text, any_port=any_port) == expected
    assert host_port_problem(text, any_port=any_port) is None


@pytest.mark.parametrize(
    ("text", "any_port", "problem"),
    [
        ("127.0.0.1", False, "the port is missing"),
        ("[::1]", False, "the port is missing"),
        (":4000", False, "the host is missing"),
        ("::1:4000", False, "an IPv6 address goes in brackets"),
        ("[::1:4000", False, "an IPv6 address goes in brackets"),
        ("127.0.0.1:0", False, "the port must be 1 to 65535"),
        ("127.0.0.1:65536", True, "the port must be 0 to 65535"),
        ("127.0.0.1:+80", True, "the port must be 0 to 65535"),
        ("127.0.0.1:٣٣", True, "the port must be 0 to 65535"),  # digits, but not ASCII ones
    ],
)
def test_host_and_port_refusals(text: str, any_port: bool, problem: str) -> None:
    assert problem in (host_port_problem(text, any_port=any_port) or "")
    with pytest.raises(ValueError, match=problem):
        host_and_port(text, any_port=any_port)


@given(st.text(max_size=40), st.booleans())
def test_host_and_port_never_raises_anything_else(text: str, any_port: bool) -> None:
    try:
        host, port = host_and_port(text, any_port=any_port)
    except ValueError:
        return
    assert (0 if any_port else 1) <= port <= 65535
    assert host
    assert not host.startswith("[")
