"""create_tasks: a batch of tasks in one transaction, against both backends."""

from __future__ import annotations

import pytest
import trio

from brio.core.tasks import TaskStatus
from brio.store import MAX_CREATE_BATCH, NewTask, NotFound, Store, TaskRecord, open_store


def created(outcome: tuple[TaskRecord, bool] | NotFound) -> TaskRecord:
    assert not isinstance(outcome, NotFound), outcome
    task, was_created = outcome
    assert was_created
    return task


async def test_a_batch_is_inserted_in_order_as_create_task_would(store: Store) -> None:
    session = await store.create_session()
    batch = [
        NewTask("echo", "one", input={"n": [1]}, priority=2),
        NewTask("echo", "two", session_id=session.id, idempotency_key="k2"),
        NewTask("sleep", "three", input=None, node_id="n7"),
    ]
    tasks = [created(outcome) for outcome in await store.create_tasks(batch)]
    assert [(t.agent, t.prompt, t.input, t.priority) for t in tasks] == [
        ("echo", "one", {"n": [1]}, 2),
        ("echo", "two", {}, 0),
        ("sleep", "three", {}, 0),
    ]
    assert [(t.session_id, t.idempotency_key) for t in tasks] == [
        (None, None),
        (session.id, "k2"),
        (None, None),
    ]
    assert all((t.status, t.attempt, t.node_id) == (TaskStatus.QUEUED, 1, None) for t in tasks)
    assert tasks[0].seq < tasks[1].seq < tasks[2].seq  # the batch's order is its age
    assert len({t.created_at for t in tasks}) == 1  # one transaction, one clock reading
    for task in tasks:
        assert await store.get_task(task.id) == task
    # the pin of "n7/sleep" holds: only n7 may claim it
    assert await store.claim_assigned("n1", ["sleep"], 10) == []
    assert await store.claim_task("n1", ["sleep"]) is None
    claimed = await store.claim_task("n7", ["sleep"])
    assert claimed is not None and claimed.id == tasks[2].id


async def test_used_keys_give_the_existing_task_in_the_store_and_in_the_batch(
    store: Store,
) -> None:
    before, _ = await store.create_task(NewTask("echo", "old", idempotency_key="old"))
    outcomes = await store.create_tasks(
        [
            NewTask("echo", "a", idempotency_key="new"),
            NewTask("other", "b", idempotency_key="old"),
            NewTask("other", "c", idempotency_key="new"),
            NewTask("echo", "d"),
        ]
    )
    first = created(outcomes[0])
    assert outcomes[1] == (before, False)
    assert outcomes[2] == (first, False)
    assert created(outcomes[3]).prompt == "d"
    assert await store.count_tasks(TaskStatus.QUEUED) == 3
    # and create_task agrees with what the batch stored
    assert await store.create_task(NewTask("x", "y", idempotency_key="new")) == (first, False)


async def test_an_unknown_session_fails_only_its_item(store: Store) -> None:
    session = await store.create_session()
    outcomes = await store.create_tasks(
        [
            NewTask("echo", "fine", session_id=session.id),
            NewTask("echo", "lost", session_id="nope", idempotency_key="k"),
            NewTask("echo", "retry", session_id=session.id, idempotency_key="k"),
            NewTask("echo", "again", session_id="nope", idempotency_key="k"),
        ]
    )
    assert created(outcomes[0]).session_id == session.id
    assert isinstance(outcomes[1], NotFound) and "nope" in str(outcomes[1])
    retried = created(outcomes[2])  # the key was not used by the failed item
    assert retried.idempotency_key == "k"
    assert outcomes[3] == (retried, False)  # a used key answers before the session is checked
    assert await store.count_tasks(TaskStatus.QUEUED) == 2


async def test_batch_bounds(store: Store) -> None:
    assert await store.create_tasks([]) == []
    with pytest.raises(ValueError, match=str(MAX_CREATE_BATCH)):
        await store.create_tasks([NewTask("echo", "x")] * (MAX_CREATE_BATCH + 1))
    assert await store.count_tasks(TaskStatus.QUEUED) == 0
    full = await store.create_tasks(
        [NewTask("echo", f"p{i}", idempotency_key=f"k{i}") for i in range(MAX_CREATE_BATCH)]
    )
    tasks = [created(outcome) for outcome in full]
    assert [t.prompt for t in tasks] == [f"p{i}" for i in range(MAX_CREATE_BATCH)]
    assert sorted(t.seq for t in tasks) == [t.seq for t in tasks]
    assert await store.count_tasks(TaskStatus.QUEUED) == MAX_CREATE_BATCH


async def test_concurrent_batches_sharing_keys_make_one_task_per_key(
    store_url: str, aio_loop: None
) -> None:
    stores = [await open_store(store_url) for _ in range(2)]
    keys = [f"k{i}" for i in range(40)]
    results: list[list[tuple[TaskRecord, bool] | NotFound]] = []

    async def create(store: Store, order: list[str]) -> None:
        results.append(
            await store.create_tasks([NewTask("echo", k, idempotency_key=k) for k in order])
        )

    try:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                order = keys if i % 2 else list(reversed(keys))
                nursery.start_soon(create, stores[i % 2], order)
    finally:
        for store in stores:
            await store.close()
    by_key: dict[str, set[str]] = {k: set() for k in keys}
    made = 0
    for outcomes in results:
        for outcome in outcomes:
            assert not isinstance(outcome, NotFound)
            task, was_created = outcome
            by_key[task.idempotency_key or ""].add(task.id)
            made += was_created
    assert all(len(ids) == 1 for ids in by_key.values())
    assert made == len(keys)
