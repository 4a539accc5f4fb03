"""Routes as users write them, one string, and back.

```
/ip4/127.0.0.1/tcp/4000/service/echo       TCP to 127.0.0.1:4000, then the worker "echo"
/ip6/::1/tcp/4000/service/echo             TCP to [::1]:4000
/dnsaddr/localhost/tcp/4000/service/echo   TCP to localhost:4000 (resolved when connecting)
/node/n2/service/echo                      a local node by name (resolved to its listener)
/service/echo                              a worker on this node
/nats/db/service/echo                      the node named db on this node's NATS fabric
/node/n2/secure/api/service/echo           a secure channel to n2's listener "api" (opened
                                           or reused), then the worker "echo" through it
```

A route is a sequence of :class:`~tether.core.message.Address`: TCP hops (``host:port``) and worker
names. Parse errors raise :class:`RouteSyntaxError`, which names the bad segment and its position.
``/node/NAME`` needs a resolver (the CLI and daemon look nodes up in the state store).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from tether.core.errors import RouteError
from tether.core.message import LOCAL, MAX_HOPS, NATS, TCP, Address

_NAME = re.compile(r"^[A-Za-z0-9_.#:@+-]{1,255}$")
FABRIC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A node's name on a NATS fabric (``/nats/NAME``): its identifier or a name it claimed, one
subject token (:mod:`tether.node.transport.nats`)."""
_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

NodeResolver = Callable[[str], Sequence[Address]]

_IP: dict[str, tuple[int, Callable[[str], object]]] = {
    "ip4": (4, ipaddress.IPv4Address),
    "ip6": (6, ipaddress.IPv6Address),
}

#: A ``/secure/NAME`` segment: "open (or reuse) a secure channel to the listener NAME at the end
#: of the route so far, and continue inside it". Resolved by the node; never on the wire.
SECURE = 0xFFFE


class RouteSyntaxError(RouteError, ValueError):
    """A route string that does not parse; the message points at the bad segment."""

    def __init__(self, route: str, index: int, problem: str) -> None:
        segments = route.split("/")
        offset = sum(len(s) + 1 for s in segments[:index])
        pointer = " " * (offset + 2) + "^" * max(
            1, len(segments[index]) if index < len(segments) else 1
        )
        super().__init__(f"bad route {route!r}: {problem}\n  {route}\n{pointer}")
        self.route = route
        self.index = index


