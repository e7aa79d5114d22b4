"""Nodes, agents, the fence and configuration, against both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from brio.store import NodeRecord, Store


def node(node_id: str, status: str = "healthy", seen: datetime | None = None) -> NodeRecord:
    return NodeRecord(
        id=node_id,
        role="worker",
        address=f"{node_id}:50051",
        version="0.1.0",
        status=status,
        last_seen=seen or datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )


async def test_upsert_node_inserts_then_updates(store: Store) -> None:
    await store.upsert_node(node("b"))
    await store.upsert_node(node("a"))
    later = datetime(2025, 1, 2, 5, 4, 5, 1, tzinfo=timezone(timedelta(hours=2)))
    await store.upsert_node(node("b", status="draining", seen=later))
    nodes = await store.list_nodes()
    assert [n.id for n in nodes] == ["a", "b"]
    assert nodes[0] == node("a")
    assert nodes[1].status == "draining"
    assert nodes[1].last_seen == later
    assert nodes[1].last_seen.utcoffset() == timedelta(0)


async def test_naive_timestamps_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone"):
        await store.upsert_node(node("a", seen=datetime(2025, 1, 1)))


async def test_upsert_agents_replaces_the_nodes_agents(store: Store) -> None:
    await store.upsert_agents("n1", [("echo", "echo", "says it back"), ("llm", "llm", "")])
    await store.upsert_agents("n2", [("echo", "echo", "also here")])
    await store.upsert_agents("n1", [("sleep", "sleep", "naps")])
    agents = await store.list_agents()
    assert [(a.name, a.node_id, a.kind, a.description) for a in agents] == [
        ("echo", "n2", "echo", "also here"),
        ("sleep", "n1", "sleep", "naps"),
    ]
    assert agents[0].updated_at.utcoffset() == timedelta(0)
    await store.upsert_agents("n1", [])
    assert [a.node_id for a in await store.list_agents()] == ["n2"]


async def test_fence_only_rises(store: Store) -> None:
    assert await store.fence_epoch() == 0
    assert await store.raise_fence(3, "c1")
    assert not await store.raise_fence(3, "c2")
    assert not await store.raise_fence(2, "c2")
    assert await store.fence_epoch() == 3
    assert await store.raise_fence(7, "c2")
    assert await store.fence_epoch() == 7


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None]}, ["x"], "text", 12, True])
async def test_config_round_trips_json(store: Store, value: object) -> None:
    await store.put_config("key", value)
    assert await store.get_config("key") == value


async def test_config_overwrites_and_misses(store: Store) -> None:
    assert await store.get_config("missing") is None
    await store.put_config("k", {"v": 1})
    await store.put_config("k", {"v": 2})
    assert await store.get_config("k") == {"v": 2}
