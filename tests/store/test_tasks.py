"""Tasks through their lifecycle, against both backends (the ``store`` fixture)."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from brio.core.tasks import TaskStatus
from brio.store import NewTask, NotFound, Store, StoreError, TaskFilter, TaskRecord, open_store


async def make(store: Store, agent: str = "echo", **fields: Any) -> TaskRecord:
    task, created = await store.create_task(
        NewTask(agent=agent, prompt=fields.pop("prompt", "hi"), **fields)
    )
    assert created
    return task


async def running(store: Store, node: str = "n1", **fields: Any) -> TaskRecord:
    """A task claimed by ``node`` and marked running."""
    task = await make(store, **fields)
    claimed = await store.claim_task(node, [task.agent])
    assert claimed is not None and claimed.id == task.id
    started = await store.mark_running(task.id, task.attempt)
    assert started is not None
    return started


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


# creating and reading


async def test_create_task_is_queued_attempt_one(store: Store) -> None:
    task, created = await store.create_task(
        NewTask(agent="echo", prompt="hello", input={"k": [1, 2]}, priority=3)
    )
    assert created
    assert uuid.UUID(task.id).version == 4
    assert (task.agent, task.prompt, task.input, task.priority) == (
        "echo",
        "hello",
        {"k": [1, 2]},
        3,
    )
    assert (task.status, task.attempt, task.node_id) == (TaskStatus.QUEUED, 1, None)
    assert (task.result, task.error, task.started_at, task.finished_at) == (None, None, None, None)
    assert_utc(task.created_at)
    assert_utc(task.updated_at)
    assert await store.get_task(task.id) == task


async def test_get_unknown_task_is_none(store: Store) -> None:
    assert await store.get_task(str(uuid.uuid4())) is None


async def test_create_task_in_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.create_task(NewTask(agent="echo", prompt="hi", session_id="nope"))
    assert await store.count_tasks(TaskStatus.QUEUED) == 0


async def test_idempotency_key_returns_the_existing_task(store: Store) -> None:
    first = await make(store, idempotency_key="k1")
    again, created = await store.create_task(
        NewTask(agent="other", prompt="different", idempotency_key="k1")
    )
    assert not created
    assert again == first
    other = await make(store, idempotency_key="k2")
    assert other.id != first.id
    assert await store.count_tasks(TaskStatus.QUEUED) == 2


async def test_concurrent_creates_with_one_key_make_one_task(
    store_url: str, aio_loop: None
) -> None:
    stores = [await open_store(store_url) for _ in range(2)]
    outcomes: list[tuple[TaskRecord, bool]] = []

    async def create(store: Store) -> None:
        outcomes.append(await store.create_task(NewTask("echo", "hi", idempotency_key="same")))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(create, stores[i % 2])
    finally:
        for store in stores:
            await store.close()
    assert sorted(created for _, created in outcomes) == [False] * 5 + [True]
    assert len({task.id for task, _ in outcomes}) == 1


# listing


async def test_list_tasks_pages_newest_first(store: Store) -> None:
    made = [await make(store, prompt=f"p{i}") for i in range(7)]
    seen: list[TaskRecord] = []
    cursor = None
    sizes = []
    while True:
        page = await store.list_tasks(TaskFilter(), limit=3, cursor=cursor)
        seen += page.tasks
        sizes.append(len(page.tasks))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [3, 3, 1]
    assert [t.id for t in seen] == [t.id for t in reversed(made)]


async def test_last_full_page_has_no_cursor(store: Store) -> None:
    for _ in range(4):
        await make(store)
    page = await store.list_tasks(TaskFilter(), limit=2)
    page = await store.list_tasks(TaskFilter(), limit=2, cursor=page.next_cursor)
    assert len(page.tasks) == 2
    assert page.next_cursor is None
    assert (await store.list_tasks(TaskFilter(), limit=10)).next_cursor is None


async def test_list_tasks_filters(store: Store) -> None:
    session = await store.create_session()
    a1 = await make(store, agent="a", session_id=session.id)
    b1 = await make(store, agent="b")
    a2 = await make(store, agent="a")
    await store.claim_task("n1", ["b"])

    async def ids(filt: TaskFilter) -> list[str]:
        return [t.id for t in (await store.list_tasks(filt)).tasks]

    assert await ids(TaskFilter(agent="a")) == [a2.id, a1.id]
    assert await ids(TaskFilter(status=TaskStatus.ASSIGNED)) == [b1.id]
    assert await ids(TaskFilter(status=TaskStatus.QUEUED, agent="a")) == [a2.id, a1.id]
    assert await ids(TaskFilter(session_id=session.id)) == [a1.id]
    assert await ids(TaskFilter(agent="missing")) == []
    first = await store.list_tasks(TaskFilter(agent="a"), limit=1)
    rest = await store.list_tasks(TaskFilter(agent="a"), limit=1, cursor=first.next_cursor)
    assert [t.id for t in first.tasks + rest.tasks] == [a2.id, a1.id]
    assert rest.next_cursor is None


@pytest.mark.parametrize(
    "cursor",
    ["", "garbage!", "bm90LWEtY3Vyc29y", base64.urlsafe_b64encode(b"brio-task-seq:-1").decode()],
)
async def test_bad_cursor_is_value_error(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.list_tasks(TaskFilter(), cursor=cursor)


async def test_list_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_tasks(TaskFilter(), limit=0)


async def test_count_tasks(store: Store) -> None:
    for _ in range(3):
        await make(store)
    await store.claim_task("n1", ["echo"])
    assert await store.count_tasks(TaskStatus.QUEUED) == 2
    assert await store.count_tasks(TaskStatus.ASSIGNED) == 1
    assert await store.count_tasks(TaskStatus.SUCCEEDED) == 0


# claiming


async def test_claim_takes_highest_priority_then_oldest(store: Store) -> None:
    low_old = await make(store, priority=0)
    high_old = await make(store, priority=5)
    low_new = await make(store, priority=0)
    high_new = await make(store, priority=5)
    order = []
    while (task := await store.claim_task("n1", ["echo"])) is not None:
        assert (task.status, task.node_id, task.attempt) == (TaskStatus.ASSIGNED, "n1", 1)
        order.append(task.id)
    assert order == [high_old.id, high_new.id, low_old.id, low_new.id]


async def test_claim_only_takes_the_agents_asked_for(store: Store) -> None:
    a = await make(store, agent="a")
    b = await make(store, agent="b")
    assert await store.claim_task("n1", []) is None
    assert await store.claim_task("n1", ["c"]) is None
    claimed = await store.claim_task("n1", ["b", "c"])
    assert claimed is not None and claimed.id == b.id
    claimed = await store.claim_task("n1", ["a", "b"])
    assert claimed is not None and claimed.id == a.id
    assert await store.claim_task("n1", ["a", "b"]) is None


async def test_claim_respects_pinning(store: Store) -> None:
    pinned = await make(store, node_id="n2", priority=9)
    free = await make(store)
    claimed = await store.claim_task("n1", ["echo"])
    assert claimed is not None and claimed.id == free.id
    assert await store.claim_task("n1", ["echo"]) is None
    claimed = await store.claim_task("n2", ["echo"])
    assert claimed is not None and (claimed.id, claimed.node_id) == (pinned.id, "n2")


async def test_concurrent_claimers_never_share_a_task(store_url: str, aio_loop: None) -> None:
    # Two stores (two SQLite connections, or two PostgreSQL pools) with two claimers each.
    stores = [await open_store(store_url) for _ in range(2)]
    for i in range(20):
        await make(stores[0], priority=i % 3)
    claims: dict[str, list[str]] = {}

    async def claimer(store: Store, node: str) -> None:
        claims[node] = []
        while (task := await store.claim_task(node, ["echo"])) is not None:
            assert task.node_id == node
            claims[node].append(task.id)
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(claimer, stores[i % 2], f"n{i}")
        claimed = [task_id for ids in claims.values() for task_id in ids]
        assert len(claimed) == 20
        assert len(set(claimed)) == 20
        assert await stores[1].count_tasks(TaskStatus.ASSIGNED) == 20
    finally:
        for store in stores:
            await store.close()


# conditional transitions


async def test_mark_running_needs_the_current_attempt_and_assigned(store: Store) -> None:
    task = await make(store)
    assert await store.mark_running(task.id, 1) is None  # still queued
    await store.claim_task("n1", ["echo"])
    assert await store.mark_running(task.id, 2) is None  # stale attempt
    started = await store.mark_running(task.id, 1)
    assert started is not None
    assert started.status == TaskStatus.RUNNING
    assert_utc(started.started_at)
    assert await store.mark_running(task.id, 1) is None  # already running
    assert await store.mark_running(str(uuid.uuid4()), 1) is None


async def test_finish_task_records_result_once(store: Store) -> None:
    task = await running(store)
    assert await store.finish_task(task.id, 2, TaskStatus.SUCCEEDED, result="x") is None
    done = await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED, result={"answer": 42})
    assert done is not None
    assert (done.status, done.result, done.error, done.node_id) == (
        TaskStatus.SUCCEEDED,
        {"answer": 42},
        None,
        "n1",
    )
    assert_utc(done.finished_at)
    assert await store.finish_task(task.id, 1, TaskStatus.FAILED, error="late") is None
    assert await store.get_task(task.id) == done


async def test_finish_from_assigned_may_fail_but_not_succeed(store: Store) -> None:
    task = await make(store)
    await store.claim_task("n1", ["echo"])
    assert await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED) is None
    failed = await store.finish_task(task.id, 1, TaskStatus.FAILED, error="no such agent")
    assert failed is not None
    assert (failed.status, failed.error, failed.result) == (
        TaskStatus.FAILED,
        "no such agent",
        None,
    )


async def test_finish_task_needs_a_terminal_status(store: Store) -> None:
    task = await running(store)
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_task(task.id, 1, TaskStatus.QUEUED)


async def test_finish_task_appends_session_messages_in_order(store: Store) -> None:
    session = await store.create_session()
    await store.append_messages(session.id, [("system", "be brief")])
    touched = await store.get_session(session.id)
    task = await running(store, session_id=session.id)
    turns = [("user", "hi"), ("assistant", "hello"), ("assistant", "bye")]
    done = await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED, result="bye", messages=turns)
    assert done is not None and done.result == "bye"
    after = await store.get_session(session.id)
    assert touched is not None and after is not None and after.updated_at > touched.updated_at
    messages = await store.list_messages(session.id)
    assert [(m.role, m.content) for m in messages] == [("system", "be brief"), *turns]
    assert [m.task_id for m in messages] == [None, task.id, task.id, task.id]
    # A stale or repeated finish adds nothing.
    assert await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED, messages=turns) is None
    assert len(await store.list_messages(session.id)) == 4


async def test_finish_task_is_atomic_with_its_messages(store: Store) -> None:
    session = await store.create_session()
    task = await running(store, session_id=session.id)
    unbindable: Any = object()  # the second insert fails after the update and first insert
    with pytest.raises(StoreError):
        await store.finish_task(
            task.id, 1, TaskStatus.SUCCEEDED, messages=[("user", "hi"), ("assistant", unbindable)]
        )
    assert await store.list_messages(session.id) == []
    unchanged = await store.get_task(task.id)
    assert unchanged is not None and unchanged.status == TaskStatus.RUNNING


async def test_finish_task_without_a_session_ignores_messages(store: Store) -> None:
    task = await running(store)
    done = await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED, messages=[("user", "hi")])
    assert done is not None and done.status == TaskStatus.SUCCEEDED


async def test_cancel_from_any_non_terminal_state(store: Store) -> None:
    queued = await make(store, agent="q")
    assigned = await make(store, agent="a")
    await store.claim_task("n1", ["a"])
    run = await running(store, agent="r")
    for task in (queued, assigned, run):
        cancelled = await store.cancel_task(task.id)
        assert cancelled is not None
        assert cancelled.status == TaskStatus.CANCELLED
        assert_utc(cancelled.finished_at)
        assert await store.cancel_task(task.id) is None
    finished = await running(store, agent="f")
    await store.finish_task(finished.id, 1, TaskStatus.SUCCEEDED)
    assert await store.cancel_task(finished.id) is None
    assert await store.cancel_task(str(uuid.uuid4())) is None
    # A worker finishing a cancelled task is refused.
    assert await store.finish_task(run.id, 1, TaskStatus.SUCCEEDED) is None


async def test_requeue_task_bumps_attempt_and_frees_the_node(store: Store) -> None:
    task = await running(store)
    assert await store.requeue_task(task.id, 2) is None
    requeued = await store.requeue_task(task.id, 1)
    assert requeued is not None
    assert (requeued.status, requeued.attempt, requeued.node_id, requeued.started_at) == (
        TaskStatus.QUEUED,
        2,
        None,
        None,
    )
    assert await store.requeue_task(task.id, 2) is None  # queued already
    # The old attempt can no longer report.
    assert await store.finish_task(task.id, 1, TaskStatus.SUCCEEDED) is None
    again = await store.claim_task("n2", ["echo"])
    assert again is not None and (again.id, again.attempt, again.node_id) == (task.id, 2, "n2")
    assert await store.mark_running(task.id, 2) is not None
    done = await store.finish_task(task.id, 2, TaskStatus.SUCCEEDED, result="ok")
    assert done is not None and done.result == "ok"


async def test_requeue_keeps_the_pin(store: Store) -> None:
    task = await make(store, node_id="n2")
    claimed = await store.claim_task("n2", ["echo"])
    assert claimed is not None
    assert await store.requeue_task(task.id, 1) is not None
    assert await store.claim_task("n1", ["echo"]) is None
    again = await store.claim_task("n2", ["echo"])
    assert again is not None and (again.id, again.attempt) == (task.id, 2)


async def test_requeue_node_tasks(store: Store) -> None:
    assigned = await make(store)
    await store.claim_task("n1", ["echo"])
    run = await running(store, "n1")
    finished = await running(store, "n1")
    await store.finish_task(finished.id, 1, TaskStatus.SUCCEEDED)
    elsewhere = await running(store, "n2")
    requeued = await store.requeue_node_tasks("n1")
    assert [t.id for t in requeued] == [assigned.id, run.id]
    assert all((t.status, t.attempt, t.node_id) == (TaskStatus.QUEUED, 2, None) for t in requeued)
    assert await store.get_task(elsewhere.id) == elsewhere
    done = await store.get_task(finished.id)
    assert done is not None and done.status == TaskStatus.SUCCEEDED
    assert await store.requeue_node_tasks("n1") == []
