"""The store against an in-memory model of the task lifecycle (model-based property test).

Hypothesis draws a *program*: a list of store operations (create tasks and sessions, claim,
mark running, finish, requeue, cancel, requeue a node's tasks, append messages, list). Each
program runs in one ``trio.run`` on a fresh database: every operation is applied to the store
and to a small model, then the whole store is compared with the model. Drawing the program up
front (instead of a ``RuleBasedStateMachine``) keeps one store, bound to one trio run, for the
whole example, while Hypothesis still shrinks a failure to the shortest program.

The model is written from the lifecycle's definition (``brio/core/tasks.py``), not from the
store's SQL: ``queued -> assigned -> running -> succeeded | failed | cancelled``, back to
``queued`` from ``assigned`` or ``running`` with the attempt counter + 1. Every move that names
an attempt applies only to the current one; any write the model refuses must return ``None``
and leave every row exactly as it was (``updated_at`` included), and a terminal task never
changes again.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import pytest
import trio
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis import given

from brio.aio import open_loop
from brio.core.tasks import TaskStatus
from brio.store import (
    JSON,
    NewTask,
    NotFound,
    Store,
    TaskFilter,
    TaskRecord,
    open_store,
    sqlite_url,
)
from tests.pg import PostgresServer

QUEUED, ASSIGNED, RUNNING = TaskStatus.QUEUED, TaskStatus.ASSIGNED, TaskStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED

NODES = ("n1", "n2", "n3")
AGENTS = ("echo", "shell")
KEYS = ("k1", "k2", "k3")
ROLES = ("user", "assistant", "system")

# The lifecycle, spelled out independently of brio.core.tasks: where each move may start.
MAY_RUN_FROM = frozenset({ASSIGNED})
MAY_FINISH_FROM = {
    SUCCEEDED: frozenset({RUNNING}),
    FAILED: frozenset({ASSIGNED, RUNNING}),
    CANCELLED: frozenset({QUEUED, ASSIGNED, RUNNING}),
}
MAY_REQUEUE_FROM = frozenset({ASSIGNED, RUNNING})
LIVE = frozenset({QUEUED, ASSIGNED, RUNNING})


# The operations of a program. A task is named by a TaskRef: an index (modulo their number) into
# the tasks created so far that are in a state the operation accepts ("fit"; any task if none
# is), into all tasks ("any"), or an id the store never handed out ("unknown"). ``stale`` is
# added to the task's current attempt (0: the current attempt).

TaskRef: TypeAlias = tuple[Literal["fit", "any", "unknown"], int]
Messages: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CreateSession:
    pass


@dataclass(frozen=True)
class Create:
    agent: str
    priority: int
    key: str | None
    session: int | Literal["missing"] | None  # index into the sessions, or an unknown id
    pin: str | None
    input: JSON


@dataclass(frozen=True)
class Claim:
    node: str
    agents: tuple[str, ...]


@dataclass(frozen=True)
class MarkRunning:
    task: TaskRef
    stale: int


@dataclass(frozen=True)
class Finish:
    task: TaskRef
    stale: int
    status: TaskStatus
    result: JSON
    error: str | None
    messages: Messages


@dataclass(frozen=True)
class Requeue:
    task: TaskRef
    stale: int


@dataclass(frozen=True)
class Cancel:
    task: TaskRef


@dataclass(frozen=True)
class RequeueNode:
    node: str


@dataclass(frozen=True)
class Append:
    session: int
    messages: Messages


@dataclass(frozen=True)
class List:
    status: TaskStatus | None
    agent: str | None
    session: int | None
    limit: int


Op: TypeAlias = (
    CreateSession
    | Create
    | Claim
    | MarkRunning
    | Finish
    | Requeue
    | Cancel
    | RequeueNode
    | Append
    | List
)


@dataclass(frozen=True)
class Program:
    page_size: int  # the limit of the full list_tasks walk after every step
    ops: list[Op]


# strategies

task_refs = st.tuples(st.sampled_from(["fit", "fit", "any", "unknown"]), st.integers(0, 12))
stale_attempts = st.sampled_from([0, 0, 0, 0, -1, 1])  # mostly the current attempt
content = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4)
messages = st.lists(st.tuples(st.sampled_from(ROLES), content), max_size=2).map(tuple)
results = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["out", "n"]), st.integers(-3, 3), max_size=2),
    st.lists(st.booleans(), max_size=2),
)

creates = st.builds(
    Create,
    agent=st.sampled_from(AGENTS),
    priority=st.integers(-1, 2),
    key=st.none() | st.sampled_from(KEYS),
    session=st.none() | st.integers(0, 3) | st.just("missing"),
    pin=st.none() | st.sampled_from(NODES),
    input=st.none() | st.fixed_dictionaries({"x": st.integers(0, 9)}),
)
claims = st.builds(
    Claim,
    node=st.sampled_from(NODES),
    # "other" names an agent no task runs; () claims nothing
    agents=st.sampled_from(
        [AGENTS, AGENTS[:1], AGENTS[1:], (*reversed(AGENTS), "other"), ("other",), ()]
    ),
)
# (weight, strategy): creates and claims feed every other operation.
weighted_ops: list[tuple[int, st.SearchStrategy[Op]]] = [
    (3, creates),
    (3, claims),
    (2, st.builds(MarkRunning, task=task_refs, stale=stale_attempts)),
    (
        3,
        st.builds(
            Finish,
            task=task_refs,
            stale=stale_attempts,
            status=st.sampled_from([SUCCEEDED, FAILED, CANCELLED]),
            result=results,
            error=st.none() | st.just("boom"),
            messages=messages,
        ),
    ),
    (2, st.builds(Requeue, task=task_refs, stale=stale_attempts)),
    (1, st.builds(Cancel, task=task_refs)),
    (1, st.builds(RequeueNode, node=st.sampled_from(NODES))),
    (1, st.just(CreateSession())),
    (1, st.builds(Append, session=st.integers(0, 3), messages=messages)),
    (
        1,
        st.builds(
            List,
            status=st.none() | st.sampled_from(list(TaskStatus)),
            agent=st.none() | st.sampled_from(AGENTS),
            session=st.none() | st.integers(0, 3),
            limit=st.integers(1, 3),
        ),
    ),
]
ops: st.SearchStrategy[Op] = st.sampled_from(
    [strategy for weight, strategy in weighted_ops for _ in range(weight)]
).flatmap(lambda strategy: strategy)

# A list of short lists, flattened: Hypothesis keeps a plain list short (a handful of items on
# average), and this makes typical programs a few times longer while they still shrink to one
# operation (an empty program cannot fail).
op_lists = st.lists(st.lists(ops, min_size=1, max_size=10), min_size=1, max_size=8).map(
    lambda chunks: [op for chunk in chunks for op in chunk]
)
programs = st.builds(Program, page_size=st.integers(1, 4), ops=op_lists)


# the model


@dataclass
class ModelTask:
    id: str
    seq: int
    agent: str
    prompt: str
    input: JSON
    session_id: str | None
    idempotency_key: str | None
    priority: int
    pin: str | None
    status: TaskStatus = QUEUED
    attempt: int = 1
    node_id: str | None = None
    result: JSON = None
    error: str | None = None
    started: bool = False  # started_at is set

    def requeue(self) -> None:
        self.status, self.attempt, self.node_id, self.started = (
            QUEUED,
            self.attempt + 1,
            None,
            False,
        )


@dataclass
class Model:
    tasks: list[ModelTask] = field(default_factory=list)  # in creation order
    sessions: list[str] = field(default_factory=list)
    messages: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    keys: dict[str, ModelTask] = field(default_factory=dict)

    def task(self, ref: TaskRef, fit: Collection[TaskStatus]) -> ModelTask | None:
        kind, index = ref
        fitting = [t for t in self.tasks if t.status in fit]
        pool = fitting if kind == "fit" and fitting else self.tasks
        if kind == "unknown" or not pool:
            return None
        return pool[index % len(pool)]

    def session(self, ref: int) -> str | None:
        return self.sessions[ref % len(self.sessions)] if self.sessions else None

    def append(self, session_id: str, msgs: Messages, task_id: str | None) -> None:
        self.messages[session_id].extend((role, text, task_id) for role, text in msgs)


def unknown_id() -> str:
    return str(uuid.uuid4())


def assert_matches(record: TaskRecord | None, task: ModelTask) -> None:
    assert record is not None, f"task {task.id} is missing"
    got = (
        record.id,
        record.seq,
        record.agent,
        record.prompt,
        record.input,
        record.session_id,
        record.idempotency_key,
        record.priority,
        record.status,
        record.attempt,
        record.node_id,
        record.result,
        record.error,
        record.started_at is not None,
        record.finished_at is not None,
    )
    want = (
        task.id,
        task.seq,
        task.agent,
        task.prompt,
        task.input,
        task.session_id,
        task.idempotency_key,
        task.priority,
        task.status,
        task.attempt,
        task.node_id,
        task.result,
        task.error,
        task.started,
        task.status.terminal,
    )
    assert got == want


def expect_moved(record: TaskRecord | None, task: ModelTask | None, allowed: bool) -> set[str]:
    """Check a conditional write's answer: the moved task when the model allowed the move
    (the model is already updated), else None. Returns the ids the write changed."""
    if task is None or not allowed:
        assert record is None, f"a refused write returned {record}"
        return set()
    assert_matches(record, task)
    return {task.id}


# running a program


async def apply(store: Store, model: Model, op: Op) -> set[str]:
    """Apply ``op`` to the store and the model, check its answer; return the ids of the tasks
    it changed (every other row must be exactly as before)."""
    if isinstance(op, CreateSession):
        session = await store.create_session(title=f"s{len(model.sessions)}")
        model.sessions.append(session.id)
        model.messages[session.id] = []
        return set()

    if isinstance(op, Create):
        if op.session == "missing":
            session_id: str | None = unknown_id()
        else:
            session_id = None if op.session is None else model.session(op.session)
        new = NewTask(
            agent=op.agent,
            prompt=f"prompt {len(model.tasks)}",
            input=op.input,
            session_id=session_id,
            idempotency_key=op.key,
            priority=op.priority,
            node_id=op.pin,
        )
        existing = model.keys.get(op.key) if op.key is not None else None
        if existing is not None:
            record, created = await store.create_task(new)
            assert not created
            assert_matches(record, existing)
            return set()
        if session_id is not None and session_id not in model.messages:
            with pytest.raises(NotFound):
                await store.create_task(new)
            return set()
        record, created = await store.create_task(new)
        assert created
        assert all(record.seq > other.seq for other in model.tasks)
        task = ModelTask(
            id=record.id,
            seq=record.seq,
            agent=op.agent,
            prompt=new.prompt,
            input={} if op.input is None else op.input,
            session_id=session_id,
            idempotency_key=op.key,
            priority=op.priority,
            pin=op.pin,
        )
        assert_matches(record, task)
        model.tasks.append(task)
        if op.key is not None:
            model.keys[op.key] = task
        return {task.id}

    if isinstance(op, Claim):
        candidates = [
            t
            for t in model.tasks
            if t.status is QUEUED and t.agent in op.agents and t.pin in (None, op.node)
        ]
        # priority first (highest wins), then age (lowest seq wins)
        best = max(candidates, key=lambda t: (t.priority, -t.seq), default=None)
        if best is not None:
            best.status, best.node_id = ASSIGNED, op.node
        return expect_moved(await store.claim_task(op.node, list(op.agents)), best, True)

    if isinstance(op, MarkRunning):
        task = model.task(op.task, MAY_RUN_FROM)
        task_id = unknown_id() if task is None else task.id
        attempt = 1 + op.stale if task is None else task.attempt + op.stale
        allowed = task is not None and op.stale == 0 and task.status in MAY_RUN_FROM
        if task is not None and allowed:
            task.status, task.started = RUNNING, True
        return expect_moved(await store.mark_running(task_id, attempt), task, allowed)

    if isinstance(op, Finish):
        task = model.task(op.task, MAY_FINISH_FROM[op.status])
        task_id = unknown_id() if task is None else task.id
        attempt = 1 + op.stale if task is None else task.attempt + op.stale
        allowed = task is not None and op.stale == 0 and task.status in MAY_FINISH_FROM[op.status]
        if task is not None and allowed:
            task.status, task.result, task.error = op.status, op.result, op.error
            if task.session_id is not None:
                model.append(task.session_id, op.messages, task.id)
        record = await store.finish_task(
            task_id,
            attempt,
            op.status,
            result=op.result,
            error=op.error,
            messages=list(op.messages),
        )
        return expect_moved(record, task, allowed)

    if isinstance(op, Requeue):
        task = model.task(op.task, MAY_REQUEUE_FROM)
        task_id = unknown_id() if task is None else task.id
        attempt = 1 + op.stale if task is None else task.attempt + op.stale
        allowed = task is not None and op.stale == 0 and task.status in MAY_REQUEUE_FROM
        if task is not None and allowed:
            task.requeue()
        return expect_moved(await store.requeue_task(task_id, attempt), task, allowed)

    if isinstance(op, Cancel):
        task = model.task(op.task, LIVE)
        task_id = unknown_id() if task is None else task.id
        allowed = task is not None and task.status in LIVE
        if task is not None and allowed:
            task.status = CANCELLED
        return expect_moved(await store.cancel_task(task_id), task, allowed)

    if isinstance(op, RequeueNode):
        moved = [t for t in model.tasks if t.node_id == op.node and t.status in MAY_REQUEUE_FROM]
        for t in moved:
            t.requeue()
        records = await store.requeue_node_tasks(op.node)
        assert [r.id for r in records] == [t.id for t in moved]  # both in seq order
        for record, t in zip(records, moved, strict=True):
            assert_matches(record, t)
        return {t.id for t in moved}

    if isinstance(op, Append):
        session = model.session(op.session)
        if session is None:
            with pytest.raises(NotFound):
                await store.append_messages(unknown_id(), list(op.messages))
            return set()
        appended = await store.append_messages(session, list(op.messages))
        assert [(m.session_id, m.role, m.content, m.task_id) for m in appended] == [
            (session, role, text, None) for role, text in op.messages
        ]
        model.append(session, op.messages, None)
        return set()

    if isinstance(op, List):
        session = None if op.session is None else model.session(op.session)
        filt = TaskFilter(status=op.status, agent=op.agent, session_id=session)
        want = [
            t
            for t in reversed(model.tasks)
            if (op.status is None or t.status is op.status)
            and (op.agent is None or t.agent == op.agent)
            and (session is None or t.session_id == session)
        ]
        got = await walk_pages(store, filt, op.limit)
        assert [r.id for r in got] == [t.id for t in want]
        return set()

    raise AssertionError(f"unknown operation {op!r}")


async def walk_pages(store: Store, filt: TaskFilter, limit: int) -> list[TaskRecord]:
    """Every task ``list_tasks`` hands out, page by page, checking the page shapes."""
    records: list[TaskRecord] = []
    cursor: str | None = None
    while True:
        page = await store.list_tasks(filt, limit=limit, cursor=cursor)
        assert len(page.tasks) <= limit
        if page.next_cursor is not None:
            assert len(page.tasks) == limit
        records.extend(page.tasks)
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


async def check(
    store: Store,
    model: Model,
    page_size: int,
    before: dict[str, TaskRecord],
    changed: set[str],
    frozen: dict[str, TaskRecord],
) -> dict[str, TaskRecord]:
    """Compare the whole store with the model; return every task's record by id."""
    records = await walk_pages(store, TaskFilter(), page_size)
    # newest first, each task exactly once
    assert [r.id for r in records] == [t.id for t in reversed(model.tasks)]
    now = {r.id: r for r in records}
    for task in model.tasks:
        assert_matches(now[task.id], task)
        if task.id in before and task.id not in changed:
            assert now[task.id] == before[task.id], "a task the step did not move changed"
        if task.id in frozen:
            assert now[task.id] == frozen[task.id], "a terminal task changed"
        elif task.status.terminal:
            frozen[task.id] = now[task.id]
    for task_id in changed:
        assert await store.get_task(task_id) == now[task_id]
    for status in TaskStatus:
        want = sum(t.status is status for t in model.tasks)
        assert await store.count_tasks(status) == want, f"count_tasks({status.value})"
    for session_id, want_messages in model.messages.items():
        stored = await store.list_messages(session_id)
        assert [(m.role, m.content, m.task_id) for m in stored] == want_messages
        assert all(m.session_id == session_id for m in stored)
        assert [m.id for m in stored] == sorted({m.id for m in stored})
    return now


async def run_program(store: Store, program: Program) -> None:
    model = Model()
    records: dict[str, TaskRecord] = {}
    frozen: dict[str, TaskRecord] = {}
    for step, op in enumerate(program.ops):
        note(f"step {step}: {op}")
        changed = await apply(store, model, op)
        records = await check(store, model, program.page_size, records, changed, frozen)


async def run_on(url: str, program: Program) -> None:
    async with open_loop():  # PostgreSQL needs it; harmless for SQLite
        store = await open_store(url, max_connections=2)
        try:
            await run_program(store, program)
        finally:
            await store.close()


# the tests


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
def test_sqlite_store_matches_the_model(program: Program) -> None:
    with tempfile.TemporaryDirectory(prefix="brio-model-") as tmp:
        trio.run(run_on, sqlite_url(Path(tmp) / "brio.db"), program)


@pytest.mark.postgres
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
def test_postgres_store_matches_the_model(
    postgres_server: PostgresServer, program: Program
) -> None:
    name = f"model_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    try:
        trio.run(run_on, url, program)
    finally:
        postgres_server.drop_database(name)
