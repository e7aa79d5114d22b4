"""The store against an in-memory model of the task lifecycle (a Hypothesis state machine).

``StoreMachine`` creates tasks and sessions, claims tasks from a few nodes, marks them running,
finishes, requeues and cancels them (with the current attempt or a stale one), requeues a
node's tasks, appends messages and lists tasks, on the store and on a small model at once.
After every step the whole store must equal the model: each task's status, attempt, node and
result; ``count_tasks``; every session's messages in order; and a ``list_tasks`` walk with a
small page size that hands out every task exactly once, newest first. The tasks the step moved
are then sent every write the lifecycle refuses them (stale attempts, wrong states, anything
once terminal), each of which must answer ``None`` and change nothing.

The model is written from the lifecycle's definition (``brio/core/tasks.py``), not from the
store's SQL: ``queued -> assigned -> running -> succeeded | failed | cancelled``, back to
``queued`` from ``assigned`` or ``running`` with the attempt counter + 1. A move that names an
attempt applies only to the current one; a write the model refuses must return ``None`` and
leave every row exactly as it was (``updated_at`` included), and a terminal task never changes
again.

A store belongs to the trio run (and, for PostgreSQL, the asyncio loop) that opened it, while
Hypothesis drives a state machine synchronously. So each example opens a fresh database in a
trio run of its own on a background thread (``StoreThread``), and every rule hands its
coroutine to that run and waits for the answer.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

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

T = TypeVar("T")

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


# The operations. A task is named by a TaskRef: an index (modulo their number) into the tasks
# created so far that are in a state the operation may move ("fit") or that are not ("unfit"),
# falling back to all tasks when there are none such; or an id the store never handed out
# ("unknown"). ``stale`` is added to the task's current attempt (0: the current attempt).

TaskRef: TypeAlias = tuple[Literal["fit", "unfit", "unknown"], int]
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


# strategies for the operations

# mostly a task the operation may move, with its current attempt
task_refs = st.tuples(
    st.sampled_from(["fit"] * 3 + ["unfit"] * 2 + ["unknown"]), st.integers(0, 12)
)
stale_attempts = st.sampled_from([0] * 5 + [-1, 1])
# PostgreSQL text cannot hold NUL, so no content has it
content = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4)
messages = st.lists(st.tuples(st.sampled_from(ROLES), content), max_size=2).map(tuple)
results = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["out", "n"]), st.integers(-3, 3), max_size=2),
    st.lists(st.booleans(), max_size=2),
)


def creates(keys: st.SearchStrategy[str | None]) -> st.SearchStrategy[Create]:
    return st.builds(
        Create,
        agent=st.sampled_from(AGENTS),
        priority=st.integers(-1, 2),
        key=keys,
        session=st.sampled_from([None, None, 0, 1, 2, "missing"]),
        pin=st.sampled_from([None, None, *NODES]),
        input=st.none() | st.fixed_dictionaries({"x": st.integers(0, 9)}),
    )


claims = st.builds(
    Claim,
    node=st.sampled_from(NODES),
    # "other" names an agent no task runs; () offers nothing
    agents=st.sampled_from(
        [AGENTS, AGENTS, AGENTS[:1], AGENTS[1:], (*reversed(AGENTS), "other"), ("other",), ()]
    ),
)
mark_runnings = st.builds(MarkRunning, task=task_refs, stale=stale_attempts)
finishes = st.builds(
    Finish,
    task=task_refs,
    stale=stale_attempts,
    status=st.sampled_from([SUCCEEDED, SUCCEEDED, FAILED, CANCELLED]),
    result=results,
    error=st.none() | st.just("boom"),
    messages=messages,
)
requeues = st.builds(Requeue, task=task_refs, stale=stale_attempts)
cancels = st.builds(Cancel, task=task_refs)
requeue_nodes = st.builds(RequeueNode, node=st.sampled_from(NODES))
appends = st.builds(Append, session=st.integers(0, 3), messages=messages)
lists = st.builds(
    List,
    status=st.none() | st.sampled_from(list(TaskStatus)),
    agent=st.none() | st.sampled_from(AGENTS),
    session=st.none() | st.integers(0, 3),
    limit=st.integers(1, 3),
)
# One rule draws every operation, with these weights: Hypothesis switches rules off at random
# for a whole example (swarm testing), which with a rule per operation left most examples
# without a claim or mark_running and so without tasks that run and finish.
WEIGHTED_OPS: list[tuple[int, st.SearchStrategy[Op]]] = [
    (3, creates(st.none() | st.sampled_from(KEYS))),
    (4, claims),
    (3, mark_runnings),
    (4, finishes),
    (2, requeues),
    (2, cancels),
    (1, requeue_nodes),
    (1, st.just(CreateSession())),
    (1, appends),
    (1, lists),
]
ops: st.SearchStrategy[Op] = st.sampled_from(
    [strategy for weight, strategy in WEIGHTED_OPS for _ in range(weight)]
).flatmap(lambda strategy: strategy)


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
        self.status, self.node_id, self.started = QUEUED, None, False
        self.attempt += 1


@dataclass
class Model:
    tasks: list[ModelTask] = field(default_factory=list)  # in creation order
    sessions: list[str] = field(default_factory=list)
    messages: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    keys: dict[str, ModelTask] = field(default_factory=dict)

    def task(self, ref: TaskRef, fit: Collection[TaskStatus]) -> ModelTask | None:
        kind, index = ref
        if kind == "unknown" or not self.tasks:
            return None
        pool = [t for t in self.tasks if (t.status in fit) == (kind == "fit")] or self.tasks
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


# operations


# Each ``do_*`` applies one operation to the store and the model and checks the store's answer;
# it returns the ids of the tasks the operation changed (every other row must be exactly as
# before).


async def do_create_session(store: Store, model: Model, op: CreateSession) -> set[str]:
    session = await store.create_session(title=f"s{len(model.sessions)}")
    model.sessions.append(session.id)
    model.messages[session.id] = []
    return set()


async def do_create(store: Store, model: Model, op: Create) -> set[str]:
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
    existing = None if op.key is None else model.keys.get(op.key)
    if existing is not None:  # the key wins, whatever else the request says
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


async def do_claim(store: Store, model: Model, op: Claim) -> set[str]:
    candidates = [
        t
        for t in model.tasks
        if t.status is QUEUED and t.agent in op.agents and t.pin in (None, op.node)
    ]
    # the highest priority wins, then the oldest (lowest seq)
    best = max(candidates, key=lambda t: (t.priority, -t.seq), default=None)
    if best is not None:
        best.status, best.node_id = ASSIGNED, op.node
    return expect_moved(await store.claim_task(op.node, list(op.agents)), best, True)


def target(
    model: Model, ref: TaskRef, fit: Collection[TaskStatus], stale: int
) -> tuple[ModelTask | None, str, int]:
    """The model task ``ref`` names (None: unknown), its id and the attempt to send."""
    task = model.task(ref, fit)
    if task is None:
        return None, unknown_id(), 1 + stale
    return task, task.id, task.attempt + stale


async def do_mark_running(store: Store, model: Model, op: MarkRunning) -> set[str]:
    task, task_id, attempt = target(model, op.task, MAY_RUN_FROM, op.stale)
    allowed = task is not None and op.stale == 0 and task.status in MAY_RUN_FROM
    if task is not None and allowed:
        task.status, task.started = RUNNING, True
    return expect_moved(await store.mark_running(task_id, attempt), task, allowed)


async def do_finish(store: Store, model: Model, op: Finish) -> set[str]:
    task, task_id, attempt = target(model, op.task, MAY_FINISH_FROM[op.status], op.stale)
    allowed = task is not None and op.stale == 0 and task.status in MAY_FINISH_FROM[op.status]
    if task is not None and allowed:
        task.status, task.result, task.error = op.status, op.result, op.error
        if task.session_id is not None:
            model.append(task.session_id, op.messages, task.id)
    record = await store.finish_task(
        task_id, attempt, op.status, result=op.result, error=op.error, messages=list(op.messages)
    )
    return expect_moved(record, task, allowed)


async def do_requeue(store: Store, model: Model, op: Requeue) -> set[str]:
    task, task_id, attempt = target(model, op.task, MAY_REQUEUE_FROM, op.stale)
    allowed = task is not None and op.stale == 0 and task.status in MAY_REQUEUE_FROM
    if task is not None and allowed:
        task.requeue()
    return expect_moved(await store.requeue_task(task_id, attempt), task, allowed)


async def do_cancel(store: Store, model: Model, op: Cancel) -> set[str]:
    task, task_id, _ = target(model, op.task, LIVE, 0)
    allowed = task is not None and task.status in LIVE
    if task is not None and allowed:
        task.status = CANCELLED
    return expect_moved(await store.cancel_task(task_id), task, allowed)


async def do_requeue_node(store: Store, model: Model, op: RequeueNode) -> set[str]:
    moved = [t for t in model.tasks if t.node_id == op.node and t.status in MAY_REQUEUE_FROM]
    for task in moved:
        task.requeue()
    records = await store.requeue_node_tasks(op.node)
    assert [r.id for r in records] == [t.id for t in moved]  # both in seq order
    for record, task in zip(records, moved, strict=True):
        assert_matches(record, task)
    return {t.id for t in moved}


async def do_append(store: Store, model: Model, op: Append) -> set[str]:
    session_id = model.session(op.session)
    if session_id is None:
        with pytest.raises(NotFound):
            await store.append_messages(unknown_id(), list(op.messages))
        return set()
    appended = await store.append_messages(session_id, list(op.messages))
    assert [(m.session_id, m.role, m.content, m.task_id) for m in appended] == [
        (session_id, role, text, None) for role, text in op.messages
    ]
    model.append(session_id, op.messages, None)
    return set()


async def do_list(store: Store, model: Model, op: List) -> set[str]:
    session_id = None if op.session is None else model.session(op.session)
    want = [
        t
        for t in reversed(model.tasks)
        if (op.status is None or t.status is op.status)
        and (op.agent is None or t.agent == op.agent)
        and (session_id is None or t.session_id == session_id)
    ]
    filt = TaskFilter(status=op.status, agent=op.agent, session_id=session_id)
    got = await walk_pages(store, filt, op.limit)
    assert [r.id for r in got] == [t.id for t in want]
    return set()


async def apply_op(store: Store, model: Model, op: Op) -> set[str]:
    match op:
        case CreateSession():
            return await do_create_session(store, model, op)
        case Create():
            return await do_create(store, model, op)
        case Claim():
            return await do_claim(store, model, op)
        case MarkRunning():
            return await do_mark_running(store, model, op)
        case Finish():
            return await do_finish(store, model, op)
        case Requeue():
            return await do_requeue(store, model, op)
        case Cancel():
            return await do_cancel(store, model, op)
        case RequeueNode():
            return await do_requeue_node(store, model, op)
        case Append():
            return await do_append(store, model, op)
        case List():
            return await do_list(store, model, op)


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


PROBE_MESSAGES = [("system", "never stored")]


async def probe_refusals(store: Store, task: ModelTask) -> None:
    """Send ``task`` every write the lifecycle refuses it now: each move with a stale attempt,
    and with the current attempt each move its state does not allow (all of them once it is
    terminal). Each must answer None; the caller checks that nothing changed."""
    current = task.attempt
    for attempt in (current - 1, current + 1, current):
        if attempt != current or task.status not in MAY_RUN_FROM:
            assert await store.mark_running(task.id, attempt) is None
        if attempt != current or task.status not in MAY_REQUEUE_FROM:
            assert await store.requeue_task(task.id, attempt) is None
        for status in (SUCCEEDED, FAILED, CANCELLED):
            if attempt != current or task.status not in MAY_FINISH_FROM[status]:
                finished = await store.finish_task(
                    task.id, attempt, status, result={"probe": 1}, messages=PROBE_MESSAGES
                )
                assert finished is None
    if task.status not in LIVE:
        assert await store.cancel_task(task.id) is None


async def check(
    store: Store,
    model: Model,
    page_size: int,
    before: dict[str, TaskRecord],
    changed: set[str],
    frozen: dict[str, TaskRecord],
) -> dict[str, TaskRecord]:
    """Compare the whole store with the model, and probe the tasks the step moved with
    writes that must be refused; return every task's record by id."""
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
    for task in model.tasks:
        if task.id in changed:
            assert await store.get_task(task.id) == now[task.id]
            await probe_refusals(store, task)
            assert await store.get_task(task.id) == now[task.id], "a refused write changed it"
    for status in TaskStatus:
        want = sum(t.status is status for t in model.tasks)
        assert await store.count_tasks(status) == want, f"count_tasks({status.value})"
    for session_id, want_messages in model.messages.items():
        stored = await store.list_messages(session_id)
        assert [(m.role, m.content, m.task_id) for m in stored] == want_messages
        assert all(m.session_id == session_id for m in stored)
        assert [m.id for m in stored] == sorted({m.id for m in stored})
    return now


