"""``tether apply FILE``: converge running nodes to what a file declares (``docs/apply.md``).

A file (:mod:`tether.cli.apply_file`) names a *set*; what apply creates is recorded under the
set's name (``$TETHER_HOME/applied/SET.json``), and only that is ever deleted: a resource made
by hand on a node the file names is left alone. Applying compares the file with each node's
saved configuration (which a running node keeps current), makes a plan of what to create,
change and delete, and carries it out through each node's control API, in phases so that one
file may name nodes that depend on each other (an authority, then its tickets, then the
enrollments that use them, then policies before the resources they guard). A second apply of
the same file changes nothing and says so. ``--dry-run`` shows the plan only.

The same engine re-reads a node's file when ``tether node run NAME --config FILE`` gets SIGHUP
(:func:`converge_node`): the node's own resources only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tether.cli import node_process as node_cli
from tether.cli.apply_file import ApplyFile, NodeSpec, Resource, load, policy_key
from tether.cli.control_client import call
from tether.cli.parser import Context, add_command
from tether.core.errors import InvalidArgumentError, NotFoundError, StoreError, TetherError
from tether.daemon import saved_nodes
from tether.daemon.saved_nodes import NodeConfig
from tether.identity.registry import Registry
from tether.services.authority import Ticket as AuthorityTicket
from tether.store.local import Store, default_home

#: The order resources are created in (and deleted in, backwards), after the nodes.
PHASES = ("authority", "ticket", "enroll", "policy", "relay", "tcp-outlet", "tcp-inlet")
_SECTION = {
    "policy": "policies",
    "relay": "relays",
    "tcp-outlet": "tcp_outlets",
    "tcp-inlet": "tcp_inlets",
}
_PATH = {
    "policy": "/policies",
    "relay": "/relays",
    "tcp-outlet": "/tcp-outlets",
    "tcp-inlet": "/tcp-inlets",
}
_KEY = {"policy": "id", "relay": "name", "tcp-outlet": "name", "tcp-inlet": "name"}
_COMPARED = {
    "relay": ("at", "authorized", "trust_any"),
    "tcp-outlet": ("to", "allow"),
    "tcp-inlet": ("from", "to", "allow", "authorized", "trust_any"),
    "policy": (),
}


# --- what apply manages ------------------------------------------------------------------------


def applied_dir(home: Path) -> Path:
    return home / "applied"


@dataclass
class Managed:
    """What a set's applies created, node by node: ``node`` (apply created the node), and per
    kind the keys of the resources it created (a policy's key is what it says)."""

    set_name: str
    file: str = ""
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def keys(self, node: str, kind: str) -> list[str]:
        return list(self.nodes.get(node, {}).get(kind, []))

    def add(self, node: str, kind: str, key: str) -> None:
        keys = self.nodes.setdefault(node, {}).setdefault(kind, [])
        if key not in keys:
            keys.append(key)

    def drop(self, node: str, kind: str, key: str) -> None:
        keys = self.nodes.get(node, {}).get(kind, [])
        if key in keys:
            keys.remove(key)

    @classmethod
    def read(cls, home: Path, set_name: str) -> Managed:
        path = applied_dir(home) / f"{set_name}.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(set_name)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read what set {set_name!r} manages ({path}): {e}") from None
        return cls(set_name, str(d.get("file", "")), dict(d.get("nodes", {})))

    def write(self, home: Path) -> None:
        d = applied_dir(home)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = d / f"{self.set_name}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"set": self.set_name, "file": self.file, "nodes": self.nodes}, f, indent=1)
        os.replace(tmp, path)


