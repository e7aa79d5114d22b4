"""Find, read and check the configuration: TOML file, then ``BRIO_*`` environment on top.

Everything that can be wrong is reported at once, as a ``ConfigError`` whose lines name the
file or variable and the key, so that an operator fixes a deployment in one round trip.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from brio.config.describe import Origin, describe, given
from brio.config.env import apply_overrides, collect_overrides, expand_references
from brio.config.errors import ConfigError, problem, shorten
from brio.config.keys import KeyPath, annotation_at, toml_key
from brio.config.model import BrioConfig
from brio.config.redact import redacted

__all__ = ["LoadedConfig", "find_config_file", "load_config", "redacted"]

SYSTEM_CONFIG = Path("/etc/brio/brio.toml")

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True)
class LoadedConfig:
    """The checked configuration, the file it came from, and the variables that overrode it."""

    config: BrioConfig
    source: Path | None
    env_overrides: list[str] = field(default_factory=list)


def find_config_file(
    env: Mapping[str, str], cwd: Path, home: Path, etc_path: Path = SYSTEM_CONFIG
) -> Path | None:
    """The first of ``$BRIO_CONFIG``, ``./brio.toml``, ``~/.config/brio/brio.toml``, ``/etc``.

    ``BRIO_CONFIG`` naming a missing file is an error, not a fall-through: the operator asked
    for that file. ``$XDG_CONFIG_HOME`` replaces ``~/.config`` when set, as usual on Linux.
    """
    explicit = env.get("BRIO_CONFIG")
    if explicit:
        path = cwd / Path(explicit).expanduser()
        if not path.exists():
            raise ConfigError([problem("BRIO_CONFIG", None, f"no such file: {explicit}")])
        if not path.is_file():
            raise ConfigError([problem("BRIO_CONFIG", None, f"not a file: {explicit}")])
        return path
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    for candidate in (cwd / "brio.toml", config_home / "brio" / "brio.toml", etc_path):
        if candidate.is_file():
            return candidate
    return None


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, search: bool = True
) -> LoadedConfig:
    """Load ``path`` (or the file found by ``find_config_file`` when ``search``), apply env.

    With no file at all the defaults apply: a single node with SQLite under ``data_dir``.
    """
    env = os.environ if env is None else env
    source = path
    if source is None and search:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        source = find_config_file(env, Path.cwd(), home)
    problems: list[str] = []
    data: dict[str, Any] = {}
    hushed: set[KeyPath] = set()  # keys already reported: no second complaint from pydantic
    if source is not None:
        data, references = expand_references(read_toml(source), env, str(source))
        problems.extend(line for _, line in references)
        hushed.update(key for key, _ in references)
    overrides, found = collect_overrides(env)
    problems.extend(found)
    env_keys, env_tables, found = apply_overrides(data, overrides)
    problems.extend(found)
    origin = Origin(source, env_keys, env_tables)
    for key, line in _misread_booleans(data, origin):
        problems.append(line)
        hushed.add(key)
    config = None
    try:
        config = BrioConfig.model_validate(data)
    except ValidationError as err:
        problems.extend(describe(err, data, origin, hush=hushed))
    if problems or config is None:
        raise ConfigError(problems)
    applied = sorted({var for var in env_keys.values()})
    return LoadedConfig(config=config, source=source, env_overrides=applied)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; unreadable or malformed files become a ``ConfigError``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([problem(str(path), None, "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([problem(str(path), None, "is a directory, not a file")]) from None
    except OSError as err:
        raise ConfigError([problem(str(path), None, f"cannot read: {err.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        detail = f"not UTF-8 text (byte 0x{raw[err.start]:02x})"
        raise ConfigError([problem(f"{path}, line {line}", None, detail)]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([_syntax_problem(path, text, str(err))]) from None


def _syntax_problem(path: Path, text: str, message: str) -> str:
    """``brio.toml, line 3, column 8: invalid TOML: Invalid value: 'port = '``."""
    match = _TOML_POSITION.search(message)
    if match is None:
        return problem(str(path), None, f"invalid TOML: {message}")
    line, column = int(match.group(1)), int(match.group(2))
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    detail = f"invalid TOML: {message[: match.start()]}"
    if shown:
        detail += f": {shorten(repr(shown))}"
    return problem(f"{path}, line {line}, column {column}", None, detail)


def _misread_booleans(data: Any, origin: Origin, path: KeyPath = ()) -> list[tuple[KeyPath, str]]:
    """``port = true`` is a mistake that pydantic would quietly read as 1: refuse it.

    The same holds for an IP network (``true`` would become ``0.0.0.1/32``). Each offending
    value is replaced by its text, so that pydantic does not convert it meanwhile.
    """
    problems: list[tuple[KeyPath, str]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    for key, value in items:
        inner = (*path, key)
        if not isinstance(value, bool):
            problems.extend(_misread_booleans(value, origin, inner))
            continue
        annotation = annotation_at(inner)
        if annotation in (int, float):
            wanted = "a number"
        elif IPv4Network in get_args(annotation):
            wanted = "an IP network such as '10.0.0.0/24'"
        else:
            continue
        detail = f"got {given(value)}; expected {wanted}, not true or false"
        problems.append((inner, problem(origin.where(inner), toml_key(inner), detail)))
        data[key] = given(value)
    return problems