def _port(route: str, index: int, text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", text) or int(text) > 65535:
        raise RouteSyntaxError(route, index, f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def parse(route: str, resolve_node: NodeResolver | None = None) -> tuple[Address, ...]:
    """Parse a route string into addresses."""
    if not route.startswith("/"):
        raise RouteSyntaxError(route, 0, "a route starts with '/', e.g. /service/echo")
    segments = route.split("/")
    out: list[Address] = []
    i = 1
    n = len(segments)
    if route == "/" or (segments[-1] == "" and n > 2):
        if route == "/":
            raise RouteSyntaxError(route, 0, "empty route")
        n -= 1  # tolerate one trailing slash

    def need(k: int, what: str) -> str:
        if i + k >= n or segments[i + k] == "":
            raise RouteSyntaxError(
                route, min(i + k, len(segments) - 1), f"'{segments[i]}' needs {what}"
            )
        return segments[i + k]

    while i < n:
        kind = segments[i]
        if kind in ("ip4", "ip6", "dnsaddr"):
            host = need(1, "an address")
            if kind in _IP:
                version, parse_ip = _IP[kind]
                try:
                    parse_ip(host)
                except ValueError:
                    raise RouteSyntaxError(
                        route, i + 1, f"{host!r} is not an IPv{version} address"
                    ) from None
                if version == 6:
                    host = f"[{host}]"
            elif not _HOST.fullmatch(host):
                raise RouteSyntaxError(route, i + 1, f"{host!r} is not a host name")
            if need(2, "'/tcp/PORT'") != "tcp":
                raise RouteSyntaxError(
                    route, i + 2, f"expected 'tcp' after the address, got {segments[i + 2]!r}"
                )
            port = _port(route, i + 3, need(3, "a port"))
            if len(f"{host}:{port}".encode()) > 255:
                raise RouteSyntaxError(route, i + 1, f"{host!r} is too long for a TCP address")
            out.append(Address(TCP, f"{host}:{port}".encode()))
            i += 4
        elif kind in ("service", "worker"):
            name = need(1, "a name")
            if not _NAME.fullmatch(name):
                raise RouteSyntaxError(route, i + 1, f"{name!r} is not a valid worker name")
            out.append(Address(LOCAL, name.encode()))
            i += 2
        elif kind == "nats":
            name = need(1, "a fabric name (a node's identifier or a name it claimed)")
            if not FABRIC_NAME.fullmatch(name):
                raise RouteSyntaxError(
                    route, i + 1, f"{name!r} is not a fabric name (letters, digits, '-', '_')"
                )
            out.append(Address(NATS, name.encode()))
            i += 2
        elif kind == "secure":
            name = need(1, "a secure-channel listener name")
            if not _NAME.fullmatch(name):
                raise RouteSyntaxError(route, i + 1, f"{name!r} is not a valid listener name")
            out.append(Address(SECURE, name.encode()))
            i += 2
        elif kind == "node":
            name = need(1, "a node name")
            if resolve_node is None:
                raise RouteSyntaxError(
                    route,
                    i,
                    "'/node/NAME' can only be used where nodes "
                    "are known (the tether command, a node)",
                )
            out.extend(resolve_node(name))
            i += 2
        elif kind == "":
            raise RouteSyntaxError(route, i, "empty segment ('//')")
        else:
            raise RouteSyntaxError(
                route,
                i,
                f"unknown segment {kind!r}; use ip4, ip6, dnsaddr, nats, node, service or secure",
            )
    if not out:
        raise RouteSyntaxError(route, 0, "empty route")
    if len(out) > MAX_HOPS:
        raise RouteSyntaxError(route, 0, f"{len(out)} hops; a route has at most {MAX_HOPS}")
    return tuple(out)


def _tokens(route: str) -> list[tuple[str, str]]:
    """A route string's segments as ``(kind, name)`` pairs (the route is already known to
    parse; a TCP hop's name is its host)."""
    segments = [s for s in route.split("/") if s][::-1]
    out: list[tuple[str, str]] = []
    while segments:
        kind = segments.pop()
        if kind in ("ip4", "ip6", "dnsaddr"):
            host = segments.pop() if segments else ""
            del segments[-2:]
            out.append((kind, host))
        else:
            out.append((kind, segments.pop() if segments else ""))
    return out


def named_peers(route: str) -> list[str | None]:
    """For each ``/secure/LISTENER`` of ``route``, in order: the node named right before it
    (``/node/NAME/secure/...``), whose identity the channel's peer must then be; else None."""
    tokens = _tokens(route)
    return [
        tokens[i - 1][1] if i > 0 and tokens[i - 1][0] == "node" else None
        for i, (kind, _) in enumerate(tokens)
        if kind == "secure"
    ]


def listener_node(route: str) -> str | None:
    """For a route to a secure-channel listener (``.../node/NAME/service/LISTENER``, or to the
    node itself, ``.../node/NAME``): the node named there, whose identity the listener has."""
    tokens = _tokens(route)
    if tokens and tokens[-1][0] == "node":
        return tokens[-1][1]
    if len(tokens) >= 2 and tokens[-1][0] in ("service", "worker") and tokens[-2][0] == "node":
        return tokens[-2][1]
    return None


def host_port_problem(text: str, *, any_port: bool = False) -> str | None:
    """What is wrong with ``text`` as ``HOST:PORT`` (``[IPv6]:PORT``), or None: the one rule
    for every TCP address a user or a peer gives (listeners, targets, routes, ``--metrics``).
    Port 0 ("any free port") only where ``any_port`` (a listener)."""
    host, sep, port = text.rpartition(":")
    low = 0 if any_port else 1
    if not sep or not port or text.endswith("]"):
        return "the port is missing"
    if not host.strip("[]"):
        return "the host is missing"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return "an IPv6 address goes in brackets, e.g. [::1]:4000"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not low <= int(port) <= 65535:
        return f"the port must be {low} to 65535"
    return None


def host_and_port(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """``"127.0.0.1:4000"`` / ``"[::1]:4000"`` → ``("127.0.0.1", 4000)`` / ``("::1", 4000)``
    (checked by :func:`host_port_problem`: ValueError says what is wrong)."""
    problem = host_port_problem(text, any_port=any_port)
    if problem is not None:
        raise ValueError(problem)
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def split_host_port(value: bytes) -> tuple[str, int]:
    """``b"127.0.0.1:4000"`` / ``b"[::1]:4000"`` → ``("127.0.0.1", 4000)``."""
    try:
        text = value.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise RouteError(f"not a TCP address: {value!r} (not UTF-8)") from None
    try:
        return host_and_port(text, any_port=True)
    except ValueError as e:
        raise RouteError(f"not a TCP address: {text!r} ({e}; expected host:port)") from None


def format_route(route: Sequence[Address]) -> str:
    """The route string for addresses (TCP hops as /ip4, /ip6 or /dnsaddr)."""
    parts: list[str] = []
    for a in route:
        if a.transport == TCP:
            host, port = split_host_port(a.value)
            try:
                ip = ipaddress.ip_address(host)
                parts.append(f"/ip{ip.version}/{host}/tcp/{port}")
            except ValueError:
                parts.append(f"/dnsaddr/{host}/tcp/{port}")
        elif a.transport == LOCAL:
            parts.append(f"/service/{a.value.decode('utf-8', errors='backslashreplace')}")
        elif a.transport == NATS:
            parts.append(f"/nats/{a.value.decode('utf-8', errors='backslashreplace')}")
        elif a.transport == SECURE:
            parts.append(f"/secure/{a.value.decode('utf-8', errors='backslashreplace')}")
        else:
            parts.append(f"/{a.transport}/{a.value.hex()}")
    return "".join(parts)
