"""Sessions and their conversation history, against both backends."""

from __future__ import annotations

import pytest

from brio.store import NotFound, Store


async def test_create_and_get_session(store: Store) -> None:
    plain = await store.create_session()
    assert (plain.title, plain.metadata) == (None, {})
    named = await store.create_session("chat", {"user": "ada", "tags": ["x"]})
    assert (named.title, named.metadata) == ("chat", {"user": "ada", "tags": ["x"]})
    assert named.created_at.utcoffset() is not None
    assert await store.get_session(named.id) == named
    assert await store.get_session("missing") is None


async def test_list_sessions_newest_first_with_limit_and_offset(store: Store) -> None:
    made = [await store.create_session(f"s{i}") for i in range(5)]
    newest_first = [s.id for s in reversed(made)]
    assert [s.id for s in await store.list_sessions()] == newest_first
    assert [s.id for s in await store.list_sessions(limit=2)] == newest_first[:2]
    assert [s.id for s in await store.list_sessions(limit=2, offset=2)] == newest_first[2:4]
    assert await store.list_sessions(offset=5) == []
    with pytest.raises(ValueError):
        await store.list_sessions(limit=0)


async def test_append_and_list_messages(store: Store) -> None:
    session = await store.create_session()
    other = await store.create_session()
    first = await store.append_messages(session.id, [("user", "one"), ("assistant", "two")])
    await store.append_messages(other.id, [("user", "elsewhere")])
    second = await store.append_messages(session.id, [("user", "three")], task_id=None)
    assert [m.content for m in first + second] == ["one", "two", "three"]
    assert first[0].id < first[1].id < second[0].id
    assert all(m.session_id == session.id and m.task_id is None for m in first + second)
    assert first[0].created_at.utcoffset() is not None

    listed = await store.list_messages(session.id)
    assert listed == first + second
    assert [m.content for m in await store.list_messages(session.id, limit=2)] == ["two", "three"]
    assert [m.content for m in await store.list_messages(session.id, limit=10)] == [
        "one",
        "two",
        "three",
    ]
    assert await store.list_messages("missing") == []

    touched = await store.get_session(session.id)
    assert touched is not None and touched.updated_at >= session.updated_at


async def test_append_to_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.append_messages("missing", [("user", "hi")])


async def test_message_roles_are_checked(store: Store) -> None:
    session = await store.create_session()
    with pytest.raises(ValueError, match="role"):
        await store.append_messages(session.id, [("user", "ok"), ("robot", "beep")])
    assert await store.list_messages(session.id) == []
