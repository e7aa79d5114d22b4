"""The SQLite backend: the embedded database of a single node (the quick start).

Writes go to one thread that owns the write connection (``_Writer``) and group-commits: it
takes every write queued meanwhile, runs them in one ``BEGIN IMMEDIATE`` transaction, each
under its own savepoint so that a failing write fails only its caller, commits once, and only
then answers the callers. IMMEDIATE takes the write lock up front, so two processes on one
file (a node and a CLI, or two stores in a test) serialise instead of failing half-way with
SQLITE_BUSY. Reads run on their own connections in trio's worker threads (``_Readers``): in
WAL mode they see the last commit and never wait for the writer. A thread is never abandoned
on cancellation: a write already taken finishes (commit or rollback) before its caller sees
the cancellation; one still queued is dropped and never runs.

The file runs in WAL mode with ``synchronous = FULL``: the API promises that a task is
durable before it answers 202, and NORMAL may lose the last commits on power loss. The price
is one fsync of the WAL per commit, which group commit shares among every write that waited
for it. Placement's own writes (``assign_tasks``, ``claim_assigned``) promise nobody anything,
so a group of only those commits under NORMAL, without the fsync: losing them on power loss
leaves the task queued or assigned, as it was, and it runs (again) after the restart, as a
task that was running then does. WAL frames are written in order, so the next FULL commit
(the task's result, say) makes them durable too, and a crash never keeps a later commit
without the earlier ones. That takes two of a task's four fsyncs off its way from submit to
result. Timestamps are fixed-width ISO 8601 text in UTC; JSON is text. The statements are
``brio.store.sql``'s, shared with PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from brio.core.tasks import TaskStatus
from brio.store import schema
from brio.store._common import (
    Created,
    RowDecoder,
    TaskBatch,
    by_node,
    check_cluster_view,
    check_limit,
    check_messages,
    check_page,
    check_terminal,
    encode_cursor,
    new_id,
    queued_record,
    task_input,
)
from brio.store.base import (
    JSON,
    AgentRecord,
    Assignment,
    FenceRecord,
    MessageRecord,
    NewTask,
    NodeRecord,
    NodeStateRecord,
    NotFound,
    Placement,
    QueuedRecord,
    SessionRecord,
    StoreError,
    TaskFilter,
    TaskPage,
    TaskRecord,
)
from brio.store.sql import SQLITE_SQL as SQL
from brio.store.sql import Bound

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds another process may hold the write lock before we give up
READERS = 4  # read connections (each read holds one in a worker thread)
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


def _now() -> str:
    return datetime.now(UTC).strftime(_TS_FORMAT)


def _fmt_ts(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"timestamps must be timezone-aware, not {value!r}")
    return value.astimezone(UTC).strftime(_TS_FORMAT)


def _dump(value: JSON) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None) -> JSON:
    return None if text is None else json.loads(text)


_ROWS = RowDecoder(ts=datetime.fromisoformat, json=_load)


def _one_task(conn: sqlite3.Connection, stmt: Bound) -> TaskRecord | None:
    row = conn.execute(*stmt).fetchone()
    return None if row is None else _ROWS.task(row)


def _fence_holds(conn: sqlite3.Connection, epoch: int) -> bool:
    """Whether the fence holds ``epoch``. Inside a BEGIN IMMEDIATE transaction, which holds
    the write lock from its start, no raise_fence (from this store or another process) can
    land between this check and the writes after it."""
    return bool(conn.execute(SQL.fence_epoch.text).fetchone()[0] == epoch)


def _session_exists(conn: sqlite3.Connection, session_id: str) -> bool:
    return conn.execute(*SQL.session_exists.bind(id=session_id)).fetchone() is not None


def _insert_messages(
    conn: sqlite3.Connection,
    session_id: str,
    messages: list[tuple[str, str]],
    task_id: str | None,
) -> list[MessageRecord]:
    now = _now()
    insert = SQL.insert_message
    records = [
        _ROWS.message(
            conn.execute(
                *insert.bind(
                    session_id=session_id, role=role, content=content, task_id=task_id, now=now
                )
            ).fetchone()
        )
        for role, content in messages
    ]
    conn.execute(*SQL.touch_session.bind(id=session_id, now=now))
    return records


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(schema.render(schema.MIGRATIONS_TABLE, "sqlite"))
    applied = [row[0] for row in conn.execute(SQL.applied_migrations.text)]
    for migration in schema.pending(applied):
        for statement in migration.render("sqlite"):
            conn.execute(statement)
        conn.execute(
            *SQL.record_migration.bind(
                version=migration.version, description=migration.description, now=_now()
            )
        )


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out other openers doing the same.

    SQLite answers "database is locked" at once, without its busy handler, when another
    connection is switching the journal mode at that moment (several nodes or tests
    starting together): retry up to ``BUSY_TIMEOUT`` like any other lock.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        _set_wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        wrapped = StoreError(f"sqlite: {exc}")
        wrapped.__cause__ = exc
        return wrapped
    return exc


@dataclass(eq=False, slots=True)
class _Write:
    """One caller's write, waiting in the writer's queue (compared by identity)."""

    fn: Callable[[sqlite3.Connection], Any]
    task: trio.lowlevel.Task
    token: trio.lowlevel.TrioToken
    durable: bool  # False: its commit needs no fsync of its own (see the module's docstring)
    result: outcome.Outcome[Any] = field(
        default_factory=lambda: outcome.Error(StoreError("the write never ran"))
    )


class _Writer:
    """The one thread that writes, committing every write that waits in one transaction.

    Group commit: while a commit's fsync runs, callers queue their writes; the thread then
    takes them all, runs each under its own savepoint inside one ``BEGIN IMMEDIATE``
    transaction, commits once (one fsync under ``synchronous = FULL``) and only then answers
    every caller, so nothing is acknowledged before it is durable. A write that raises is
    rolled back to its savepoint and fails alone; if the transaction itself fails (the commit,
    or SQLite abandoning the transaction after an I/O error), every write of the group runs
    again alone, so each caller gets its own outcome. A caller costs two hand-offs: its write
    into the queue and its answer back into trio with the group's (``run_sync_soon``).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._full = True  # the connection's synchronous setting is FULL (_connect sets it)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="brio-sqlite-writer", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        write = _Write(
            fn, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token(), durable
        )
        with self._cond:
            if self._closing:
                raise StoreError("the SQLite store is closed")
            self._queue.append(write)
            self._cond.notify()

        def abort(_: Any) -> trio.lowlevel.Abort:
            with self._cond:
                if write in self._queue:  # not taken yet: it never ran
                    self._queue.remove(write)
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # running: wait for its outcome, then cancel

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def close(self) -> None:
        """Finish what was queued, refuse more, and close the connection."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        await trio.to_thread.run_sync(self._thread.join)
        self._conn.close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                group, self._queue = self._queue, []
            if not group:
                return  # closing, and nothing left
            try:
                self._synchronous(any(write.durable for write in group))
                if len(group) == 1:
                    self._alone(group[0])
                else:
                    self._group(group)
            finally:  # every caller hears back, whatever happened
                self._answer(group)

    def _synchronous(self, full: bool) -> None:
        """FULL (an fsync per commit) when a write of the group promises durability."""
        if full != self._full:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._full = full

    def _alone(self, write: _Write) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = write.fn(conn)
            conn.execute("COMMIT")
            write.result = outcome.Value(value)
        except BaseException as exc:
            self._rollback()
            write.result = outcome.Error(_store_error(exc))

    def _group(self, group: list[_Write]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in group:
                conn.execute("SAVEPOINT brio_write")
                try:
                    write.result = outcome.Value(write.fn(conn))
                except Exception as exc:
                    write.result = outcome.Error(_store_error(exc))
                    conn.execute("ROLLBACK TO brio_write")
                conn.execute("RELEASE brio_write")
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            for write in group:
                self._alone(write)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("sqlite: rolling back failed")

    @staticmethod
    def _answer(group: list[_Write]) -> None:
        by_run: dict[trio.lowlevel.TrioToken, list[_Write]] = {}
        for write in group:
            by_run.setdefault(write.token, []).append(write)
        for token, writes in by_run.items():

            def wake(writes: list[_Write] = writes) -> None:
                for write in writes:
                    trio.lowlevel.reschedule(write.task, write.result)

            with contextlib.suppress(trio.RunFinishedError):  # that run is gone: nobody waits
                token.run_sync_soon(wake)


class _Readers:
    """Connections that only read, used from trio's worker threads, one call per connection at
    a time. In WAL mode a reader sees the last commit and never waits for the writer."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self._slots = trio.Semaphore(READERS)
        self._closed = False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the SQLite store is closed")
        async with self._slots:
            if self._closed:
                raise StoreError("the SQLite store is closed")
            conn = self._idle.pop() if self._idle else None
            box: list[sqlite3.Connection] = []

            def read() -> T:
                try:
                    reader = conn if conn is not None else _connect_reader(self._path)
                    box.append(reader)
                    return fn(reader)
                except sqlite3.Error as exc:
                    raise StoreError(f"sqlite: {exc}") from exc

            try:
                return await trio.to_thread.run_sync(read)
            finally:
                self._idle.extend(box)

    async def close(self) -> None:
        if self._closed:
            return  # closing twice (the database went away, then the node stops) is fine
        self._closed = True
        for _ in range(READERS):  # wait out the reads in flight
            await self._slots.acquire()
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        for _ in range(READERS):  # readers that queued meanwhile wake and see it closed
            self._slots.release()


