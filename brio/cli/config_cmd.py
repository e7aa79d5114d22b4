"""``brio config check`` and ``brio config show``: see what a node would run with, safely.

Both load exactly as ``brio serve`` does (``--config`` replaces the file lookup; the ``BRIO_*``
environment still applies), so "OK" here means the node will start with this configuration.
Secrets are never printed. The config (pydantic, the agents) is imported when a check or a
show runs, not for ``brio config --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brio.config.errors import ConfigError
    from brio.config.load import LoadedConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate; exit 0 if valid, 1 if not")
    check.add_argument("--config", help="config file")
    show = actions.add_parser("show", help="print the effective config, secrets redacted")
    show.add_argument("--config", help="config file")
    show.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        return config_check(args.config)
    return config_show(args.config, args.json)


def _load(config_path: str | None) -> LoadedConfig:
    from brio.config.load import load_config

    path = Path(config_path) if config_path is not None else None
    return load_config(path, os.environ)


def _report(err: ConfigError) -> int:
    count = len(err.problems)
    print(
        f"brio: invalid configuration ({count} problem{'s' if count != 1 else ''}):",
        file=sys.stderr,
    )
    for line in err.problems:
        print(f"  {line}", file=sys.stderr)
    return 1


def config_check(config_path: str | None) -> int:
    """Print ``OK: <source>`` and return 0, or print every problem to stderr and return 1."""
    from brio.agents.registry import build_registry
    from brio.config.errors import ConfigError
    from brio.mesh.tls import TLSSetupError, check_files

    try:
        loaded = _load(config_path)
        build_registry(loaded.config)  # agents that cannot be built would stop `brio serve`
        if loaded.config.mesh.enabled:
            check_files(loaded.config.mesh.tls)  # so would a bad certificate
    except ConfigError as err:
        return _report(err)
    except TLSSetupError as err:
        print(f"brio: invalid configuration:\n  {err}", file=sys.stderr)
        return 1
    print(f"OK: {loaded.source if loaded.source is not None else 'defaults'}")
    if loaded.env_overrides:
        print(f"environment overrides: {', '.join(loaded.env_overrides)}")
    for note in loaded.config.not_in_effect():
        print(f"warning: {note}", file=sys.stderr)
    mesh = loaded.config.mesh
    if mesh.enabled:
        print(f"lease voters: {', '.join(sorted(mesh.lease_voters()))}")
        for warning in (mesh.lease_voters_warning(), mesh.insecure_warning()):
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
    return 0


def config_show(config_path: str | None, as_json: bool) -> int:
    """Print the effective configuration, secrets redacted, as TOML (or JSON with ``as_json``)."""
    from brio.config.errors import ConfigError
    from brio.config.redact import redacted
    from brio.config.render import to_toml

    try:
        loaded = _load(config_path)
    except ConfigError as err:
        return _report(err)
    data = redacted(loaded.config)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    source = loaded.source if loaded.source is not None else "defaults"
    print(f"# source: {source}")
    if loaded.env_overrides:
        print(f"# environment overrides: {', '.join(loaded.env_overrides)}")
    print()
    print(to_toml(data), end="")
    return 0
