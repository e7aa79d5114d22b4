"""brio.store.coalesce: operations queued while a batch runs go together as the next one; a
caller's failure or cancellation is its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import outcome
import pytest
import trio
import trio.testing
import trio_asyncio

from brio.core.tasks import TaskStatus
from brio.store import NewTask, NotFound, open_store
from brio.store.base import Placement, StoreError, TaskRecord
from brio.store.coalesce import Coalescer
from brio.store.postgres import PostgresStore, _Submit


class _Database:
    """A stand-in batch runner: records each batch, answers ``op * 10`` after ``release``
    is set (or at once when it is None); an op of -1 fails alone."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release: trio.Event | None = trio.Event() if hold else None
        self.started = trio.Event()
        self.before_answer: Callable[[], object] = lambda: None

    async def run(self, ops: Sequence[int]) -> list[outcome.Outcome[int]]:
        self.batches.append(list(ops))
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        await trio.lowlevel.checkpoint()
        self.before_answer()
        return [
            outcome.Error(ValueError(f"op {op}")) if op < 0 else outcome.Value(op * 10)
            for op in ops
        ]


async def _call_all(
    coalescer: Coalescer[int, int],
    ops: list[int],
    results: dict[int, int | str],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call with each of ``ops`` in turn, each queued before the next (started once all are)."""

    async def one(op: int, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            results[op] = await coalescer(op)
        except ValueError as exc:
            results[op] = str(exc)

    async with trio.open_nursery() as nursery:
        for op in ops:
            await nursery.start(one, op)  # runs until it waits in the coalescer
        task_status.started()


async def test_a_lone_call_goes_at_once_and_the_rest_go_together() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run)
    results: dict[int, int | str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_call_all, coalescer, [1], results)
        await db.started.wait()
        await nursery.start(_call_all, coalescer, [2, 3, -1, 4], results)
        assert db.batches == [[1]]  # the others wait for the batch in flight
        assert db.release is not None
        db.release.set()
    assert db.batches == [[1], [2, 3, -1, 4]]
    assert results == {1: 10, 2: 20, 3: 30, 4: 40, -1: "op -1"}  # the failure is its own
    assert coalescer.batches == 2


async def test_batches_are_bounded_by_the_limit() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run, limit=3)
    results: dict[int, int | str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_call_all, coalescer, [0], results)
        await db.started.wait()
        await nursery.start(_call_all, coalescer, list(range(1, 8)), results)
        assert db.release is not None
        db.release.set()
    assert db.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert results == {op: op * 10 for op in range(8)}


async def test_a_caller_cancelled_while_queued_never_runs() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run)
    results: dict[int, int | str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_call_all, coalescer, [1], results)
        await db.started.wait()
        await nursery.start(_call_all, coalescer, [2], results)

        async def cancelled_caller(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await coalescer(3)

        scope = await nursery.start(cancelled_caller)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert db.release is not None
        db.release.set()
    assert db.batches == [[1], [2]]  # 3 was dropped from the queue
    assert results == {1: 10, 2: 20}


async def test_the_leaders_cancellation_does_not_fail_its_batch() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run)
    results: dict[int, int | str] = {}
    leader = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def lead() -> None:
            with leader:
                results[1] = await coalescer(1)
                await trio.lowlevel.checkpoint()
                results[-1] = "went on after the cancel"

        nursery.start_soon(lead)
        await db.started.wait()
        await nursery.start(_call_all, coalescer, [2], results)
        leader.cancel()  # while its batch is in flight: the batch still ends
        await trio.testing.wait_all_tasks_blocked()
        assert db.release is not None
        db.release.set()
    assert db.batches == [[1], [2]]
    assert results == {1: 10, 2: 20}  # its operation landed; the cancel came after it
    assert leader.cancelled_caught


async def test_a_caller_woken_to_lead_but_cancelled_hands_the_lead_on() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run)
    doomed = trio.CancelScope()
    # 2 is cancelled just before 1's batch answers: the batch then wakes 2 to lead, but 2
    # runs its cancellation instead and must pass the lead to 3.
    db.before_answer = doomed.cancel
    results: dict[int, int | str] = {}
    with trio.fail_after(5):  # a lead left with a cancelled caller would hang 3
        async with trio.open_nursery() as nursery:
            await nursery.start(_call_all, coalescer, [1], results)

            async def next_leader(task_status: trio.TaskStatus[None]) -> None:
                with doomed:
                    task_status.started()
                    await coalescer(2)

            await nursery.start(next_leader)
            await nursery.start(_call_all, coalescer, [3], results)
            assert db.release is not None
            db.release.set()
    assert db.batches == [[1], [3]]
    assert results == {1: 10, 3: 30}
    assert doomed.cancelled_caught


async def test_a_batch_over_its_time_fails_its_callers_with_a_store_error() -> None:
    db = _Database(hold=True)
    coalescer: Coalescer[int, int] = Coalescer(db.run, timeout=0.05, what="inserts")
    with pytest.raises(StoreError, match=r"1 inserts took over 0\.05 s"):
        await coalescer(1)
    db.release = None
    assert await coalescer(2) == 20  # the next batch runs as usual


@pytest.fixture
async def pg(postgres_url: str, aio_loop: None) -> AsyncIterator[PostgresStore]:
    store = await open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.postgres
async def test_concurrent_postgres_submits_go_in_batches(pg: PostgresStore) -> None:
    store = pg
    results: list[tuple[str, bool]] = []

    async def submit(i: int) -> None:
        key = f"k{i % 40}"  # 80 submits, 40 keys: each key twice, some in one batch
        task, created = await store.create_task(NewTask("echo", f"p{i}", idempotency_key=key))
        results.append((task.id, created))

    async with trio.open_nursery() as nursery:
        for i in range(80):
            nursery.start_soon(submit, i)
    batches = store._submits.batches
    assert sum(created for _, created in results) == 40
    assert len({task_id for task_id, _ in results}) == 40
    assert batches < 80  # coalesced: fewer batches than submits


def _answer(result: outcome.Outcome[object]) -> object:
    try:
        return result.unwrap()
    except Exception as exc:
        return exc


async def _together(*calls: Callable[[], Awaitable[object]]) -> list[object]:
    """Run ``calls`` concurrently; their answers (or errors) in order."""
    answers: list[object] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            answers[i] = await calls[i]()
        except Exception as exc:
            answers[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return answers


@pytest.mark.postgres
async def test_coalesced_postgres_submits_keep_each_ones_answer(pg: PostgresStore) -> None:
    store = pg
    session = await store.create_session()
    assert await store.raise_fence(7, "c1")
    here = Placement(epoch=7, node_id="w1")
    stale = Placement(epoch=6, node_id="w2")
    subs = [
        (NewTask("echo", "queued"), None),
        (NewTask("echo", "placed"), here),
        (NewTask("echo", "stale"), stale),  # its epoch is gone: queued, as alone
        (NewTask("echo", "s", session_id=session.id, idempotency_key="a"), here),
        (NewTask("echo", "s", session_id=session.id, idempotency_key="a"), here),
    ]
    answers = await _together(*(lambda n=n, p=p: store.create_task(n, p) for n, p in subs))
    batches = store._submits.batches
    assert all(isinstance(a, tuple) for a in answers), answers
    tasks = [a[0] for a in answers if isinstance(a, tuple)]
    created = [a[1] for a in answers if isinstance(a, tuple)]
    assert created[:3] == [True, True, True]
    assert sorted(created[3:]) == [False, True]  # one key, one task: whichever came first
    assert [t.status for t in tasks[:4]] == [
        TaskStatus.QUEUED,
        TaskStatus.ASSIGNED,
        TaskStatus.QUEUED,
        TaskStatus.ASSIGNED,
    ]
    assert [t.node_id for t in tasks[:4]] == [None, "w1", None, "w1"]
    assert tasks[4] == tasks[3] and tasks[3].session_id == session.id
    assert batches < len(subs)
    assert store.batches_split == 0  # they went in one statement

    # A session that does not exist fails its batch's statement: each then goes alone, and
    # only the bad one fails (the batch as the coalescer hands it over).
    answers = [
        _answer(a)
        for a in await store._submit_batch(
            [
                _Submit(NewTask("echo", "ok-1"), None),
                _Submit(NewTask("echo", "bad", session_id="no-such-session"), None),
                _Submit(NewTask("echo", "ok-2", idempotency_key="b"), None),
            ]
        )
    ]
    assert isinstance(answers[1], NotFound)
    assert store.batches_split == 1
    good = [a for a in answers if isinstance(a, tuple)]
    assert [(t.prompt, created) for t, created in good] == [("ok-1", True), ("ok-2", True)]
    assert (await store.create_task(NewTask("echo", "x", idempotency_key="b")))[1] is False


@pytest.mark.postgres
async def test_coalesced_postgres_finishes_each_land_once(pg: PostgresStore) -> None:
    store = pg
    assert await store.raise_fence(1, "c1")
    for i in range(6):
        await store.create_task(NewTask("echo", f"t{i}"), Placement(epoch=1, node_id="w1"))
    running = await store.claim_assigned("w1", ["echo"], 10)
    assert len(running) == 6
    t = running

    def finish(
        task: TaskRecord, status: TaskStatus, attempt: int | None = None
    ) -> Callable[[], Awaitable[TaskRecord | None]]:
        return lambda: store.finish_task(
            task.id,
            task.attempt if attempt is None else attempt,
            status,
            result={"n": task.prompt} if status is TaskStatus.SUCCEEDED else None,
            error="boom" if status is TaskStatus.FAILED else None,
        )

    answers = await _together(
        finish(t[0], TaskStatus.SUCCEEDED),
        finish(t[1], TaskStatus.SUCCEEDED),
        finish(t[2], TaskStatus.FAILED),
        finish(t[3], TaskStatus.SUCCEEDED, attempt=t[3].attempt + 1),  # superseded: refused
        finish(t[4], TaskStatus.SUCCEEDED),
        finish(t[4], TaskStatus.SUCCEEDED),  # the same attempt twice: one lands
        finish(t[5], TaskStatus.SUCCEEDED),
    )
    batches = store._finishes.batches
    landed = [a for a in answers if isinstance(a, TaskRecord)]
    assert [a.prompt for a in landed] == ["t0", "t1", "t2", "t4", "t5"]
    assert answers[3] is None and (answers[4] is None) != (answers[5] is None)
    assert landed[0].status is TaskStatus.SUCCEEDED and landed[0].result == {"n": "t0"}
    assert landed[2].status is TaskStatus.FAILED and landed[2].error == "boom"
    assert landed[2].result is None
    again = await store.get_task(t[3].id)
    assert again is not None and again.status is TaskStatus.RUNNING
    assert batches < len(answers)
    assert store.batches_split == 0


@pytest.mark.postgres
async def test_postgres_statements_leave_no_timers_behind(pg: PostgresStore) -> None:
    store = pg
    # asyncpg's idle timer (cancelled and set again at every release) is off: a busy store
    # must not fill the loop's timer heap with one object per statement.
    for i in range(1500):
        await store.get_task(f"t{i}")
    loop = trio_asyncio.current_loop.get()
    assert len(loop._timers) < 100
