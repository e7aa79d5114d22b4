"""SQLite's group commit and read connections, seen from outside: another connection holds
the file's write lock meanwhile, as a second process on the same file would."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from brio.core.tasks import TaskStatus
from brio.store import (
    NewTask,
    NotFound,
    SQLiteStore,
    StoreError,
    TaskFilter,
    TaskRecord,
    open_store,
    sqlite_url,
)
from brio.store.base import Assignment
from brio.store.sql import SQLITE_SQL as SQL


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "brio.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    opened = await open_store(sqlite_url(db))
    assert isinstance(opened, SQLiteStore)
    try:
        yield opened
    finally:
        await opened.close()


@contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection for the body."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


@contextmanager
def commits(store: SQLiteStore) -> Iterator[list[str]]:
    """The COMMITs the store's write connection runs during the body."""
    seen: list[str] = []
    conn = store._writer._conn
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


async def test_writes_that_wait_meanwhile_commit_together_and_fail_alone(
    store: SQLiteStore, db: Path
) -> None:
    session = await store.create_session()
    outcomes: dict[int, TaskRecord | NotFound] = {}

    async def create(i: int) -> None:
        new = NewTask("echo", f"p{i}", session_id="nope" if i % 5 == 0 else session.id)
        try:
            outcomes[i] = (await store.create_task(new))[0]
        except NotFound as exc:
            outcomes[i] = exc

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(*SQL.put_config.bind(key="half", value='"written"', now="t"))
        raise ValueError("after writing")

    async def fail_after_writing() -> None:
        with pytest.raises(ValueError, match="after writing"):
            await store._transaction(half_then_fail)

    with commits(store) as seen:
        async with trio.open_nursery() as nursery:
            with write_lock(db):
                for i in range(30):
                    nursery.start_soon(create, i)
                    if i == 10:
                        nursery.start_soon(fail_after_writing)
                await trio.sleep(0.3)  # every write is queued behind the one waiting to begin
                assert outcomes == {}  # nothing is answered before its commit
    assert len(seen) <= 3, seen  # the first write alone, then the rest in one or two groups
    failed = sorted(i for i, o in outcomes.items() if isinstance(o, NotFound))
    assert failed == list(range(0, 30, 5))
    made = {i: o for i, o in outcomes.items() if not isinstance(o, NotFound)}
    assert len(made) == 24
    for i, task in made.items():
        assert await store.get_task(task.id) == task
        assert task.prompt == f"p{i}"
    assert await store.count_tasks(TaskStatus.QUEUED) == 24
    assert await store.get_config("half") is None  # rolled back to its savepoint, alone


async def test_reads_do_not_wait_for_a_write_that_waits(store: SQLiteStore, db: Path) -> None:
    task, _ = await store.create_task(NewTask("echo", "before"))
    written: list[TaskRecord] = []

    async def write() -> None:
        written.append((await store.create_task(NewTask("echo", "after")))[0])

    async with trio.open_nursery() as nursery:
        with write_lock(db):
            nursery.start_soon(write)
            await trio.sleep(0.1)
            with trio.fail_after(5):  # a read behind the write would wait for the lock
                assert await store.get_task(task.id) == task
                assert await store.count_tasks(TaskStatus.QUEUED) == 1
            assert written == []
    assert await store.count_tasks(TaskStatus.QUEUED) == 2


async def test_a_cancelled_write_that_had_not_begun_never_lands(
    store: SQLiteStore, db: Path
) -> None:
    async with trio.open_nursery() as nursery:
        with write_lock(db):
            nursery.start_soon(store.create_task, NewTask("echo", "first"))
            await trio.sleep(0.1)  # the writer waits to begin this one
            with trio.move_on_after(0.2) as scope:
                await store.create_task(NewTask("echo", "cancelled"))
            assert scope.cancelled_caught
    page = await store.list_tasks(TaskFilter())
    assert [t.prompt for t in page.tasks] == ["first"]


async def test_memory_database_reads_what_it_wrote() -> None:
    store = await open_store("sqlite:///:memory:")
    try:
        task, _ = await store.create_task(NewTask("echo", "hi"))
        assert await store.get_task(task.id) == task
    finally:
        await store.close()


async def test_a_closed_store_refuses_writes(db: Path) -> None:
    store = await open_store(sqlite_url(db))
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.create_task(NewTask("echo", "late"))


@contextmanager
def statements(store: SQLiteStore) -> Iterator[list[str]]:
    """Every statement the store's write connection runs during the body."""
    seen: list[str] = []
    conn = store._writer._conn
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def _synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_placement_commits_skip_the_fsync_and_everything_else_keeps_it(
    store: SQLiteStore,
) -> None:
    """assign_tasks and claim_assigned commit under synchronous = NORMAL (1); a task's
    creation, its end and every other write under FULL (2), the promise of the 202."""
    epoch = await store.fence_epoch() + 1
    assert await store.raise_fence(epoch, "n1")
    with statements(store) as seen:
        task, _ = await store.create_task(NewTask("echo", "p"))
        created = len(seen)
        await store.assign_tasks(epoch, [Assignment(task.id, task.attempt, "n1")])
        assigned = len(seen)
        [claimed] = await store.claim_assigned("n1", ["echo"], 10)
        claimed_at = len(seen)
        done = await store.finish_task(claimed.id, claimed.attempt, TaskStatus.SUCCEEDED)
    assert done is not None and done.status is TaskStatus.SUCCEEDED
    pragmas = [(i, sql) for i, sql in enumerate(seen) if sql.startswith("PRAGMA synchronous")]
    # NORMAL before the assignment's BEGIN, FULL again before the finish's
    assert [sql for _, sql in pragmas] == [
        "PRAGMA synchronous = NORMAL",
        "PRAGMA synchronous = FULL",
    ]
    assert created <= pragmas[0][0] < assigned
    assert claimed_at <= pragmas[1][0]
    assert await store._transaction(_synchronous) == 2
    assert await store._transaction(_synchronous, durable=False) == 1


async def test_a_group_with_a_durable_write_commits_with_the_fsync(
    store: SQLiteStore, db: Path
) -> None:
    """A placement write that shares its group with one that promises durability commits
    under FULL: the group's one commit is the durable write's."""
    seen: dict[str, int] = {}

    async def probe(name: str, durable: bool) -> None:
        seen[name] = await store._transaction(_synchronous, durable=durable)

    async with trio.open_nursery() as nursery:
        with write_lock(db):
            nursery.start_soon(probe, "first", False)  # taken, waits for the lock
            await trio.sleep(0.1)
            nursery.start_soon(probe, "placement", False)
            nursery.start_soon(store.create_task, NewTask("echo", "p"))
            await trio.sleep(0.2)  # both queued behind the first
    assert seen["placement"] == 2  # whether or not the first was taken alone