class SQLiteStore:
    """A ``Store`` on one SQLite file (or ``:memory:``)."""

    backend = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._writer = _Writer(conn)
        # A second connection to ":memory:" would open another, empty database.
        self._readers = None if path == ":memory:" else _Readers(path)

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        """Open (creating parent directories) and migrate the database at ``path``."""
        try:
            conn = await trio.to_thread.run_sync(_connect, path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
        store = cls(conn, path)
        try:
            await store._transaction(_migrate)
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.close()
            raise
        return store

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read, on a reader connection: it waits for no commit."""
        if self._readers is None:
            return await self._writer.run(fn)
        return await self._readers.run(fn)

    async def _transaction(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> T:
        """A write, committed (with the others queued meanwhile) before this returns; an
        exception from ``fn`` rolls back only ``fn``'s own statements. ``durable=False``: the
        commit may skip its fsync (placement only; see the module's docstring)."""
        return await self._writer.run(fn, durable=durable)

    async def close(self) -> None:
        if self._readers is not None:
            await self._readers.close()
        await self._writer.close()

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute(SQL.ping.text).fetchone())

    async def schema_version(self) -> int:
        return await self._run(
            lambda conn: int(conn.execute(SQL.schema_version.text).fetchone()[0])
        )

    # tasks

    async def create_task(
        self, new: NewTask, placement: Placement | None = None
    ) -> tuple[TaskRecord, bool]:
        def create(conn: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            key = new.idempotency_key
            if key is not None:
                existing = _one_task(conn, SQL.task_by_key.bind(key=key))
                if existing is not None:
                    return existing, False
            if new.session_id is not None and not _session_exists(conn, new.session_id):
                raise NotFound(f"session {new.session_id!r} does not exist")
            placed = placement is not None and _fence_holds(conn, placement.epoch)
            stmt = SQL.insert_task.bind(
                id=new_id(),
                agent=new.agent,
                prompt=new.prompt,
                input=json.dumps(task_input(new.input)),
                session_id=new.session_id,
                key=key,
                priority=new.priority,
                target_node=new.node_id,
                status="assigned" if placed else "queued",
                node_id=placement.node_id if placed and placement else None,
                now=_now(),
            )
            task = _one_task(conn, stmt)
            if task is None:  # the key was taken since the check: BEGIN IMMEDIATE rules it out
                raise StoreError(f"idempotency key {key!r} appeared during create_task")
            return task, True

        return await self._transaction(create)

    async def create_tasks(self, batch: Sequence[NewTask]) -> list[Created]:
        plan = TaskBatch.of(batch)
        if not plan.items:
            return []
        keys, session_ids = json.dumps(plan.keys), json.dumps(plan.session_ids)

        def create(conn: sqlite3.Connection) -> list[Created]:
            existing = {
                row["idempotency_key"]: _ROWS.task(row)
                for row in conn.execute(*SQL.tasks_by_keys.bind(keys=keys))
            }
            sessions = {
                row[0] for row in conn.execute(*SQL.sessions_existing.bind(ids=session_ids))
            }
            rows = [
                (
                    task_id,
                    n.agent,
                    n.prompt,
                    json.dumps(task_input(n.input)),
                    n.session_id,
                    n.idempotency_key,
                    n.priority,
                    n.node_id,
                )
                for task_id, n in plan.plan(existing, sessions)
            ]
            inserted: dict[str, TaskRecord] = {}
            if rows:
                stmt = SQL.insert_tasks.bind(rows=json.dumps(rows), now=_now())
                inserted = {row["id"]: _ROWS.task(row) for row in conn.execute(*stmt)}
            if plan.lost_keys(inserted):  # BEGIN IMMEDIATE rules it out
                raise StoreError("an idempotency key appeared during create_tasks")
            return plan.outcomes(inserted, {})

        return await self._transaction(create)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        stmt = SQL.task_by_id.bind(id=task_id)
        return await self._run(lambda conn: _one_task(conn, stmt))

    async def list_tasks(
        self, filt: TaskFilter, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        stmt = SQL.task_page(filt, limit, cursor)
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        tasks = [_ROWS.task(row) for row in rows[:limit]]
        more = len(rows) > limit
        return TaskPage(tasks=tasks, next_cursor=encode_cursor(tasks[-1].seq) if more else None)

    async def claim_task(self, node_id: str, agents: list[str]) -> TaskRecord | None:
        if not agents:
            return None
        stmt = SQL.claim_task.bind(node_id=node_id, agents=json.dumps(agents), now=_now())
        return await self._transaction(lambda conn: _one_task(conn, stmt))

    async def mark_running(self, task_id: str, attempt: int) -> TaskRecord | None:
        stmt = SQL.mark_running.bind(id=task_id, attempt=attempt, now=_now())
        return await self._transaction(lambda conn: _one_task(conn, stmt))

    async def finish_task(
        self,
        task_id: str,
        attempt: int,
        status: TaskStatus,
        *,
        result: JSON | None = None,
        error: str | None = None,
        messages: list[tuple[str, str]] | None = None,
    ) -> TaskRecord | None:
        check_terminal(status)
        check_messages(messages or [])
        finish_as = SQL.finish_task[status]

        def finish(conn: sqlite3.Connection) -> TaskRecord | None:
            stmt = finish_as.bind(
                id=task_id, attempt=attempt, result=_dump(result), error=error, now=_now()
            )
            task = _one_task(conn, stmt)
            if task is not None and task.session_id is not None and messages:
                _insert_messages(conn, task.session_id, messages, task.id)
            return task

        return await self._transaction(finish)

    async def cancel_task(self, task_id: str) -> TaskRecord | None:
        stmt = SQL.cancel_task.bind(id=task_id, now=_now())
        return await self._transaction(lambda conn: _one_task(conn, stmt))

    async def requeue_task(self, task_id: str, attempt: int) -> TaskRecord | None:
        stmt = SQL.requeue_task.bind(id=task_id, attempt=attempt, now=_now())
        return await self._transaction(lambda conn: _one_task(conn, stmt))

    async def requeue_node_tasks(self, node_id: str) -> list[TaskRecord]:
        stmt = SQL.requeue_node_tasks.bind(node_id=node_id, now=_now())
        rows = await self._transaction(lambda conn: conn.execute(*stmt).fetchall())
        return sorted((_ROWS.task(row) for row in rows), key=lambda task: task.seq)

    async def count_tasks(self, status: TaskStatus) -> int:
        stmt = SQL.count_tasks.bind(status=status.value)
        return await self._run(lambda conn: int(conn.execute(*stmt).fetchone()[0]))

    # the scheduler

    async def queued_tasks(self, limit: int) -> list[QueuedRecord]:
        stmt = SQL.queued_tasks.bind(limit=limit)
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        return [queued_record(row) for row in rows]

    async def queued_tasks_after(
        self, after: tuple[int, int], limit: int, agents: Sequence[str], nodes: Sequence[str]
    ) -> list[QueuedRecord]:
        stmt = SQL.queued_tasks_after.bind(
            priority=after[0],
            seq=after[1],
            agents=json.dumps(list(agents)),
            nodes=json.dumps(list(nodes)),
            limit=limit,
        )
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        return [queued_record(row) for row in rows]

    async def node_tasks(self) -> dict[str, list[str]]:
        rows = await self._run(lambda conn: conn.execute(SQL.node_tasks.text).fetchall())
        return by_node(rows)

    async def assign_tasks(self, epoch: int, batch: list[Assignment]) -> list[TaskRecord]:
        if not batch:
            return []
        rows = json.dumps([[a.task_id, a.attempt, a.node_id] for a in batch])

        def assign(conn: sqlite3.Connection) -> list[TaskRecord]:
            if not _fence_holds(conn, epoch):
                return []
            stmt = SQL.assign_tasks.bind(batch=rows, now=_now())
            return [_ROWS.task(row) for row in conn.execute(*stmt).fetchall()]

        return await self._transaction(assign, durable=False)

    async def requeue_nodes_tasks(self, epoch: int, node_ids: list[str]) -> list[TaskRecord]:
        if not node_ids:
            return []
        nodes = json.dumps(node_ids)

        def requeue(conn: sqlite3.Connection) -> list[TaskRecord]:
            if not _fence_holds(conn, epoch):
                return []
            stmt = SQL.requeue_nodes_tasks.bind(nodes=nodes, now=_now())
            return [_ROWS.task(row) for row in conn.execute(*stmt).fetchall()]

        return sorted(await self._transaction(requeue), key=lambda task: task.seq)

    async def running_on_node(self, node_id: str) -> list[TaskRecord]:
        stmt = SQL.running_on_node.bind(node_id=node_id)
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        return [_ROWS.task(row) for row in rows]

    async def claim_assigned(self, node_id: str, agents: list[str], limit: int) -> list[TaskRecord]:
        if not agents or limit <= 0:
            return []
        stmt = SQL.claim_assigned.bind(
            node_id=node_id, agents=json.dumps(agents), limit=limit, now=_now()
        )
        rows = await self._transaction(lambda conn: conn.execute(*stmt).fetchall(), durable=False)
        return sorted((_ROWS.task(row) for row in rows), key=lambda t: (-t.priority, t.seq))

    # sessions and conversation history

    async def create_session(
        self, title: str | None = None, metadata: JSON = None
    ) -> SessionRecord:
        metadata = {} if metadata is None else metadata
        stmt = SQL.insert_session.bind(
            id=new_id(), title=title, metadata=json.dumps(metadata), now=_now()
        )
        row = await self._transaction(lambda conn: conn.execute(*stmt).fetchone())
        return _ROWS.session(row)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        stmt = SQL.session_by_id.bind(id=session_id)
        row = await self._run(lambda conn: conn.execute(*stmt).fetchone())
        return None if row is None else _ROWS.session(row)

    async def list_sessions(self, limit: int = 50, offset: int = 0) -> list[SessionRecord]:
        check_page(limit, offset)
        stmt = SQL.list_sessions.bind(limit=limit, offset=offset)
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        return [_ROWS.session(row) for row in rows]

    async def append_messages(
        self, session_id: str, messages: list[tuple[str, str]], task_id: str | None = None
    ) -> list[MessageRecord]:
        check_messages(messages)

        def append(conn: sqlite3.Connection) -> list[MessageRecord]:
            if not _session_exists(conn, session_id):
                raise NotFound(f"session {session_id!r} does not exist")
            return _insert_messages(conn, session_id, messages, task_id)

        return await self._transaction(append)

    async def list_messages(self, session_id: str, limit: int | None = None) -> list[MessageRecord]:
        if limit is not None:
            check_limit(limit)
        bound = SQL.dialect.no_limit if limit is None else limit
        stmt = SQL.list_messages.bind(session_id=session_id, limit=bound)
        rows = await self._run(lambda conn: conn.execute(*stmt).fetchall())
        return [_ROWS.message(row) for row in reversed(rows)]

    # nodes and agents

    async def upsert_node(self, node: NodeRecord) -> None:
        stmt = SQL.upsert_node.bind(
            id=node.id,
            role=node.role,
            address=node.address,
            version=node.version,
            status=node.status,
            last_seen=_fmt_ts(node.last_seen),
        )
        await self._transaction(lambda conn: conn.execute(*stmt))

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._run(lambda conn: conn.execute(SQL.list_nodes.text).fetchall())
        return [_ROWS.node(row) for row in rows]

    async def upsert_agents(self, node_id: str, agents: list[tuple[str, str, str]]) -> None:
        insert = SQL.insert_agent

        def replace(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute(*SQL.delete_agents.bind(node_id=node_id))
            conn.executemany(
                insert.text,
                [
                    insert.args(
                        node_id=node_id, name=name, kind=kind, description=description, now=now
                    )
                    for name, kind, description in agents
                ],
            )

        await self._transaction(replace)

    async def list_agents(self) -> list[AgentRecord]:
        rows = await self._run(lambda conn: conn.execute(SQL.list_agents.text).fetchall())
        return [_ROWS.agent(row) for row in rows]

    # the fence (brio.store.sql sets its statements beside PostgreSQL's, and says why they differ)

    async def fence_epoch(self) -> int:
        return await self._run(lambda conn: int(conn.execute(SQL.fence_epoch.text).fetchone()[0]))

    async def fence(self) -> FenceRecord:
        return _ROWS.fence(await self._run(lambda conn: conn.execute(SQL.fence.text).fetchone()))

    async def raise_fence(self, epoch: int, holder: str) -> bool:
        def raise_(conn: sqlite3.Connection) -> bool:
            # The time is read under the write lock, so it orders with the fenced writes.
            stmt = SQL.raise_fence.bind(epoch=epoch, holder=holder, now=_now())
            return conn.execute(*stmt).rowcount == 1

        return await self._transaction(raise_)

    async def record_cluster_view(
        self, epoch: int, holder: str, states: list[tuple[str, str]]
    ) -> bool:
        check_cluster_view(epoch, states)
        record_row = SQL.record_cluster_view

        def record(conn: sqlite3.Connection) -> bool:
            if not _fence_holds(conn, epoch):
                return False
            now = _now()
            conn.executemany(
                record_row.text,
                [
                    record_row.args(
                        node_id=node_id, state=state, epoch=epoch, holder=holder, now=now
                    )
                    for node_id, state in states
                ],
            )
            return True

        return await self._transaction(record)

    async def cluster_view(self) -> list[NodeStateRecord]:
        rows = await self._run(lambda conn: conn.execute(SQL.cluster_view.text).fetchall())
        return [_ROWS.node_state(row) for row in rows]

    # configuration

    async def put_config(self, key: str, value: JSON) -> None:
        stmt = SQL.put_config.bind(key=key, value=_dump(value), now=_now())
        await self._transaction(lambda conn: conn.execute(*stmt))

    async def get_config(self, key: str) -> JSON | None:
        stmt = SQL.get_config.bind(key=key)
        row = await self._run(lambda conn: conn.execute(*stmt).fetchone())
        return None if row is None else _load(row["value"])
