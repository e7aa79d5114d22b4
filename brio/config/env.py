"""The environment's two roles: ``${VAR}`` inside TOML strings, and ``BRIO_*`` overrides.

Overrides win over the file. The guide's names (``BRIO_NODE_ID``, ``BRIO_MESH_PEERS``...) are
kept as documented; any other key is reachable as ``BRIO_<SECTION>__<KEY>[__<SUBKEY>...]``
(double underscore between levels, lower-cased). Values stay strings and pydantic's lax mode
turns ``"true"`` and ``"9000"`` into a bool and an int; list and table keys take JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, get_args, get_origin

from brio.config.errors import problem, shorten
from brio.config.keys import KeyPath, annotation_at, is_model, toml_key
from brio.config.model import split_host_port

#: The variables named in the deployment guide, and the key each one sets.
NAMED_VARIABLES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "BRIO_DATA_DIR": ("data_dir",),
        "BRIO_NODE_ID": ("mesh", "node_id"),
        "BRIO_MESH_ENABLED": ("mesh", "enabled"),
        "BRIO_MESH_LISTEN": ("mesh", "listen_addr"),
        "BRIO_MESH_PEERS": ("mesh", "peers"),
        "BRIO_MESH_ROLE": ("mesh", "role"),
        "BRIO_MESH_LEASE_VOTERS": ("mesh", "lease", "voters"),
        "BRIO_MESH_LEASE_WITNESS": ("mesh", "lease", "witness"),
        "BRIO_MESH_DISCOVERY": ("mesh", "discovery", "method"),
        "BRIO_MESH_K8S_NAMESPACE": ("mesh", "discovery", "k8s_namespace"),
        "BRIO_MESH_K8S_LABEL_SELECTOR": ("mesh", "discovery", "k8s_label_selector"),
        "BRIO_DATABASE_URL": ("database", "url"),
        "BRIO_API_TOKEN": ("server", "auth_token"),
        "BRIO_MESH_CLUSTER_SECRET": ("mesh", "cluster_secret"),
    }
)

PREFIX = "BRIO_"
SEPARATOR = "__"

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Override:
    """One environment variable that sets one key."""

    var: str
    path: tuple[str, ...]
    value: Any


# --- ${VAR} in TOML strings --------------------------------------------------------------


def expand_references(
    data: Any, env: Mapping[str, str], where: str, path: KeyPath = ()
) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """Replace ``${VAR}`` in every string value; ``$${`` stands for a literal ``${``.

    A missing variable is a problem rather than an empty string: an empty password or host
    fails later in a much less clear way. Problems come with their key, so that the caller
    can hush later complaints about the same (unexpanded) value.
    """
    if isinstance(data, str):
        text, lines = _expand_string(data, env, where, path)
        return text, [(path, line) for line in lines]
    problems: list[tuple[KeyPath, str]] = []
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out[key], found = expand_references(value, env, where, (*path, key))
            problems.extend(found)
        return out, problems
    if isinstance(data, list):
        items: list[Any] = []
        for index, value in enumerate(data):
            item, found = expand_references(value, env, where, (*path, index))
            items.append(item)
            problems.extend(found)
        return items, problems
    return data, problems


def _expand_string(
    text: str, env: Mapping[str, str], where: str, path: KeyPath
) -> tuple[str, list[str]]:
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            detail = "'${' without a closing '}'; write '$${' for a literal '${'"
        elif not _NAME.match(name):
            detail = f"{shorten(repr('${' + name + '}'))} is not a valid variable reference"
        elif name not in env:
            detail = f"environment variable {name} is not set (used as ${{{name}}})"
        else:
            return env[name]
        problems.append(problem(where, toml_key(path), detail))
        return token

    return _REFERENCE.sub(replace, text), problems


# --- BRIO_* overrides --------------------------------------------------------------------


def collect_overrides(env: Mapping[str, str]) -> tuple[list[Override], list[str]]:
    """Read every ``BRIO_*`` override, in the order they are applied (named ones last).

    Variables that are neither named in the guide nor of the ``SECTION__KEY`` form are not
    ours (``BRIO_CONFIG`` is the file's path) and are ignored.
    """
    generic: list[Override] = []
    named: list[Override] = []
    problems: list[str] = []
    for var in sorted(env):
        raw = env[var]
        if var in NAMED_VARIABLES:
            path = NAMED_VARIABLES[var]
            if var == "BRIO_MESH_PEERS":
                peers, found = parse_peers(var, raw)
                problems.extend(found)
                if not found:
                    named.append(Override(var, path, peers))
            elif var == "BRIO_MESH_LEASE_VOTERS":  # node ids, comma-separated
                named.append(Override(var, path, [v.strip() for v in raw.split(",") if v.strip()]))
            else:
                named.append(Override(var, path, raw))
        elif var.startswith(PREFIX) and SEPARATOR in var:
            override, detail = _generic(var, raw)
            if override is not None:
                generic.append(override)
            else:
                problems.append(problem(var, None, detail))
    generic.sort(key=lambda o: len(o.path))
    problems.extend(_clashes(generic + named))
    return generic + named, problems


def parse_peers(var: str, raw: str) -> tuple[list[dict[str, str]], list[str]]:
    """``host:port,host:port`` -> ``[{"address": ...}]``; each peer's id is learned later."""
    peers: list[dict[str, str]] = []
    problems: list[str] = []
    entries = [entry.strip() for entry in raw.split(",")]
    for position, entry in enumerate(entries, start=1):
        if not entry:
            continue  # tolerate "a:1,b:2," and spaces
        try:
            split_host_port(entry)
        except ValueError as err:
            detail = f"peer {position} {shorten(repr(entry))} is not host:port: {err}"
            if any(sep in entry for sep in " ;"):
                detail += " (separate peers with commas: 'node-2:50051,node-3:50051')"
            problems.append(problem(var, None, detail))
        else:
            peers.append({"address": entry})
    return peers, problems


def _generic(var: str, raw: str) -> tuple[Override | None, str]:
    parts = var[len(PREFIX) :].split(SEPARATOR)
    if any(not part for part in parts):
        return None, "empty key between '__' separators (expected BRIO_SECTION__KEY)"
    path = tuple(part.lower() for part in parts)
    for length in range(1, len(path)):
        parent = annotation_at(path[:length])
        if get_origin(parent) in (list, tuple):
            return None, (
                f"{toml_key(path[:length])} is a list and cannot be set item by item; "
                f"set all of it as JSON in {PREFIX}{SEPARATOR.join(parts[:length])}"
            )
    value, detail = _parse_value(raw, annotation_at(path))
    if detail:
        return None, f"{toml_key(path)}: got {shorten(repr(raw))}; {detail}"
    return Override(var, path, value), ""


def _parse_value(raw: str, annotation: Any) -> tuple[Any, str]:
    """Lists and tables come as JSON (a list of plain strings or numbers may also be
    comma-separated); a fixed-length tuple (``[min, max]``) is a list in TOML, so here too."""
    origin = get_origin(annotation)
    is_list = origin in (list, tuple)
    is_table = origin is dict or is_model(annotation)
    if not (is_list or is_table):
        return raw, ""
    text = raw.strip()
    if is_list and not text.startswith("["):
        if is_model(get_args(annotation)[0]):
            return None, 'expected a JSON list of tables, e.g. [{"address": "10.0.1.2:50051"}]'
        return [item.strip() for item in text.split(",") if item.strip()], ""
    if is_table and not text.startswith("{"):
        return None, 'expected a JSON object, e.g. {"key": "value"}'
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} at column {err.colno}"


def _clashes(overrides: list[Override]) -> list[str]:
    """Two variables for one key (``BRIO_MESH_ENABLED`` and ``BRIO_MESH__ENABLED``) must agree."""
    seen: dict[tuple[str, ...], Override] = {}
    problems: list[str] = []
    for override in overrides:
        first = seen.setdefault(override.path, override)
        if first is not override and first.value != override.value:
            problems.append(
                problem(
                    f"{first.var}, {override.var}",
                    toml_key(override.path),
                    "both variables set this key, to different values; remove one",
                )
            )
    return problems


def apply_overrides(
    data: dict[str, Any], overrides: list[Override]
) -> tuple[dict[KeyPath, str], dict[KeyPath, str], list[str]]:
    """Write each override into ``data`` (in place).

    Returns which variable set which key, which tables had to be created for them (so that a
    later error names the variable, not the file), and any problems.
    """
    keys: dict[KeyPath, str] = {}
    tables: dict[KeyPath, str] = {}
    problems: list[str] = []
    for override in overrides:
        table = data
        blocked = False
        for depth in range(1, len(override.path)):
            part = override.path[depth - 1]
            inner = table.get(part)
            if inner is None:
                inner = table[part] = {}
                tables.setdefault(override.path[:depth], override.var)
            elif not isinstance(inner, dict):
                problems.append(
                    problem(
                        override.var,
                        toml_key(override.path),
                        f"cannot be set: {toml_key(override.path[:depth])} is not a table",
                    )
                )
                blocked = True
                break
            table = inner
        if not blocked:
            table[override.path[-1]] = override.value
            keys[override.path] = override.var
    return keys, tables, problems
