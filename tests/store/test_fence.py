"""The fence and the primary's fenced writes (the cluster view), against both backends.

A write under an epoch lands only while the fence still holds that epoch; once a newer
primary raised the fence, the old one's writes are refused whole. The race test runs a write
and a raise at the same moment, from two stores (two primaries on two nodes), many times.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from brio.core.tasks import TaskStatus
from brio.store import NewTask, Store, StoreError, open_store, schema
from brio.store.base import FenceRecord, NodeStateRecord

VIEW = [("w1", "healthy"), ("c2", "suspected"), ("c1", "healthy")]


def states(view: list[NodeStateRecord]) -> list[tuple[str, str, int, str]]:
    return [(row.node_id, row.state, row.epoch, row.holder) for row in view]


async def test_the_fence_starts_at_zero_held_by_nobody(store: Store) -> None:
    fence = await store.fence()
    assert (fence.epoch, fence.holder) == (0, None)
    assert fence.updated_at.utcoffset() == timedelta(0)
    assert await store.cluster_view() == []


async def test_raise_fence_only_raises(store: Store) -> None:
    assert await store.raise_fence(3, "c1")
    first = await store.fence()
    assert (first.epoch, first.holder) == (3, "c1")
    assert not await store.raise_fence(3, "c2")
    assert not await store.raise_fence(2, "c2")
    assert await store.fence() == first  # a refused raise changes nothing, not even the time
    assert await store.raise_fence(7, "c2")
    later = await store.fence()
    assert (later.epoch, later.holder) == (7, "c2")
    assert later.updated_at >= first.updated_at
    assert await store.fence_epoch() == 7


async def test_record_under_the_current_epoch(store: Store) -> None:
    assert await store.raise_fence(1, "c1")
    assert await store.record_cluster_view(1, "c1", VIEW)
    view = await store.cluster_view()
    assert states(view) == [
        ("c1", "healthy", 1, "c1"),
        ("c2", "suspected", 1, "c1"),
        ("w1", "healthy", 1, "c1"),
    ]
    fence = await store.fence()
    assert all(row.updated_at >= fence.updated_at for row in view)
    assert all(row.updated_at.utcoffset() == timedelta(0) for row in view)

    # Upsert: the rows named change, the others stay as they were.
    assert await store.record_cluster_view(1, "c1", [("w1", "failed"), ("w2", "healthy")])
    after = {row.node_id: row for row in await store.cluster_view()}
    assert sorted(after) == ["c1", "c2", "w1", "w2"]
    assert after["w1"].state == "failed"
    assert after["w1"].updated_at >= view[2].updated_at
    assert after["c2"] == view[1]


async def test_refused_once_the_fence_moved_on(store: Store) -> None:
    assert await store.raise_fence(1, "c1")
    assert await store.record_cluster_view(1, "c1", VIEW)
    before = await store.cluster_view()
    assert await store.raise_fence(2, "c2")

    # The deposed primary writes a row that exists and one that does not: neither lands.
    assert not await store.record_cluster_view(1, "c1", [("w1", "failed"), ("w9", "healthy")])
    assert await store.cluster_view() == before

    # The new primary writes under its own epoch.
    assert await store.record_cluster_view(2, "c2", [("w1", "failed")])
    view = {row.node_id: row for row in await store.cluster_view()}
    assert (view["w1"].state, view["w1"].epoch, view["w1"].holder) == ("failed", 2, "c2")
    assert view["c2"] == before[1]


async def test_refused_under_an_epoch_the_fence_never_reached(store: Store) -> None:
    assert not await store.record_cluster_view(1, "c1", VIEW)  # nobody raised the fence
    assert await store.raise_fence(2, "c1")
    assert not await store.record_cluster_view(3, "c1", VIEW)
    assert await store.cluster_view() == []
    assert (await store.fence()).epoch == 2


async def test_an_empty_view_asks_whether_the_fence_holds(store: Store) -> None:
    assert await store.raise_fence(4, "c1")
    assert await store.record_cluster_view(4, "c1", [])
    assert not await store.record_cluster_view(3, "c1", [])
    assert await store.cluster_view() == []


@pytest.mark.parametrize(
    ("epoch", "view", "message"),
    [
        (0, VIEW, "at least 1"),
        (-1, VIEW, "at least 1"),
        (1, [("w1", "healthy"), ("w1", "failed")], "'w1' is listed twice"),
        (1, [("", "healthy")], "must not be empty"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_written(
    store: Store, epoch: int, view: list[tuple[str, str]], message: str
) -> None:
    assert await store.raise_fence(1, "c1")
    with pytest.raises(ValueError, match=message):
        await store.record_cluster_view(epoch, "c1", view)
    assert await store.cluster_view() == []


async def test_a_raise_and_a_write_at_once_serialise(store_url: str, aio_loop: None) -> None:
    """The old primary writes while the new one raises the fence, 60 times over.

    Whoever takes the fence first goes first: the write lands before the raise (its rows are
    older than the fence's new time) or it sees the raise and writes nothing. A write that
    checked the fence, then let a raise through, then wrote, would leave rows under the old
    epoch that are newer than the raise.
    """
    rows = [(f"node-{i:02d}", "healthy") for i in range(40)]  # a long write: a wide window
    old, new = await open_store(store_url), await open_store(store_url)
    outcomes: list[bool] = []
    try:
        for round_ in range(60):
            epoch = 2 * round_ + 1
            assert await old.raise_fence(epoch, "old")
            wrote: list[bool] = []
            raised: list[bool] = []

            async def write(epoch: int = epoch, wrote: list[bool] = wrote) -> None:
                wrote.append(await old.record_cluster_view(epoch, "old", rows))

            async def take_over(epoch: int = epoch, raised: list[bool] = raised) -> None:
                raised.append(await new.raise_fence(epoch + 1, "new"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                nursery.start_soon(take_over)
            assert raised == [True]
            outcomes.append(wrote[0])

            fence: FenceRecord = await new.fence()
            assert (fence.epoch, fence.holder) == (epoch + 1, "new")
            view = await new.cluster_view()
            under_epoch = [row for row in view if row.epoch == epoch]
            if wrote[0]:
                assert len(under_epoch) == len(rows)  # the whole write, nothing less
                late = [row for row in under_epoch if row.updated_at > fence.updated_at]
                assert not late, f"round {round_}: written after the fence was raised: {late}"
            else:
                assert under_epoch == []  # refused whole
    finally:
        await old.close()
        await new.close()
    assert outcomes  # and, on a loaded machine, both orders usually occur


async def test_version_1_database_migrates_to_2(
    store_url: str, aio_loop: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database made by a brio that knew migration 1 only.
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(schema, "LATEST_VERSION", 1)
    store = await open_store(store_url)
    try:
        assert await store.schema_version() == 1
        task, _ = await store.create_task(NewTask("echo", "kept"))
        assert await store.raise_fence(5, "c1")
        with pytest.raises(StoreError):
            await store.cluster_view()  # no such table yet
    finally:
        await store.close()
    monkeypatch.undo()

    store = await open_store(store_url)
    try:
        assert schema.LATEST_VERSION >= 2  # 2 brought the fence; later ones come along
        assert await store.schema_version() == schema.LATEST_VERSION
        assert await store.get_task(task.id) == task
        assert await store.count_tasks(TaskStatus.QUEUED) == 1
        assert ((await store.fence()).epoch, (await store.fence()).holder) == (5, "c1")
        assert await store.cluster_view() == []
        assert await store.record_cluster_view(5, "c1", [("w1", "healthy")])
        assert states(await store.cluster_view()) == [("w1", "healthy", 5, "c1")]
    finally:
        await store.close()
