"""Write a plain dict (such as ``redacted(config)``) back out as readable TOML.

``brio config show`` prints this, and an operator may paste it into a file: the output is
valid TOML that loads to the same configuration (unset keys appear as comments, since TOML
has no null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from brio.config.keys import quote_key, toml_string


def to_toml(data: Mapping[str, Any]) -> str:
    """Top-level keys first, then each table, then each ``[[array of tables]]`` entry."""
    lines: list[str] = []
    _table(lines, (), data, is_array_entry=False)
    return "\n".join(lines).strip("\n") + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(
    lines: list[str], path: tuple[str, ...], table: Mapping[str, Any], *, is_array_entry: bool
) -> None:
    if path:
        name = ".".join(quote_key(part) for part in path)
        lines.extend(["", f"[[{name}]]" if is_array_entry else f"[{name}]"])
    for key, value in table.items():
        if isinstance(value, dict) or _is_table_array(value):
            continue
        if value is None:
            lines.append(f"# {quote_key(key)} is not set")
        else:
            lines.append(f"{quote_key(key)} = {toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _table(lines, (*path, key), value, is_array_entry=False)
    for key, value in table.items():
        if _is_table_array(value):
            for entry in value:
                _table(lines, (*path, key), entry, is_array_entry=True)


def toml_value(value: Any) -> str:
    """One TOML value: string, bool, number, list, or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        items = (f"{quote_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }" if value else "{}"
    return toml_string(str(value))