def _owners(home: Path, exclude: str) -> dict[str, str]:
    """Each node another set manages, and that set's name."""
    owners: dict[str, str] = {}
    d = applied_dir(home)
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        if path.stem == exclude:
            continue
        with contextlib.suppress(OSError, ValueError):
            for name in json.loads(path.read_text()).get("nodes", {}):
                owners[name] = path.stem
    return owners


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class Step:
    action: str  # create, change, delete, start, restart
    node: str
    kind: str
    name: str
    detail: str
    run: Callable[[], None]

    def line(self) -> str:
        mark = {"create": "+", "delete": "-"}.get(self.action, "~")
        what = f"{self.kind} {self.name}" if self.kind != "node" else f"node {self.node}"
        where = f" at {self.node}" if self.kind != "node" else ""
        return f"  {mark} {self.action} {what}{where}" + (f": {self.detail}" if self.detail else "")

    def info(self) -> dict[str, str]:
        return {
            "action": self.action,
            "node": self.node,
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
        }


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    unchanged: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Planning:
    """What one node's planning adds to: the plan, and the steps of each phase."""

    plan: Plan
    creates: dict[str, list[Step]]
    deletes: dict[str, list[Step]]
    node: NodeSpec
    cfg: NodeConfig | None


class Applier:
    """Plans and carries out one file's apply in ``home``."""

    def __init__(
        self, home: Path, registry: Registry, spec: ApplyFile, *, in_place: str | None = None
    ) -> None:
        self.home = home
        self.registry = registry
        self.spec = spec
        self.in_place = in_place
        """The node this process runs (``node run --config``): only its resources are touched."""
        self.managed = Managed.read(home, spec.set_name)
        self.managed.file = str(spec.path)

    @property
    def store(self) -> Store:
        return self.registry.store

    def _config(self, name: str) -> NodeConfig | None:
        try:
            return saved_nodes.load_config(self.store, name)
        except NotFoundError:
            return None

    def _api(self, node: str, method: str, path: str, body: Any = None) -> Any:
        return call(saved_nodes.api_socket(self.home, node), method, path, body, timeout=60)

    def plan(self) -> Plan:
        plan = Plan()
        owners = _owners(self.home, self.spec.set_name)
        nodes = (
            {self.in_place: self.spec.nodes[self.in_place]}
            if self.in_place is not None
            else self.spec.nodes
        )
        for name, node in nodes.items():
            if name in owners:
                raise node.where.error(
                    f"node {name!r} is managed by the set {owners[name]!r} (another file); a "
                    "node belongs to one set"
                )
        phases: dict[str, list[Step]] = {p: [] for p in ("node", *PHASES)}
        deletes: dict[str, list[Step]] = {p: [] for p in ("node", *PHASES)}
        for name, node in nodes.items():
            cfg = self._config(name)
            p = _Planning(plan, phases, deletes, node, cfg)
            self._plan_node(p)
            self._plan_authority(p)
            self._plan_tickets(p)
            self._plan_enroll(p)
            for kind in ("policy", "relay", "tcp-outlet", "tcp-inlet"):
                self._plan_resources(p, kind)
        if self.in_place is None:
            for name in self.managed.nodes:
                if name not in nodes and self.managed.nodes[name].get("node"):
                    deletes["node"].append(self._delete_node(name))
        for kind in reversed(("node", *PHASES)):
            plan.steps.extend(deletes[kind] if kind != "node" else [])
        for kind in ("node", *PHASES):
            plan.steps.extend(phases[kind])
        plan.steps.extend(deletes["node"])
        return plan

    # nodes

    def _plan_node(self, p: _Planning) -> None:
        plan, steps, node, cfg = p.plan, p.creates["node"], p.node, p.cfg
        name = node.name
        if cfg is None:
            if self.in_place is not None:
                raise StoreError(f"node {name!r} has no saved configuration")
            listeners = ", ".join(node.tcp_listeners) or "no TCP listener"
            steps.append(
                Step(
                    "create",
                    name,
                    "node",
                    name,
                    f"identity {node.identity}; {listeners}",
                    lambda: self._create_node(node),
                )
            )
            return
        changes = []
        if (cfg.identity or name) != node.identity:
            changes.append(f"identity {cfg.identity} → {node.identity}")
        if cfg.tcp_listeners != node.tcp_listeners:
            changes.append(f"tcp-listeners {cfg.tcp_listeners} → {node.tcp_listeners}")
        if cfg.transit != node.transit:
            changes.append(f"transit {cfg.transit} → {node.transit}")
        running = saved_nodes.read_runtime(self.home, name) is not None
        if self.in_place is not None:
            if changes:
                plan.notes.append(
                    f"node {name}: {'; '.join(changes)} saved; they take effect at its next start"
                )
                steps.append(
                    Step(
                        "change",
                        name,
                        "node",
                        name,
                        "; ".join(changes) + " (at the next start)",
                        lambda: self._save_node(node),
                    )
                )
            else:
                plan.unchanged += 1
            return
        if changes:
            steps.append(
                Step(
                    "restart" if running else "change",
                    name,
                    "node",
                    name,
                    "; ".join(changes),
                    lambda: self._change_node(node),
                )
            )
        elif not running:
            steps.append(
                Step("start", name, "node", name, "it was stopped", lambda: self._start_node(name))
            )
        else:
            plan.unchanged += 1

    def _create_node(self, node: NodeSpec) -> None:
        made_identity = False
        try:
            self.registry.get(node.identity)
        except NotFoundError:
            self.registry.create_identity(node.identity)
            made_identity = True
        cfg = NodeConfig(
            node.name, node.identity, list(node.tcp_listeners), transit=list(node.transit)
        )
        saved_nodes.save_config(self.store, cfg, create=True)
        self.managed.nodes.setdefault(node.name, {})["node"] = True
        if made_identity:
            self.managed.nodes[node.name]["identity"] = node.identity
        self.managed.write(self.home)
        self._start_node(node.name)

    def _save_node(self, node: NodeSpec) -> None:
        with self.store.transaction():
            cfg = saved_nodes.load_config(self.store, node.name)
            cfg.identity, cfg.tcp_listeners = node.identity, list(node.tcp_listeners)
            cfg.transit = list(node.transit)
            saved_nodes.save_config(self.store, cfg)

    def _change_node(self, node: NodeSpec) -> None:
        self.registry.get(node.identity)  # it must exist: apply never makes a node's new identity
        node_cli.stop_one(self.home, node.name)
        self._save_node(node)
        self._start_node(node.name)

    def _start_node(self, name: str) -> None:
        info = node_cli.spawn(self.home, name)
        busy = [w for w in info.get("waiting") or [] if w["resource"] == "listener"]
        if busy:
            raise InvalidArgumentError(f"node {name!r}: {busy[0]['error']}")

    def _delete_node(self, name: str) -> Step:
        def run() -> None:
            node_cli.stop_one(self.home, name)
            with contextlib.suppress(NotFoundError):
                saved_nodes.delete_config(self.store, name)
            shutil.rmtree(saved_nodes.node_dir(self.home, name), ignore_errors=True)
            self.managed.nodes.pop(name, None)
            self.managed.write(self.home)

        return Step(
            "delete", name, "node", name, "no longer in the file (its identity is kept)", run
        )

    # the authority, tickets, enrollment

    def _plan_authority(self, p: _Planning) -> None:
        plan, node, cfg = p.plan, p.node, p.cfg
        steps, deletes = p.creates["authority"], p.deletes["authority"]
        name = node.name
        have = cfg.authority if cfg is not None else None
        want = node.authority
        if want is None:
            if have is not None and self.managed.nodes.get(name, {}).get("authority"):
                deletes.append(
                    Step(
                        "delete",
                        name,
                        "authority",
                        str(have.get("name")),
                        "its members' state stays in its database",
                        lambda: self._drop_authority(name),
                    )
                )
            return
        if have is None:
            steps.append(
                Step(
                    "create",
                    name,
                    "authority",
                    want["name"],
                    "",
                    lambda: self._create_authority(name, want),
                )
            )
            return
        differs = [k for k in want if have.get(k) != want[k]]
        if differs:
            steps.append(
                Step(
                    "change",
                    name,
                    "authority",
                    want["name"],
                    ", ".join(f"{k} {have.get(k)!r} → {want[k]!r}" for k in differs),
                    partial(self._replace_authority, name, want),
                )
            )
        else:
            plan.unchanged += 1

    def _replace_authority(self, node: str, spec: dict[str, Any]) -> None:
        self._drop_authority(node)
        self._create_authority(node, spec)

    def _create_authority(self, node: str, spec: dict[str, Any]) -> None:
        self._api(node, "POST", "/authority", spec)
        self.managed.nodes.setdefault(node, {})["authority"] = True
        self.managed.write(self.home)

    def _drop_authority(self, node: str) -> None:
        self._api(node, "DELETE", "/authority")
        self.managed.nodes.setdefault(node, {}).pop("authority", None)
        self.managed.write(self.home)

    def _plan_tickets(self, p: _Planning) -> None:
        plan, steps, node = p.plan, p.creates["ticket"], p.node
        for t in node.tickets:
            try:
                there = t.file.stat().st_size > 0
            except FileNotFoundError:
                there = False
            if there:
                plan.unchanged += 1
                continue
            attrs = ", ".join(f"{k}={v}" for k, v in t.attributes.items()) or "no attributes"

            def run(t: Any = t) -> None:
                body = {
                    "attributes": t.attributes,
                    "expires_in": t.expires_in if t.expires_in is not None else 600,
                    "usage_count": t.usage_count,
                    "relay": t.relay_name,
                    "route": None,
                }
                r = self._api(node.name, "POST", "/authority/tickets", body)
                t.file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(t.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(r["ticket"] + "\n")

            steps.append(
                Step(
                    "create", node.name, "ticket", t.file.name, f"{attrs}, written to {t.file}", run
                )
            )

    def _plan_enroll(self, p: _Planning) -> None:
        plan, node, cfg = p.plan, p.node, p.cfg
        steps, deletes = p.creates["enroll"], p.deletes["enroll"]
        name = node.name
        members = {str(m.get("identifier")) for m in (cfg.memberships if cfg is not None else [])}
        ours = self.managed.keys(name, "enroll")
        e = node.enroll
        if e is None:
            for authority in ours:
                if authority in members:
                    deletes.append(
                        Step(
                            "delete",
                            name,
                            "membership",
                            authority,
                            "",
                            partial(self._leave, name, authority),
                        )
                    )
            return
        text = e.text()
        if text is not None:
            try:
                authority = AuthorityTicket.decode(text).authority.identifier
            except TetherError as err:
                raise e.where.error(f"not a ticket: {err}") from None
            if authority in members:
                plan.unchanged += 1
                return
        elif members & set(ours):
            plan.unchanged += 1  # enrolled by an earlier apply; the one-time ticket is used
            return
        source = str(e.ticket_file) if e.ticket_file is not None else "the ticket given"

        def run() -> None:
            text = e.text()
            if text is None:
                raise e.where.error(
                    f"the ticket file {e.ticket_file} is not there: apply the file that "
                    "creates it (the authority's site) first, or copy it here"
                )
            m = self._api(name, "POST", "/enroll", {"ticket": text})
            self.managed.add(
                name,
                "enroll",
                str(m.get("identifier") or AuthorityTicket.decode(text).authority.identifier),
            )
            self.managed.write(self.home)

        shown = e.ticket_file.name if e.ticket_file is not None else "ticket"
        steps.append(Step("create", name, "membership", shown, f"enroll with {source}", run))

    def _leave(self, node: str, authority: str) -> None:
        self._api(node, "DELETE", f"/memberships/{authority}")
        self.managed.drop(node, "enroll", authority)
        self.managed.write(self.home)

    # policies, relays, outlets, inlets

    def _plan_resources(self, p: _Planning, kind: str) -> None:
        plan, node, cfg = p.plan, p.node, p.cfg
        steps, deletes = p.creates[kind], p.deletes[kind]
        name = node.name
        have: dict[str, dict[str, Any]] = {}
        for entry in getattr(cfg, _SECTION[kind]) if cfg is not None else []:
            key = policy_key(entry) if kind == "policy" else str(entry.get("name"))
            have[key] = entry
        want = {r.key: r for r in node.resources if r.kind == kind}
        ours = self.managed.keys(name, kind)
        for key in ours:
            if key not in want and key in have:
                deletes.append(
                    self._delete_step(name, kind, key, have[key], "no longer in the file")
                )
        for key, r in want.items():
            old = have.get(key)
            if old is None:
                steps.append(
                    Step(
                        "create",
                        name,
                        kind,
                        _shown(kind, key),
                        _describe(kind, r.body),
                        partial(self._create, name, r),
                    )
                )
                continue
            differs = [f for f in _COMPARED[kind] if not _same(kind, f, old.get(f), r.body.get(f))]
            if not differs:
                plan.unchanged += 1
                if key not in ours:
                    plan.notes.append(
                        f"{kind} {_shown(kind, key)} at {name}: already there, "
                        "now managed by this set"
                    )
                    self.managed.add(name, kind, key)
                continue
            detail = ", ".join(f"{f} {old.get(f)!r} → {r.body.get(f)!r}" for f in differs)

            def change(r: Resource = r, old: dict[str, Any] = old) -> None:
                self._delete(name, kind, r.key, old)
                self._create(name, r)

            steps.append(Step("change", name, kind, _shown(kind, key), detail, change))

    def _delete_step(self, node: str, kind: str, key: str, entry: dict[str, Any], why: str) -> Step:
        return Step(
            "delete",
            node,
            kind,
            _shown(kind, key),
            why,
            lambda: self._delete(node, kind, key, entry),
        )

    def _create(self, node: str, r: Resource) -> None:
        self._api(node, "POST", _PATH[r.kind], {k: v for k, v in r.body.items() if v is not None})
        self.managed.add(node, r.kind, r.key)
        self.managed.write(self.home)

    def _delete(self, node: str, kind: str, key: str, entry: dict[str, Any]) -> None:
        self._api(node, "DELETE", f"{_PATH[kind]}/{entry[_KEY[kind]]}")
        self.managed.drop(node, kind, key)
        self.managed.write(self.home)

    def save(self) -> None:
        self.managed.write(self.home)


def _same(kind: str, f: str, have: Any, want: Any) -> bool:
    if kind == "tcp-inlet" and f == "from" and isinstance(want, str) and want.endswith(":0"):
        # port 0 asks for any free port; the node saves the one it got
        return isinstance(have, str) and have.rpartition(":")[0] == want.rpartition(":")[0]
    if f in ("authorized",):
        return list(have or []) == list(want or [])
    if f == "trust_any":
        return bool(have) == bool(want)
    return bool(have == want or (not have and not want))


def _shown(kind: str, key: str) -> str:
    return f"({key})" if kind == "policy" else key


def _describe(kind: str, body: dict[str, Any]) -> str:
    if kind == "policy":
        return ""
    if kind == "relay":
        return f"claims the name at {body['at']}"
    if kind == "tcp-outlet":
        return f"→ {body['to']}" + (f", allow {body['allow']}" if body.get("allow") else "")
    return f"{body['from']} → {body['to']}"


# --- running it --------------------------------------------------------------------------------


def summary(plan: Plan) -> dict[str, int]:
    counts = {"create": 0, "change": 0, "delete": 0, "unchanged": plan.unchanged}
    for s in plan.steps:
        counts[
            "delete" if s.action == "delete" else "create" if s.action == "create" else "change"
        ] += 1
    return counts


def carry_out(plan: Plan, applier: Applier, progress: Callable[[str], None]) -> None:
    """Each step in order; the first failure stops the apply (what was done stays done and
    recorded: applying again continues from there)."""
    for i, step in enumerate(plan.steps, 1):
        progress(f"[{i}/{len(plan.steps)}]{step.line()[3:]}")
        try:
            step.run()
        except TetherError as e:
            raise TetherError(
                f"apply stopped at step {i} of {len(plan.steps)} ({step.action} {step.kind} "
                f"{step.name or step.node} at {step.node}): {e}; the {i - 1} step(s) before it "
                "are done: fix the cause and apply again"
            ) from None
    applier.save()


def create_config(home: Path, registry: Registry, spec: ApplyFile, name: str) -> None:
    """Save node ``name`` of ``spec`` if the store has no such node (``node run --config`` on a
    fresh home: the file is all there is), with its identity (made if missing); the set of the
    file manages it from then on."""
    if name in _owners(home, spec.set_name):
        raise spec.nodes[name].where.error(
            f"node {name!r} is managed by the set {_owners(home, spec.set_name)[name]!r} "
            "(another file); a node belongs to one set"
        )
    node = spec.nodes[name]
    try:
        saved_nodes.load_config(registry.store, name)
        return
    except NotFoundError:
        pass
    managed = Managed.read(home, spec.set_name)
    managed.file = str(spec.path)
    try:
        registry.get(node.identity)
    except NotFoundError:
        registry.create_identity(node.identity)
        managed.nodes.setdefault(name, {})["identity"] = node.identity
    cfg = NodeConfig(name, node.identity, list(node.tcp_listeners), transit=list(node.transit))
    saved_nodes.save_config(registry.store, cfg, create=True)
    managed.nodes.setdefault(name, {})["node"] = True
    managed.write(home)


def converge_node(home: Path, path: Path, node: str) -> str:
    """Converge the running node ``node`` to its part of ``path`` (SIGHUP under ``node run
    --config``); returns what changed, in one line."""
    spec = load(path)
    if node not in spec.nodes:
        raise InvalidArgumentError(f"{path} declares no node {node!r}")
    store = Store(home)
    try:
        applier = Applier(home, Registry(store), spec, in_place=node)
        plan = applier.plan()
        carry_out(plan, applier, lambda _: None)
    finally:
        store.close()
    c = summary(plan)
    lines = [s.line().strip() for s in plan.steps]
    return (
        f"{c['create']} created, {c['change']} changed, {c['delete']} deleted, "
        f"{c['unchanged']} unchanged" + ("".join(f"; {x}" for x in lines))
    )


def _apply(ctx: Context) -> int:
    a = ctx.args
    home = ctx.home or default_home()
    spec = load(Path(a.file))
    applier = Applier(home, ctx.registry(), spec)
    plan = applier.plan()
    counts = summary(plan)
    data = {
        "set": spec.set_name,
        "file": str(spec.path),
        "dry_run": bool(a.dry_run),
        "changes": [s.info() for s in plan.steps],
        "notes": plan.notes,
        **counts,
    }
    head = f"tether apply {a.file} (set {spec.set_name})"
    if not plan.steps:
        if not a.dry_run:
            applier.save()
        ctx.emit(f"{head}: no changes; {plan.unchanged} resource(s) as the file says", data)
        return 0
    counted = (
        f"{counts['create']} to create, {counts['change']} to change, "
        f"{counts['delete']} to delete, {counts['unchanged']} unchanged"
    )
    if a.dry_run:
        lines = [f"{head}: plan (--dry-run: nothing is changed)", *(s.line() for s in plan.steps)]
        ctx.emit("\n".join([*lines, *(f"  note: {n}" for n in plan.notes), counted]), data)
        return 0
    quiet = ctx.json

    def progress(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    if not quiet:
        print(f"{head}: {counted}", flush=True)
    carry_out(plan, applier, progress)
    for n in plan.notes:
        progress(f"note: {n}")
    done = (
        f"applied: {counts['create']} created, {counts['change']} changed, "
        f"{counts['delete']} deleted, {counts['unchanged']} unchanged"
    )
    ctx.emit("" if not ctx.json else done, data)
    if not quiet:
        print(done)
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(
        groups,
        "apply",
        "create, change and delete nodes and their resources to match a file",
        "tether apply site.yaml --dry-run",
        _apply,
    )
    p.description = (
        "Converge the nodes a YAML file declares (identities, listeners, an authority, tickets, "
        "enrollment, policies, relays, tcp-outlets, tcp-inlets) to the file: create what is "
        "missing, change what differs, and delete what an earlier apply of the same set "
        "created and the file no longer names. Applying twice changes nothing. ${VAR} in the "
        "file is read from the environment. See docs/apply.md."
    )
    p.add_argument("file", metavar="FILE", help="the YAML file (docs/apply.md)")
    p.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
