"""Turn pydantic's validation errors into the plain problem lines of ``ConfigError``.

pydantic speaks of ``float_parsing`` at ``('mesh', 'failure_detection', 'heartbeat_interval')``;
an operator needs "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_INTERVAL: [mesh.failure_detection]
heartbeat_interval: got 'fast'; expected a number". This module does that translation, and
remembers which keys came from which environment variable so that the right source is named.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import SecretStr, ValidationError

from brio.config.errors import problem, shorten
from brio.config.keys import (
    KeyPath,
    annotation_at,
    dotted,
    is_model,
    known_keys,
    literal_values,
    toml_key,
)
from brio.config.model import CONFLICT_ERROR_TYPE, Conflict
from brio.config.redact import redact_text

_PATTERNS: Mapping[str, str] = {
    r"^https?://": "expected a URL starting with http:// or https://",
    r"^/": "expected a path starting with '/'",
    r"^[\w.]+:[\w.]+$": "expected 'package.module:function'",
}

_PLAIN: Mapping[str, str] = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number, not a fraction",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string (in quotes)",
    "string_too_short": "expected a non-empty string",
    "dict_type": "expected a table ([section] or { key = value })",
    "model_type": "expected a table ([section] or { key = value })",
    "model_attributes_type": "expected a table ([section] or { key = value })",
    "ip_v4_network": "expected an IP network such as '10.0.0.0/24'",
    "ip_v6_network": "expected an IP network such as '10.0.0.0/24'",
    "ip_any_network": "expected an IP network such as '10.0.0.0/24'",
    "path_type": "expected a file path (a string)",
    "missing": "this key is required but missing",
}

_SECRET_KEYS = frozenset({"auth_token", "api_key", "password", "cluster_secret"})


@dataclass(frozen=True)
class Origin:
    """Where each key of the merged configuration came from: the file or an env variable.

    ``env_keys`` maps keys set by a variable; ``env_tables`` maps tables that did not exist in
    the file and were created to hold such a key.
    """

    file: Path | None
    env_keys: Mapping[KeyPath, str] = field(default_factory=dict)
    env_tables: Mapping[KeyPath, str] = field(default_factory=dict)

    def source_of(self, path: Sequence[str | int]) -> str | None:
        """The env variable that set this key (or its table), else the file, else ``None``."""
        names = tuple(path)
        for length in range(len(names), 0, -1):
            var = self.env_keys.get(names[:length])
            if var:
                return var
        for candidate in (names, names[:-1]):
            var = self.env_tables.get(candidate)
            if var:
                return var
        return str(self.file) if self.file is not None else None

    def where(self, *paths: Sequence[str | int]) -> str:
        """The sources of all ``paths``, joined; "defaults" when none was set anywhere."""
        found: list[str] = []
        for path in paths:
            source = self.source_of(path)
            if source is not None and source not in found:
                found.append(source)
        return ", ".join(found) if found else "defaults"


def given(value: Any, path: Sequence[str | int] = ()) -> str:
    """A short, secret-free ``repr`` of what the operator wrote."""
    last = path[-1] if path else None
    if isinstance(value, SecretStr) or last in _SECRET_KEYS:
        return "'***'"
    if isinstance(value, bool):
        return "true" if value else "false"  # as written in TOML
    if isinstance(value, dict):
        return "a table"  # its contents are reported key by key, and may hold secrets
    if isinstance(value, str):
        value = redact_text(value)
    return shorten(repr(value))


def expected(error: Mapping[str, Any], path: KeyPath) -> str:
    """Plain words for what a key should have held."""
    kind = str(error["type"])
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_key(path, isinstance(error.get("input"), dict))
    if kind == "literal_error":
        values = literal_values(annotation_at(path))
        if values:
            return "expected one of " + ", ".join(repr(v) for v in values)
        return f"expected {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return _PATTERNS.get(pattern, f"expected text matching {pattern}")
    if kind == "list_type":
        annotation = annotation_at(path)
        if get_origin(annotation) is list and is_model(get_args(annotation)[0]):
            return f"expected a list of tables: write each entry under its own [[{dotted(path)}]]"
        return 'expected a list, e.g. ["a", "b"]'
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[kind]
        bound = next(iter(ctx.values()), "?")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"expected a number {words} {bound}"
    if kind in ("value_error", "assertion_error"):
        text = str(error.get("msg", ""))
        for prefix in ("Value error, ", "Assertion failed, "):
            text = text.removeprefix(prefix)
        return text
    return _PLAIN.get(kind, str(error.get("msg", kind)))


def _unknown_key(path: KeyPath, is_table: bool) -> str:
    text = "unknown section" if is_table else "unknown key"
    known = known_keys(path[:-1])
    if not known:
        return text
    close = difflib.get_close_matches(str(path[-1]), known, n=1)
    if close:
        text += f" (did you mean {close[0]!r}?)"
    return f"{text}; known keys are: {', '.join(known)}"


def _real_path(loc: Sequence[str | int], data: Any, kind: str) -> tuple[KeyPath, Any]:
    """Keep the parts of pydantic's ``loc`` that are keys in ``data``; drop union tags.

    Returns the path and the value found there (``None`` for a missing key).
    """
    path: list[str | int] = []
    value = data
    for position, part in enumerate(loc):
        in_table = isinstance(value, Mapping) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if in_table or in_list:
            value = value[part]
            path.append(part)
        elif kind == "missing" and position == len(loc) - 1 and isinstance(value, Mapping):
            path.append(part)
            value = None
        # anything else is a tag that pydantic adds for a member of a union: not a key
    return tuple(path), value


def describe(
    error: ValidationError,
    data: Mapping[str, Any],
    origin: Origin,
    hush: Collection[KeyPath] = (),
) -> list[str]:
    """One line per problem; errors that pydantic reports per union member are merged.

    Keys in ``hush`` were already reported (an unset ``${VAR}``); what pydantic thinks of
    their unexpanded value would only be noise.
    """
    lines: list[str] = []
    by_path: dict[KeyPath, list[str]] = {}
    values: dict[KeyPath, Any] = {}
    kinds: dict[KeyPath, str] = {}
    for item in error.errors(include_url=False):
        kind = str(item["type"])
        if kind == CONFLICT_ERROR_TYPE:
            conflicts: Sequence[Conflict] = item["ctx"]["problems"]
            for conflict in conflicts:
                if conflict.loc in hush:
                    continue
                where = origin.where(conflict.loc, *conflict.involved)
                lines.append(problem(where, toml_key(conflict.loc), conflict.message))
            continue
        path, value = _real_path(item["loc"], data, kind)
        if path in hush:
            continue
        text = expected(item, path)
        wanted = by_path.setdefault(path, [])
        if text not in wanted:
            wanted.append(text)
        values.setdefault(path, value)
        kinds.setdefault(path, kind)
    for path, wanted in by_path.items():
        value = values[path]
        key = toml_key(path, is_table=isinstance(value, dict))
        detail = " or ".join(wanted)
        if kinds[path] != "missing":
            detail = f"got {given(value, path)}; {detail}"
        lines.append(problem(origin.where(path), key, detail))
    return lines
