"""What a ``tether apply`` file declares (``docs/apply.md``): YAML read with each value's line,
``${VAR}`` filled from the environment, and every field checked, so that a mistake is reported
as ``FILE:LINE: FIELD: what is wrong``.

YAML, not TOML: a site's file is a tree of nodes and their resources (lists of outlets, inlets,
policies), which YAML writes without repeating table headers; it is what the references users
compare ``tether apply`` with (Ockam's node configuration, Kubernetes) read; and PyYAML's composer
gives the line of every value, which a validation error names. The YAML is read with the safe
loader (no Python objects), and values that YAML 1.1 would turn into booleans (``no``, ``on``)
are refused where a string is expected, rather than taken silently.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.cli.common import check_route, ttl
from tether.core.errors import InvalidArgumentError, TetherError
from tether.identity.policy import Policy
from tether.identity.registry import check_name
from tether.node.policies import RESOURCE_TYPES
from tether.node.routing import host_port_problem

if TYPE_CHECKING:
    import yaml

MAX_FILE = 1 << 20
"""The largest file ``tether apply`` reads (a site's file is a few KiB)."""
MAX_VALUES = 100_000
"""The most values a file may hold once YAML's aliases are expanded (``*name`` repeats what
``&name`` marks: a few lines can otherwise stand for billions of values)."""

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ApplyFileError(InvalidArgumentError):
    """A file that cannot be applied: where (file, line, field) and why."""


@dataclass(frozen=True)
class Where:
    file: str
    line: int  # 1-based
    field: str

    def error(self, message: str) -> ApplyFileError:
        return ApplyFileError(f"{self.file}:{self.line}: {self.field}: {message}")


@dataclass
class Ticket:
    file: Path
    attributes: dict[str, str]
    expires_in: int | None
    usage_count: int
    relay_name: str | None
    where: Where


@dataclass
class Enroll:
    ticket_file: Path | None
    ticket: str | None
    where: Where

    def text(self) -> str | None:
        """The ticket, or None if its file is not there (yet)."""
        if self.ticket is not None:
            return self.ticket
        assert self.ticket_file is not None
        try:
            return self.ticket_file.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.where.error(
                f"cannot read the ticket file {self.ticket_file}: {e.strerror or e}"
            ) from None


@dataclass
class Resource:
    """A relay, tcp-outlet, tcp-inlet or policy: its key (a name; a policy's is what it says),
    the body the control API takes, and the fields compared with what the node has."""

    kind: str
    key: str
    body: dict[str, Any]
    where: Where


@dataclass
class NodeSpec:
    name: str
    identity: str
    tcp_listeners: list[str]
    transit: list[str]
    authority: dict[str, Any] | None
    tickets: list[Ticket]
    enroll: Enroll | None
    resources: list[Resource]
    where: Where


@dataclass
class ApplyFile:
    path: Path
    set_name: str
    nodes: dict[str, NodeSpec] = field(default_factory=dict)


# --- reading YAML with lines -------------------------------------------------------------------


@dataclass
class _Value:
    """A YAML value with where it is; mappings and lists hold _Values."""

    value: Any
    where: Where


def _compose(text: str, file: str) -> _Value | None:
    import yaml  # here, not at the top: every `tether` command would pay its import

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = e.problem or e.context or "not valid YAML"
        raise ApplyFileError(f"{file}:{line}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ApplyFileError(f"{file}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    if root is None:
        return None
    return _convert(loader, root, file, "", [0])


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, file: str, path: str, count: list[int]
) -> _Value:
    import yaml  # (already imported by _compose: a lookup)

    where = Where(file, node.start_mark.line + 1, path or "(top)")
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise where.error(f"over {MAX_VALUES} values (aliases expanded); is it the right file?")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, _Value] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise where.error("a key must be a plain name")
            key = str(k.value)
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise Where(file, k.start_mark.line + 1, sub).error("given twice")
            value = _convert(loader, v, file, sub, count)
            value.where = Where(file, k.start_mark.line + 1, sub)  # the line that names it
            out[key] = value
        return _Value(out, where)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(loader, v, file, f"{path}[{i}]", count) for i, v in enumerate(node.value)]
        return _Value(items, where)
    assert isinstance(node, yaml.ScalarNode)
    try:
        value = loader.construct_object(node)
    except yaml.YAMLError as e:
        raise where.error(f"not a value: {e}") from None
    return _Value(value, where)