# the state machine

Request: TypeAlias = tuple[Callable[[Store], Awaitable[Any]], "queue.SimpleQueue[tuple[bool, Any]]"]


class StoreThread:
    """One trio run on a background thread that opens the store at ``url`` and runs the
    coroutine functions ``call`` hands it, one at a time, inside that run (and inside the
    asyncio loop PostgreSQL needs, opened around the store)."""

    def __init__(self, url: str, *, asyncio_loop: bool) -> None:
        self._url = url
        self._asyncio_loop = asyncio_loop
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="store-trio-run", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._failure = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._requests, requests = trio.open_memory_channel[Request](0)
        async with AsyncExitStack() as stack:
            if self._asyncio_loop:
                await stack.enter_async_context(open_loop())
            store = await open_store(self._url, max_connections=2)
            try:
                self._ready.set()
                async for fn, reply in requests:
                    try:
                        reply.put((True, await fn(store)))
                    except BaseException as exc:
                        reply.put((False, exc))
                        if not isinstance(exc, Exception):
                            raise
            finally:
                with trio.CancelScope(shield=True):
                    await store.close()

    def call(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        """``await fn(store)`` in the store's trio run; its exception is raised here."""
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        trio.from_thread.run(self._requests.send, (fn, reply), trio_token=self._token)
        ok, value = reply.get()
        if not ok:
            raise value
        result: T = value
        return result

    def close(self) -> None:
        """Close the store, end the trio run and raise what ended it badly, if anything."""
        if self._thread.is_alive():
            trio.from_thread.run(self._requests.aclose, trio_token=self._token)
            self._thread.join()
        if self._failure is not None:
            raise self._failure


class StoreMachine(RuleBasedStateMachine):
    """Drives one fresh database (``url``; ``cleanup`` removes it) against the model."""

    def __init__(self, url: str, *, asyncio_loop: bool, cleanup: Callable[[], None]) -> None:
        super().__init__()
        self.cleanup = cleanup
        try:
            self.store = StoreThread(url, asyncio_loop=asyncio_loop)
        except BaseException:
            cleanup()
            raise
        self.model = Model()
        self.page_size = 3
        self.records: dict[str, TaskRecord] = {}  # every task's row after the last step
        self.changed: set[str] = set()  # the tasks the last step moved
        self.frozen: dict[str, TaskRecord] = {}  # terminal tasks' rows, never to change

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            self.cleanup()

    @initialize(page_size=st.integers(1, 4), seed=st.lists(creates(st.none()), max_size=3))
    def start(self, page_size: int, seed: list[Create]) -> None:
        """Choose the page size of the list_tasks walk after every step; create a few tasks."""
        self.page_size = page_size
        for op in seed:
            self.apply(op)

    @rule(op=ops)
    def apply(self, op: Op) -> None:
        self.changed = self.store.call(lambda store: apply_op(store, self.model, op))

    @invariant()
    def store_matches_model(self) -> None:
        before, changed = self.records, self.changed
        self.records = self.store.call(
            lambda store: check(store, self.model, self.page_size, before, changed, self.frozen)
        )
        self.changed = set()


# the tests

MACHINE_SETTINGS = settings(
    stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.timeout(600)  # Hypothesis may shrink a failure for 300 s
def test_sqlite_store_matches_the_model() -> None:
    class SQLiteMachine(StoreMachine):
        def __init__(self) -> None:
            tmp = tempfile.TemporaryDirectory(prefix="brio-model-")
            url = sqlite_url(Path(tmp.name) / "brio.db")
            super().__init__(url, asyncio_loop=False, cleanup=tmp.cleanup)

    run_state_machine_as_test(SQLiteMachine, settings=settings(MACHINE_SETTINGS, max_examples=150))


@pytest.mark.postgres
@pytest.mark.timeout(600)  # Hypothesis may shrink a failure for 300 s
def test_postgres_store_matches_the_model(postgres_server: PostgresServer) -> None:
    class PostgresMachine(StoreMachine):
        def __init__(self) -> None:
            name = f"model_{uuid.uuid4().hex[:16]}"
            url = postgres_server.create_database(name)
            super().__init__(
                url, asyncio_loop=True, cleanup=lambda: postgres_server.drop_database(name)
            )

    run_state_machine_as_test(PostgresMachine, settings=settings(MACHINE_SETTINGS, max_examples=25))
