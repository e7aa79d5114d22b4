"""Write a plain dict (such as ``redacted(config)``) back out as readable TOML, with tomli-w.

``brio config show`` prints this, and an operator may paste it into a file: the output is
valid TOML that loads to the same configuration. TOML has no null, so a key whose value is
``None`` (unset) is left out of the tables and named in a comment at the top instead; tomli-w
writes no comments, so that comment is the one piece written here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tomli_w

from brio.config.keys import KeyPath, quote_key, toml_key


def to_toml(data: Mapping[str, Any]) -> str:
    """Top-level keys first, then each table (as tomli-w orders them), unset keys named first."""
    unset: dict[KeyPath, list[str]] = {}
    body = tomli_w.dumps(_without_none(data, (), unset))
    lines: list[str] = []
    if unset:
        lines.append("# not set (TOML has no null):")
        for path, keys in unset.items():
            names = ", ".join(quote_key(key) for key in keys)
            lines.append(f"#   {toml_key(path, is_table=True)} {names}")
    if unset and body:
        lines.append("")
    return ("\n".join(lines) + "\n" + body).strip("\n") + "\n"


def _without_none(value: Any, path: KeyPath, unset: dict[KeyPath, list[str]]) -> Any:
    """``value`` with the ``None`` keys of each table (recorded in ``unset``) and ``None`` list
    items left out, and with characters UTF-8 cannot encode (lone surrogates, which an
    environment variable may hold) as U+FFFD, so that the text can be printed and written."""
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for raw_key, item in value.items():
            key = _encodable(raw_key)
            if item is None:
                unset.setdefault(path, []).append(key)
            else:
                kept[key] = _without_none(item, (*path, key), unset)
        return kept
    if isinstance(value, list):
        return [_without_none(v, (*path, i), unset) for i, v in enumerate(value) if v is not None]
    if isinstance(value, str):
        return _encodable(value)
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)
