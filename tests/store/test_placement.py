"""The scheduler's statements, against both backends: what waits, the load, fenced
assignments and requeues, and a worker taking its assignments straight into running."""

from __future__ import annotations

from brio.core.tasks import TaskStatus
from brio.store import NewTask, Store
from brio.store.base import Assignment, TaskRecord


async def queued(store: Store, agent: str = "echo", **fields: object) -> TaskRecord:
    task, _ = await store.create_task(NewTask(agent=agent, prompt="p", **fields))  # type: ignore[arg-type]
    return task


async def primary(store: Store, epoch: int = 1) -> int:
    assert await store.raise_fence(epoch, "c1")
    return epoch


async def test_queued_tasks_come_by_priority_then_age_with_their_pin(store: Store) -> None:
    low = await queued(store)
    high = await queued(store, priority=5, node_id="w2")
    later = await queued(store)
    rows = await store.queued_tasks(10)
    assert [r.id for r in rows] == [high.id, low.id, later.id]
    assert rows[0].target_node == "w2" and rows[1].target_node is None
    assert (rows[0].agent, rows[0].attempt, rows[0].priority) == ("echo", 1, 5)
    assert [r.id for r in await store.queued_tasks(1)] == [high.id]


async def test_the_next_page_of_the_queue_follows_the_key_of_the_last(store: Store) -> None:
    """Pages by (priority, seq): equal priorities by age, then the lower priorities; a task
    queued meanwhile before the key neither repeats one nor shifts the page; only unpinned
    tasks of the agents given, and tasks pinned to the nodes given."""
    low1, high1, low2, high2 = (
        await queued(store),
        await queued(store, priority=5),
        await queued(store),
        await queued(store, priority=5),
    )
    other = await queued(store, agent="other")
    pinned = await queued(store, agent="other", node_id="w1")
    elsewhere = await queued(store, node_id="w2")
    first = await store.queued_tasks(1)
    assert [r.id for r in first] == [high1.id]
    await queued(store, priority=9)  # ahead of the key: the next page does not see it
    key = (first[0].priority, first[0].seq)

    async def after(key: tuple[int, int], limit: int = 10) -> list[str]:
        return [r.id for r in await store.queued_tasks_after(key, limit, ["echo"], ["w1"])]

    assert await after(key, 2) == [high2.id, low1.id]
    assert await after((0, low1.seq)) == [low2.id, pinned.id]
    assert await after((0, pinned.seq)) == []
    both = await store.queued_tasks_after((0, low2.seq), 10, ["echo", "other"], ["w1", "w2"])
    assert [r.id for r in both] == [other.id, pinned.id, elsewhere.id]
    assert await store.queued_tasks_after(key, 10, [], []) == []


async def test_assign_moves_a_batch_in_one_write_under_the_fence(store: Store) -> None:
    epoch = await primary(store)
    a, b = await queued(store), await queued(store)
    moved = await store.assign_tasks(epoch, [Assignment(a.id, 1, "w1"), Assignment(b.id, 1, "w2")])
    assert {(t.id, t.status, t.node_id) for t in moved} == {
        (a.id, TaskStatus.ASSIGNED, "w1"),
        (b.id, TaskStatus.ASSIGNED, "w2"),
    }
    assert await store.queued_tasks(10) == []
    assert await store.node_tasks() == {"w1": [a.id], "w2": [b.id]}


async def test_assign_lands_nothing_once_the_fence_moved(store: Store) -> None:
    epoch = await primary(store)
    task = await queued(store)
    assert await store.raise_fence(epoch + 1, "c2")
    assert await store.assign_tasks(epoch, [Assignment(task.id, 1, "w1")]) == []
    again = await store.get_task(task.id)
    assert again is not None and again.status is TaskStatus.QUEUED


async def test_assign_skips_a_stale_attempt_or_a_task_no_longer_queued(store: Store) -> None:
    epoch = await primary(store)
    stale, cancelled, fine = await queued(store), await queued(store), await queued(store)
    assert await store.cancel_task(cancelled.id) is not None
    moved = await store.assign_tasks(
        epoch,
        [
            Assignment(stale.id, 2, "w1"),  # the store holds attempt 1
            Assignment(cancelled.id, 1, "w1"),
            Assignment(fine.id, 1, "w1"),
        ],
    )
    assert [t.id for t in moved] == [fine.id]


async def test_a_worker_claims_only_its_own_assignments_straight_into_running(
    store: Store,
) -> None:
    epoch = await primary(store)
    mine = [await queued(store) for _ in range(3)]
    theirs = await queued(store)
    other_agent = await queued(store, agent="sleep")
    batch = [Assignment(t.id, 1, "w1") for t in mine]
    batch += [Assignment(theirs.id, 1, "w2"), Assignment(other_agent.id, 1, "w1")]
    await store.assign_tasks(epoch, batch)
    first = await store.claim_assigned("w1", ["echo"], 2)
    assert [t.id for t in first] == [t.id for t in mine[:2]]
    assert all(t.status is TaskStatus.RUNNING and t.started_at is not None for t in first)
    rest = await store.claim_assigned("w1", ["echo"], 10)
    assert [t.id for t in rest] == [mine[2].id]
    assert await store.claim_assigned("w1", ["echo"], 10) == []
    assert await store.claim_assigned("w1", [], 10) == []
    assert await store.claim_assigned("w1", ["echo", "sleep"], 0) == []


async def test_requeue_of_a_failed_node_bumps_the_attempt_and_refuses_its_late_result(
    store: Store,
) -> None:
    epoch = await primary(store)
    run, wait, elsewhere = await queued(store), await queued(store), await queued(store)
    await store.assign_tasks(
        epoch,
        [
            Assignment(run.id, 1, "w1"),
            Assignment(wait.id, 1, "w1"),
            Assignment(elsewhere.id, 1, "w2"),
        ],
    )
    assert [t.id for t in await store.claim_assigned("w1", ["echo"], 1)] == [run.id]
    back = await store.requeue_nodes_tasks(epoch, ["w1"])
    assert [(t.id, t.status, t.attempt, t.node_id) for t in back] == [
        (run.id, TaskStatus.QUEUED, 2, None),
        (wait.id, TaskStatus.QUEUED, 2, None),
    ]
    # the cut-off worker finishes attempt 1: refused, so completion is recorded once
    late = await store.finish_task(run.id, 1, TaskStatus.SUCCEEDED, result="late")
    assert late is None
    assert await store.node_tasks() == {"w2": [elsewhere.id]}


async def test_requeue_lands_nothing_once_the_fence_moved(store: Store) -> None:
    epoch = await primary(store)
    task = await queued(store)
    await store.assign_tasks(epoch, [Assignment(task.id, 1, "w1")])
    assert await store.raise_fence(epoch + 1, "c2")
    assert await store.requeue_nodes_tasks(epoch, ["w1"]) == []
    still = await store.get_task(task.id)
    assert still is not None and (still.status, still.node_id) == (TaskStatus.ASSIGNED, "w1")


async def test_running_on_node_lists_what_the_store_says_runs_there(store: Store) -> None:
    epoch = await primary(store)
    a, b, c = await queued(store), await queued(store), await queued(store)
    await store.assign_tasks(
        epoch, [Assignment(a.id, 1, "w1"), Assignment(b.id, 1, "w1"), Assignment(c.id, 1, "w2")]
    )
    assert await store.running_on_node("w1") == []  # assigned, not running yet
    await store.claim_assigned("w1", ["echo"], 10)
    assert [t.id for t in await store.running_on_node("w1")] == [a.id, b.id]
    assert await store.running_on_node("w2") == []