def _substitute(v: _Value, env: Mapping[str, str]) -> _Value:
    """``${VAR}`` (``${VAR:-default}``) in every string, from ``env``; ``$$`` is a ``$``."""
    if isinstance(v.value, dict):
        return _Value({k: _substitute(x, env) for k, x in v.value.items()}, v.where)
    if isinstance(v.value, list):
        return _Value([_substitute(x, env) for x in v.value], v.where)
    if not isinstance(v.value, str) or "$" not in v.value:
        return v

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise v.where.error(
            f"the environment variable {name} is not set (set it, or write ${{{name}:-DEFAULT}})"
        )

    return _Value(_VAR.sub(one, v.value), v.where)


# --- checking fields -----------------------------------------------------------------------------


def _fields(
    v: _Value, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, _Value]:
    if not isinstance(v.value, dict):
        raise v.where.error(f"expected a mapping with {', '.join(allowed)}")
    fields: dict[str, _Value] = v.value
    for key, x in fields.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; one of: {', '.join(allowed)}"
            raise x.where.error(f"unknown field{hint}")
    for key in required:
        if key not in fields:
            raise v.where.error(f"{key!r} is required")
    return fields


def _str(v: _Value) -> str:
    if isinstance(v.value, bool) or v.value is None:
        raise v.where.error(
            f"expected text, got {v.value!r} (YAML reads yes/no/on/off/null as other values: "
            "quote it)"
        )
    if isinstance(v.value, int | float | str):
        return str(v.value)
    raise v.where.error("expected text")


def _int(v: _Value, low: int, high: int) -> int:
    value = v.value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise v.where.error(f"expected a whole number from {low} to {high}, got {v.value!r}")
    return value


def _bool(v: _Value) -> bool:
    if not isinstance(v.value, bool):
        raise v.where.error(f"expected true or false, got {v.value!r}")
    return v.value


def _list(v: _Value) -> list[_Value]:
    if v.value is None:
        return []
    if not isinstance(v.value, list):
        raise v.where.error("expected a list")
    return list(v.value)


def _host_port(v: _Value, *, star: bool = False, port_zero: bool = True) -> str:
    text = _str(v)
    if star and text == "*":
        return text
    problem = host_port_problem(text, any_port=port_zero)
    if problem is not None:
        raise v.where.error(f"{text!r}: {problem}; use HOST:PORT, e.g. 127.0.0.1:5432")
    return text


def _route(v: _Value) -> str:
    text = _str(v)
    try:
        return check_route(text)
    except TetherError as e:
        raise v.where.error(str(e)) from None


def _name(v: _Value, what: str) -> str:
    text = _str(v)
    try:
        check_name(text, what)
    except InvalidArgumentError as e:
        raise v.where.error(str(e)) from None
    return text


def _policy_expression(v: _Value) -> str:
    text = _str(v)
    try:
        Policy.parse(text)  # the parser the node uses
    except TetherError as e:
        raise v.where.error(f"not a policy expression: {e}") from None
    return text


def _ttl(v: _Value) -> int:
    """A duration with its unit (``30d``), as the command's options take it."""
    try:
        return ttl(_str(v))
    except argparse.ArgumentTypeError as e:
        raise v.where.error(str(e)) from None


def _path(v: _Value, base: Path) -> Path:
    p = Path(os.path.expanduser(_str(v)))
    return p if p.is_absolute() else base / p


