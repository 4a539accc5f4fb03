"""The command line's parsers: the parser of ``tether`` and of each command (a command's own
usage for any mistake made in it, old spellings of renamed options), how a command is added to
its group, and what a command's handler gets (:class:`Context`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.identity.registry import Registry
from tether.store.local import Store


@dataclass(frozen=True)
class Renamed:
    """An option's old spelling, still accepted for one release: the command line is rewritten
    to the new spelling before parsing, with a one-line note on stderr (``note``, if given,
    is that line). ``when`` limits the rename to values it accepts (an old flag whose meaning
    moved to another flag)."""

    old: str
    new: str
    when: Callable[[str], bool] | None = None
    note: str = ""


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class Parser(argparse.ArgumentParser):
    """The parser of ``tether`` and of each of its commands: a command's own usage for any
    mistake made in it (an unknown option is reported before a missing one, and never by the
    top-level parser), and old option spellings kept for one release (:class:`Renamed`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed: list[Renamed] = []
        self.is_command = False  # a leaf: it runs a handler, it has no subcommands

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self.is_command:
            return super().parse_known_args(args, namespace)
        arg_list = self._renamed(list(sys.argv[1:] if args is None else args))
        unknown = self._unknown_options(arg_list)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        ns, extras = super().parse_known_args(arg_list, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras

    def _renamed(self, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                out.extend(args[i:])
                break
            flag, eq, value = arg.partition("=")
            given = value if eq else (args[i + 1] if i + 1 < len(args) else None)
            rule = next(
                (
                    r
                    for r in self.renamed
                    if r.old == flag and (r.when is None or (given is not None and r.when(given)))
                ),
                None,
            )
            if rule is None:
                out.append(arg)
                i += 1
                continue
            note = rule.note or (
                f"{rule.old} is deprecated, use {rule.new} (the old spelling will be removed in "
                "the next release)"
            )
            print(f"{self.prog}: {note}", file=sys.stderr)
            if eq:
                out.append(f"{rule.new}={value}")
                i += 1
            else:
                out.extend([rule.new, *args[i + 1 : i + 2]])
                i += 2
        return out

    def _unknown_options(self, args: list[str]) -> list[str]:
        """The options of ``args`` this command does not have (as argparse tells an option
        from a value: a leading '-', not a negative number, no space)."""
        known = self._option_string_actions
        unknown: list[str] = []
        for arg in args:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or _NEGATIVE_NUMBER.match(arg):
                continue
            flag = arg.partition("=")[0]
            if flag in known or " " in arg:
                continue
            if (
                self.allow_abbrev
                and flag.startswith("--")
                and any(k.startswith(flag) for k in known)
            ):
                continue
            unknown.append(arg)
        return unknown


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self._registry: Registry | None = None

    @property
    def home(self) -> Path | None:
        home: str | None = self.args.home
        return Path(home).absolute() if home else None  # (a daemon, and its output, use it)

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(Store(self.home))
        return self._registry

    def emit(self, human: str, data: object) -> None:
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif human:
            print(human)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.store.close()


Handler = Callable[[Context], int]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    example: str,
    handler: Handler,
    *,
    json_flag: bool = True,
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    assert isinstance(p, Parser)  # subparsers are made with their parent's class
    p.is_command = True
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=handler, command_parser=p)
    return p


def rename(p: argparse.ArgumentParser, *renamed: Renamed) -> None:
    """Keep old spellings of ``p``'s options working for one release (see :class:`Renamed`)."""
    assert isinstance(p, Parser)
    p.renamed.extend(renamed)


def add_group(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str,
    example: str,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group (``tether NAME …``); returns its subcommand registry."""
    group = groups.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title="commands", metavar="COMMAND")
