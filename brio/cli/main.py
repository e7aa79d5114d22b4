"""The ``brio`` (alias ``brio-kernel``) command line.

Every failure an operator can cause (bad config, unreachable node, bad arguments) ends in a
one-line message and a non-zero exit code, never a traceback.

A CLI call starts fast: this module imports nothing but argparse. Each command lives in
``brio/cli/<command>_cmd.py`` and is imported only when it is the command being run; it adds
its own arguments (``add_arguments``) and does its work (``run``), importing what that work
needs (config, gRPC, HTTP) inside the functions that need it. So ``brio --version`` loads no
command at all, and ``brio mesh status --help`` loads only ``mesh_cmd``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from brio import __version__

#: Every command and its one-line help, listed by ``brio --help`` without importing any.
COMMANDS: dict[str, str] = {
    "serve": "run a node",
    "config": "check or show the effective configuration",
    "tasks": "submit, inspect and watch tasks on a node",
    "mesh": "inspect the mesh through the local node",
    "certs": "make a private CA and node certificates for mesh mTLS",
}


class Command(Protocol):
    """What a ``brio/cli/<command>_cmd.py`` module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _command_module(name: str) -> Command:
    return cast(Command, importlib.import_module(f"brio.cli.{name}_cmd"))


def _chosen(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option.

    Exact because the top-level options (``--help``, ``--version``) take no value.
    """
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _parser(command: str | None) -> argparse.ArgumentParser:
    """Every command is listed; only ``command`` (if it is one) gets its arguments."""
    parser = argparse.ArgumentParser(prog="brio", description="Brio: a service mesh for AI agents.")
    parser.add_argument("--version", action="version", version=f"brio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=text, description=text)
        if name == command:
            _command_module(name).add_arguments(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = _chosen(arguments)
    parser = _parser(command if command in COMMANDS else None)
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _command_module(args.command).run(args)