def _trust(fields: dict[str, _Value], body: dict[str, Any]) -> None:
    if "authorized" in fields:
        ids = [_str(x) for x in _list(fields["authorized"])]
        for x, text in zip(_list(fields["authorized"]), ids, strict=True):
            if not re.fullmatch(r"I[0-9a-f]{40}", text):
                raise x.where.error(f"expected an identifier (I and 40 hex digits), got {text!r}")
        body["authorized"] = ids
    if "trust-any" in fields and _bool(fields["trust-any"]):
        if body.get("authorized"):
            raise fields["trust-any"].where.error("give 'authorized' or 'trust-any', not both")
        body["trust_any"] = True


# --- the file -----------------------------------------------------------------------------------

NODE_FIELDS = (
    "identity",
    "tcp-listeners",
    "transit",
    "authority",
    "tickets",
    "enroll",
    "policies",
    "relays",
    "tcp-outlets",
    "tcp-inlets",
)


def load(path: Path, env: Mapping[str, str] | None = None) -> ApplyFile:
    """Read and check ``path``; :class:`ApplyFileError` says where it is wrong."""
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ApplyFileError(f"cannot read {file}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE:
        raise ApplyFileError(f"{file}: over {MAX_FILE} bytes; is it the right file?")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise ApplyFileError(f"{file}: not UTF-8 text (byte {e.start})") from None
    root = _compose(text, file)
    if root is None:
        raise ApplyFileError(f"{file}: empty; declare at least `nodes:`")
    root = _substitute(root, os.environ if env is None else env)
    top = _fields(root, ("set", "nodes"), ("nodes",))
    set_name = _name(top["set"], "set") if "set" in top else path.stem
    try:
        check_name(set_name, "set")
    except InvalidArgumentError:
        raise root.where.error(
            f"the file's name {path.stem!r} cannot name its set: add `set: NAME`"
        ) from None
    out = ApplyFile(path.absolute(), set_name)
    nodes = top["nodes"]
    if not isinstance(nodes.value, dict) or not nodes.value:
        raise nodes.where.error("expected a mapping of node names to what each node has")
    base = path.absolute().parent
    for name, spec in nodes.value.items():
        check = _Value(name, spec.where)
        _name(check, "node")
        out.nodes[name] = _node(name, spec, base)
    return out


def _node(name: str, v: _Value, base: Path) -> NodeSpec:
    if v.value is None:
        v = _Value({}, v.where)
    f = _fields(v, NODE_FIELDS)
    identity = _name(f["identity"], "identity") if "identity" in f else name
    listeners = (
        [_host_port(x) for x in _list(f["tcp-listeners"])]
        if "tcp-listeners" in f
        else ["127.0.0.1:0"]
    )
    transit = [
        _host_port(x, star=True, port_zero=False)
        for x in _list(f.get("transit", _Value([], v.where)))
    ]
    authority = _authority(f["authority"]) if "authority" in f else None
    tickets = [_ticket(x, base) for x in _list(f.get("tickets", _Value([], v.where)))]
    if tickets and authority is None:
        raise f["tickets"].where.error("tickets need an authority on this node (`authority:`)")
    enroll = _enroll(f["enroll"], base) if "enroll" in f else None
    resources: list[Resource] = []
    for x in _list(f.get("policies", _Value([], v.where))):
        resources.append(_policy(x))
    for x in _list(f.get("relays", _Value([], v.where))):
        resources.append(_relay(x))
    for x in _list(f.get("tcp-outlets", _Value([], v.where))):
        resources.append(_outlet(x))
    for x in _list(f.get("tcp-inlets", _Value([], v.where))):
        resources.append(_inlet(x))
    seen: dict[tuple[str, str], Resource] = {}
    for r in resources:
        if (r.kind, r.key) in seen:
            first = seen[r.kind, r.key].where.line
            raise r.where.error(f"a second {r.kind} {r.key!r} (the first is at line {first})")
        seen[r.kind, r.key] = r
    return NodeSpec(
        name, identity, listeners, transit, authority, tickets, enroll, resources, v.where
    )


def _authority(v: _Value) -> dict[str, Any]:
    if v.value is None:
        v = _Value({}, v.where)
    f = _fields(v, ("name", "credential-ttl", "admin-policy", "database"))
    spec: dict[str, Any] = {"name": _str(f["name"]) if "name" in f else "authority"}
    if "credential-ttl" in f:
        spec["credential_ttl"] = _ttl(f["credential-ttl"])
    if "admin-policy" in f:
        spec["admin_policy"] = _policy_expression(f["admin-policy"])
    if "database" in f:
        spec["database"] = _str(f["database"])
    return spec


def _attributes(v: _Value) -> dict[str, str]:
    f = v.value
    if not isinstance(f, dict):
        raise v.where.error("expected a mapping of attribute names to values")
    return {k: _str(x) for k, x in f.items()}


def _ticket(v: _Value, base: Path) -> Ticket:
    f = _fields(v, ("file", "attributes", "expires-in", "usage-count", "relay-name"), ("file",))
    expires_in = None
    if "expires-in" in f:
        expires_in = _ttl(f["expires-in"])
    return Ticket(
        _path(f["file"], base),
        _attributes(f["attributes"]) if "attributes" in f else {},
        expires_in,
        _int(f["usage-count"], 1, 1_000_000) if "usage-count" in f else 1,
        _name(f["relay-name"], "relay") if "relay-name" in f else None,
        v.where,
    )


def _enroll(v: _Value, base: Path) -> Enroll:
    f = _fields(v, ("ticket-file", "ticket"))
    if ("ticket-file" in f) == ("ticket" in f):
        raise v.where.error("give the ticket as 'ticket-file' (or 'ticket: ${VAR}'), one of them")
    if "ticket" in f:
        return Enroll(None, _str(f["ticket"]).strip(), v.where)
    return Enroll(_path(f["ticket-file"], base), None, f["ticket-file"].where)


def _policy(v: _Value) -> Resource:
    f = _fields(v, ("resource-type", "resource", "expression"), ("expression",))
    body: dict[str, Any] = {
        "resource_type": _str(f["resource-type"]) if "resource-type" in f else None,
        "resource": _str(f["resource"]) if "resource" in f else None,
        "expression": _policy_expression(f["expression"]),
    }
    if body["resource_type"] is None and body["resource"] is None:
        raise v.where.error("say what the policy is for: 'resource-type' or 'resource'")
    rtype = body["resource_type"]
    if rtype is not None and rtype not in RESOURCE_TYPES and rtype != "echo":
        raise f["resource-type"].where.error(
            f"unknown resource type {rtype!r}; one of: {', '.join(sorted(RESOURCE_TYPES))}"
        )
    return Resource("policy", policy_key(body), body, v.where)


def policy_key(p: Mapping[str, Any]) -> str:
    """What identifies a policy in a file: what it is for and what it says."""
    target = p.get("resource") or f"every {p.get('resource_type')}"
    if p.get("resource") and p.get("resource_type"):
        target = f"{p['resource_type']} {p['resource']}"
    return f"{target}: {p['expression']}"


def _relay(v: _Value) -> Resource:
    f = _fields(v, ("name", "relay", "authorized", "trust-any"), ("name", "relay"))
    body: dict[str, Any] = {"name": _name(f["name"], "relay"), "at": _route(f["relay"])}
    _trust(f, body)
    return Resource("relay", body["name"], body, v.where)


def _outlet(v: _Value) -> Resource:
    f = _fields(v, ("name", "to", "allow"), ("to",))
    body: dict[str, Any] = {
        "name": _name(f["name"], "tcp-outlet") if "name" in f else "outlet",
        "to": _host_port(f["to"], port_zero=False),
        "allow": _policy_expression(f["allow"]) if "allow" in f else None,
    }
    return Resource("tcp-outlet", body["name"], body, v.where)


def _inlet(v: _Value) -> Resource:
    f = _fields(
        v, ("name", "from", "to", "allow", "authorized", "trust-any"), ("name", "from", "to")
    )
    body: dict[str, Any] = {
        "name": _name(f["name"], "tcp-inlet"),
        "from": _host_port(f["from"]),
        "to": _route(f["to"]),
        "allow": _policy_expression(f["allow"]) if "allow" in f else None,
    }
    _trust(f, body)
    return Resource("tcp-inlet", body["name"], body, v.where)
