"""The server's type check of parsed requests (``transport._mistyped``), field by field.

betterproto2 does not check wire types when it parses: a string field sent as a varint comes
back as an int. ``_mistyped`` refuses such a message; these tests put a value of the wrong type
in every field of every message of every mesh method (requests and replies, nested messages,
list items, map keys and values) and check that it names that field, and that well-typed
messages pass.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from typing import Any

import betterproto2
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from brio.mesh import methods, pb
from brio.mesh.transport import _mistyped, _parse

MESSAGES = sorted(
    {t for m in [*methods.MESH.values(), *methods.ADMIN.values()] for t in (m.request, m.reply)},
    key=lambda t: t.__name__,
)


def _fields(cls: type[betterproto2.Message]) -> dict[str, Any]:
    return {k: v for k, v in cls._type_hints().items() if not k.startswith("_")}


def _message_type(hint: Any) -> type[betterproto2.Message] | None:
    if isinstance(hint, type) and issubclass(hint, betterproto2.Message):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and issubclass(arg, betterproto2.Message):
            return arg
    return None


def valid(hint: Any, depth: int = 0) -> Any:
    """A value of type ``hint`` that is not the default (so that nested checks run)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return [valid(args[0], depth), valid(args[0], depth)]
    if origin is dict:
        return {valid(args[0], depth): valid(args[1], depth)}
    if origin in (typing.Union, types.UnionType):
        return valid(next(a for a in args if a is not type(None)), depth)
    if hint is bool:
        return True
    if hint is int:
        return 7
    if hint is float:
        return 1.5
    if hint is str:
        return "s"
    if hint is bytes:
        return b"b"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    assert isinstance(hint, type) and issubclass(hint, betterproto2.Message), hint
    return populated(hint, depth + 1)


def populated(cls: type[betterproto2.Message], depth: int = 0) -> betterproto2.Message:
    message = cls()
    if depth > 3:
        return message
    for name, hint in _fields(cls).items():
        setattr(message, name, valid(hint, depth))
    return message


def wrong(hint: Any) -> Iterator[Any]:
    """Values that a field of type ``hint`` must not hold (what a bad wire type parses to)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        yield 5
        yield ("a tuple",)
        for bad in wrong(args[0]):
            yield [valid(args[0]), bad]
        return
    if origin is dict:
        yield [("k", "v")]
        for bad in wrong(args[0]):
            if isinstance(bad, typing.Hashable):
                yield {bad: valid(args[1])}
        for bad in wrong(args[1]):
            yield {valid(args[0]): bad}
        return
    if origin in (typing.Union, types.UnionType):
        yield from wrong(next(a for a in args if a is not type(None)))
        return
    if hint is int:
        yield from ("7", 1.5, True, b"x")
    elif hint is bool:
        yield from (1, "true")
    elif hint is float:
        yield from ("1.5", True)
    elif hint in (str, bytes):
        yield from (3, b"x" if hint is str else "x")
    else:
        yield 5
        yield "s"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_well_typed_messages_pass(cls: type[betterproto2.Message]) -> None:
    assert _mistyped(cls()) is None
    message = populated(cls)
    assert _mistyped(message) is None
    assert _mistyped(cls.parse(bytes(message))) is None


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_every_field_with_a_wrong_type_is_named(cls: type[betterproto2.Message]) -> None:
    checked = 0
    for name, hint in _fields(cls).items():
        for bad in wrong(hint):
            message = populated(cls)
            setattr(message, name, bad)
            assert _mistyped(message) == f"field {name}: wrong wire type", (name, bad)
            checked += 1
    assert checked or not _fields(cls)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
def test_a_wrong_type_inside_a_nested_message_is_named_with_its_path(
    cls: type[betterproto2.Message],
) -> None:
    for name, hint in _fields(cls).items():
        inner_cls = _message_type(hint)
        if inner_cls is None:
            continue
        for inner_name, inner_hint in _fields(inner_cls).items():
            for bad in wrong(inner_hint):
                message = populated(cls)
                inner = populated(inner_cls)
                setattr(inner, inner_name, bad)
                is_list = typing.get_origin(hint) is list
                # in a list, the bad item is the last: the ones before it pass
                setattr(message, name, [populated(inner_cls), inner] if is_list else inner)
                expected = f"field {name}.{inner_name}: wrong wire type"
                assert _mistyped(message) == expected, (name, inner_name, bad)


def test_a_varint_where_a_string_belongs_is_invalid_argument() -> None:
    # field 1 (target, a string) sent as a varint: betterproto2 parses it into an int
    with pytest.raises(GRPCError) as refused:
        _parse(b"\x08\x01\x12\x0cagent.invoke", pb.MeshRequest)
    assert refused.value.status is Status.INVALID_ARGUMENT
    assert refused.value.message == (
        "the request is not a valid MeshRequest: field target: wrong wire type"
    )


def test_a_heartbeat_with_a_varint_role_names_the_nested_field() -> None:
    with pytest.raises(GRPCError) as refused:
        _parse(b"\x0a\x05\x0a\x01x\x10\x01", pb.HeartbeatRequest)
    assert refused.value.status is Status.INVALID_ARGUMENT
    assert refused.value.message is not None
    assert refused.value.message.endswith("field sender.role: wrong wire type")
