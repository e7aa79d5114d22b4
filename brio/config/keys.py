"""Key paths: how to name a key the way it is written in TOML, and what type it has.

A path is a tuple such as ``("mesh", "failure_detection", "heartbeat_interval")`` or
``("mesh", "peers", 1, "address")`` (list positions are ints). Messages show it as the operator
wrote it: ``[mesh.failure_detection] heartbeat_interval``, ``[[mesh.peers]] #2 address``.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from brio.config.model import BrioConfig

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

_ESCAPES: Mapping[str, str] = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def quote_key(key: str) -> str:
    """A TOML key: bare when it can be, else a quoted string (so never more than one line)."""
    if _BARE_KEY.match(key):
        return key
    return toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string; characters TOML cannot hold (lone surrogates) become U+FFFD."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def dotted(path: Sequence[str | int]) -> str:
    """``mesh.failure_detection.heartbeat_interval``; list positions as ``peers[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + quote_key(part)
    return text


def _table_header(path: Sequence[str | int]) -> str:
    """``[mesh.tls]``, or ``[[mesh.peers]] #2`` when the table is an entry of a list."""
    last_index = max((i for i, part in enumerate(path) if isinstance(part, int)), default=-1)
    if last_index < 0:
        return "[" + dotted(path) + "]"
    position = path[last_index]
    assert isinstance(position, int)
    header = "[[" + dotted(path[:last_index]) + f"]] #{position + 1}"
    rest = path[last_index + 1 :]
    return header + (" " + dotted(rest) if rest else "")


def toml_key(path: Sequence[str | int], *, is_table: bool = False) -> str:
    """Name a key as the operator wrote it, e.g. ``[mesh.failure_detection] heartbeat_interval``.

    ``is_table`` names a whole section (``[mesh.tlss]``) rather than a key inside its parent.
    """
    if not path:
        return "(top level)"
    if is_table:
        return _table_header(path)
    *parents, last = path
    if isinstance(last, int):
        if is_model(annotation_at(path)):
            return _table_header(path)
        return f"{toml_key(parents)} (item {last + 1})"
    if not parents:
        return quote_key(last)
    return f"{_table_header(parents)} {quote_key(last)}"


def unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the type that a value must have."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def annotation_at(path: Sequence[str | int]) -> Any:
    """The type of the value at ``path`` in ``BrioConfig``, or ``None`` for an unknown key.

    Dict keys (agent and provider names) and list positions match anything.
    """
    annotation: Any = BrioConfig
    for part in path:
        annotation = unwrap(annotation)
        origin = get_origin(annotation)
        if is_model(annotation):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin is list:
            annotation = get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return unwrap(annotation)


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` type, else ``()``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return ()


def known_keys(path: Sequence[str | int]) -> list[str]:
    """The keys allowed in the table at ``path`` (empty when it is not a fixed section)."""
    annotation = annotation_at(path)
    if is_model(annotation):
        return list(annotation.model_fields)
    return []


def model_paths(
    model: type[BaseModel] = BrioConfig, prefix: tuple[str, ...] = (), name: str = "x"
) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf key of the model with its type; ``name`` stands for agent/provider names.

    Tests use it to reach every key of the configuration.
    """
    found: list[tuple[tuple[str, ...], Any]] = []
    for field_name, field in model.model_fields.items():
        path = (*prefix, field_name)
        annotation = unwrap(field.annotation)
        if is_model(annotation):
            found.extend(model_paths(annotation, path, name))
        elif get_origin(annotation) is dict and is_model(unwrap(get_args(annotation)[1])):
            found.extend(model_paths(unwrap(get_args(annotation)[1]), (*path, name), name))
        else:
            found.append((path, annotation))
    return found
