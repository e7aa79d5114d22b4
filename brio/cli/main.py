"""The ``brio`` (alias ``brio-kernel``) command line.

Every failure an operator can cause (bad config, unreachable node, bad arguments) ends in a
one-line message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brio import __version__


def _parser() -> argparse.ArgumentParser:
    from brio.cli import certs_cmd, mesh_cmd, tasks_cmd

    parser = argparse.ArgumentParser(prog="brio", description="Brio: a service mesh for AI agents.")
    parser.add_argument("--version", action="version", version=f"brio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a node")
    serve.add_argument("--config", help="config file (default: BRIO_CONFIG, ./brio.toml, ...)")

    config = sub.add_parser("config", help="check or show the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate; exit 0 if valid, 1 if not")
    check.add_argument("--config", help="config file")
    show = config_sub.add_parser("show", help="print the effective config, secrets redacted")
    show.add_argument("--config", help="config file")
    show.add_argument("--json", action="store_true", help="print JSON")

    tasks_cmd.add_parser(sub)
    mesh_cmd.add_parser(sub)
    certs_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from brio.cli.serve_cmd import serve

        return serve(args.config)
    if args.command == "config":
        from brio.cli.config_cmd import config_check, config_show

        if args.config_command == "check":
            return config_check(args.config)
        return config_show(args.config, args.json)
    if args.command == "tasks":
        from brio.cli import tasks_cmd

        return tasks_cmd.run(args)
    if args.command == "certs":
        from brio.cli import certs_cmd

        return certs_cmd.run(args)
    if args.command == "mesh":
        from brio.cli import mesh_cmd

        return mesh_cmd.run(args)
    parser.print_help(sys.stderr)
    return 2
