"""The PostgreSQL backend: the shared database of a multi-node mesh, through asyncpg.

asyncpg lives on asyncio, so every operation is one asyncio coroutine (acquire a pooled
connection, run the statements, release) entered from trio through ``brio.aio.call``: one
crossing per operation, and a trio cancellation cancels the asyncio task, which rolls the
transaction back and releases the connection. The store therefore only works inside
``brio.aio.open_loop()``. The statements are ``brio.store.sql``'s, shared with SQLite.

Timestamps come from the database clock (``now()``), the one clock every node shares. JSON
columns are ``jsonb`` with a json.dumps/json.loads codec installed on each pooled connection.
``claim_task`` locks its candidate row with ``FOR UPDATE SKIP LOCKED`` so that concurrent
claimers on different nodes each take a different task without waiting on one another.

The fence row is the other lock: ``raise_fence`` and every fenced write (``record_cluster_view``)
take it with ``SELECT ... FOR UPDATE`` first, so they run one after the other, and their
timestamps are ``clock_timestamp()`` read after the lock (``now()`` is when the transaction
began, which may be before it waited), so that they order as the writes did.

``create_task`` and ``finish_task``, the two writes of every task, go through a
``Coalescer`` (brio.store.coalesce): calls that arrive while a batch is under way go together
as the next batch, one crossing and one statement (``insert_submits``, ``finish_tasks``) for
all of them; if that statement fails, each runs alone, so that each caller gets its own answer.

Placement's own writes (``assign_tasks``, ``claim_assigned``) promise nobody anything, so they
go through a second, small pool whose sessions run with ``synchronous_commit = off``: their
commits do not wait for the WAL flush. As with SQLite's NORMAL commits, a database crash may
lose the last of them, which leaves the task queued or assigned as it was, and it runs (again)
after the restart; the WAL is written in order, so the next synchronous commit (a result, a
submit) flushes them too, and a crash never keeps a later commit without the earlier ones.
The 202 of a submit and a task's result still wait for the flush. ``max_connections`` counts
both pools.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import outcome
import trio

from brio import aio
from brio.core.tasks import TaskStatus
from brio.core.witness import Request as WitnessRequest
from brio.store import schema, witness
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
    redact_url,
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
from brio.store.coalesce import Coalescer
from brio.store.sql import POSTGRES_SQL as SQL
from brio.store.witness import WitnessAnswer

T = TypeVar("T")
Op = TypeVar("Op")
R = TypeVar("R")
Connection = Any  # asyncpg.Connection; asyncpg ships no type hints

# What asyncpg raises when the server or the network fails (and for a malformed URL).
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _as_is(value: Any) -> Any:
    return value


# asyncpg hands out timestamps as datetimes and jsonb decoded (by _init_connection's codec).
_ROWS = RowDecoder(ts=_as_is, json=_as_is)


def _opt_task(row: Any) -> TaskRecord | None:
    return None if row is None else _ROWS.task(row)


async def _session_exists(conn: Connection, session_id: str) -> bool:
    sql, args = SQL.session_exists.bind(id=session_id)
    return await conn.fetchval(sql, *args) is not None


async def _insert_messages(
    conn: Connection, session_id: str, messages: list[tuple[str, str]], task_id: str | None
) -> list[MessageRecord]:
    # One INSERT per message, in order, so that ids follow the order given.
    insert = SQL.insert_message
    records = [
        _ROWS.message(
            await conn.fetchrow(
                insert.text,
                *insert.args(session_id=session_id, role=role, content=content, task_id=task_id),
            )
        )
        for role, content in messages
    ]
    sql, args = SQL.touch_session.bind(id=session_id)
    await conn.execute(sql, *args)
    return records


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg has no type hints
    """A pooled connection whose release costs no round trip.

    asyncpg resets every connection it takes back with ``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL;``, one round trip per operation. The store leaves no
    session state to reset: it sets no parameters, listens to nothing, holds no session
    advisory lock (the migration's is a transaction lock) and opens cursors only inside
    transactions. asyncpg still rolls back a transaction left open, whatever this returns.
    """

    def get_reset_query(self) -> str:
        return ""


#: The first half of the two-key advisory locks a batch takes on its idempotency keys (the
#: migration's one-key lock is another key space).
KEY_LOCK_SPACE = 0x6B657973

#: Connections of ``max_connections`` kept for placement's writes (none with a pool of 1).
PLACEMENT_CONNECTIONS = 2
#: Their sessions' settings (the name shows them in ``pg_stat_activity``).
PLACEMENT_SETTINGS = {"synchronous_commit": "off", "application_name": "brio placement"}


async def _create_pool(
    url: str, max_size: int, connect_timeout: float, server_settings: dict[str, str] | None = None
) -> Any:
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=connect_timeout,
        init=_init_connection,
        connection_class=_Connection,
        server_settings=server_settings,
        # No idle timer: asyncpg would cancel and set one (300 s) at every release, one
        # object per statement kept in the loop's heap until it fell due.
        max_inactive_connection_lifetime=0,
    )


async def _create_pools(url: str, max_connections: int, connect_timeout: float) -> tuple[Any, Any]:
    """The pool for everything, and the one for placement's writes (module docstring); with
    ``max_connections`` 1 both are the same pool."""
    placement = min(PLACEMENT_CONNECTIONS, max_connections - 1)
    pool = await _create_pool(url, max_connections - placement, connect_timeout)
    if placement == 0:
        return pool, pool
    try:
        relaxed = await _create_pool(url, placement, connect_timeout, PLACEMENT_SETTINGS)
    except BaseException:
        await pool.close()
        raise
    return pool, relaxed


async def _migrate(conn: Connection) -> None:
    # Held until the transaction ends: a second starter waits here, then finds nothing to do.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", schema.ADVISORY_LOCK_KEY)
    await conn.execute(schema.render(schema.MIGRATIONS_TABLE, "postgresql"))
    applied = [row["version"] for row in await conn.fetch(SQL.applied_migrations.text)]
    record = SQL.record_migration
    for migration in schema.pending(applied):
        for statement in migration.render("postgresql"):
            await conn.execute(statement)
        args = record.args(version=migration.version, description=migration.description)
        await conn.execute(record.text, *args)


def _store_error(exc: BaseException) -> StoreError:
    """A database or network failure as the store reports it, the cause kept."""
    failed = StoreError(f"postgresql: {exc}")
    failed.__cause__ = exc
    return failed


async def _captured(answer: Awaitable[T]) -> outcome.Outcome[T]:
    """``answer``'s value, or its error as ``PostgresStore._call`` would raise it."""
    try:
        return outcome.Value(await answer)
    except _DB_ERRORS as exc:
        return outcome.Error(_store_error(exc))
    except Exception as exc:
        return outcome.Error(exc)


@dataclass(frozen=True, slots=True)
class _Submit:
    new: NewTask
    placement: Placement | None


@dataclass(frozen=True, slots=True)
class _Finish:
    task_id: str
    attempt: int
    status: TaskStatus
    result: JSON | None
    error: str | None


async def _submit_one(conn: Connection, submit: _Submit) -> tuple[TaskRecord, bool]:
    new, placement = submit.new, submit.placement
    insert_sql, insert_args = SQL.insert_task.bind(
        id=new_id(),
        agent=new.agent,
        prompt=new.prompt,
        input=task_input(new.input),
        session_id=new.session_id,
        key=new.idempotency_key,
        priority=new.priority,
        target_node=new.node_id,
        epoch=placement.epoch if placement else None,
        node_id=placement.node_id if placement else None,
    )
    # One statement, committed on its own. A used key makes the INSERT do nothing (ON CONFLICT
    # waits for a writer of that key still in its transaction), before the session's foreign
    # key is checked: the key answers first, as on SQLite.
    try:
        row = await conn.fetchrow(insert_sql, *insert_args)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"session {new.session_id!r} does not exist") from None
    if row is not None:
        return _ROWS.task(row), True
    key_sql, key_args = SQL.task_by_key.bind(key=new.idempotency_key)
    return _ROWS.task(await conn.fetchrow(key_sql, *key_args)), False


async def _submit_together(
    conn: Connection, batch: Sequence[_Submit]
) -> list[tuple[TaskRecord, bool]]:
    """``batch`` in one INSERT per fence epoch among its placements (one, in practice); the
    tasks whose keys were in use, read back. Raises if any row fails (a session that does not
    exist): the caller then runs each alone, to give each its own answer."""
    assert SQL.insert_submits is not None
    ids = [new_id() for _ in batch]
    groups: dict[int | None, list[int]] = {}
    for i, submit in enumerate(batch):
        groups.setdefault(submit.placement.epoch if submit.placement else None, []).append(i)
    answers: dict[str, tuple[TaskRecord, bool]] = {}
    for epoch, members in groups.items():
        news = [batch[i].new for i in members]
        sql, args = SQL.insert_submits.bind(
            epoch=epoch,
            ids=[ids[i] for i in members],
            agents=[n.agent for n in news],
            prompts=[n.prompt for n in news],
            inputs=[json.dumps(task_input(n.input)) for n in news],
            session_ids=[n.session_id for n in news],
            keys=[n.idempotency_key for n in news],
            priorities=[n.priority for n in news],
            target_nodes=[n.node_id for n in news],
            node_ids=[p.node_id if (p := batch[i].placement) else None for i in members],
        )
        for row in await conn.fetch(sql, *args):
            task = _ROWS.task(row)
            answers[task.id] = (task, True)
    lost = [batch[i].new.idempotency_key for i, task_id in enumerate(ids) if task_id not in answers]
    existing: dict[str | None, TaskRecord] = {}
    if lost:
        sql, args = SQL.tasks_by_keys.bind(keys=lost)
        existing = {row["idempotency_key"]: _ROWS.task(row) for row in await conn.fetch(sql, *args)}
    results: list[tuple[TaskRecord, bool]] = []
    for i, task_id in enumerate(ids):
        key = batch[i].new.idempotency_key
        if task_id in answers:
            results.append(answers[task_id])
        elif key in existing:
            results.append((existing[key], False))
        else:  # no row and no task of its key: cannot happen; each alone will say
            raise StoreError(f"a coalesced insert of key {key!r} left no task")
    return results


async def _finish_one(conn: Connection, finish: _Finish) -> TaskRecord | None:
    sql, args = SQL.finish_task[finish.status].bind(
        id=finish.task_id, attempt=finish.attempt, result=finish.result, error=finish.error
    )
    return _opt_task(await conn.fetchrow(sql, *args))


async def _finish_together(conn: Connection, batch: Sequence[_Finish]) -> list[TaskRecord | None]:
    """``batch`` in one UPDATE per terminal state among it. A task answers once: a second
    finish of the same attempt in the batch gets no row, as it would after the first."""
    rows: dict[tuple[str, int], TaskRecord] = {}
    for status in dict.fromkeys(f.status for f in batch):
        group = [f for f in batch if f.status is status]
        sql, args = SQL.finish_tasks[status].bind(
            ids=[f.task_id for f in group],
            attempts=[f.attempt for f in group],
            results=[None if f.result is None else json.dumps(f.result) for f in group],
            errors=[f.error for f in group],
        )
        for row in await conn.fetch(sql, *args):
            task = _ROWS.task(row)
            rows[(task.id, task.attempt)] = task
    return [rows.pop((f.task_id, f.attempt), None) for f in batch]


class PostgresStore:
    """A ``Store`` on a PostgreSQL database, shared by every node of the mesh."""

    backend = "postgresql"

    def __init__(self, pool: Any, placement_pool: Any | None = None) -> None:
        self._pool = pool
        self._placement_pool = pool if placement_pool is None else placement_pool
        self.batches_split = 0  # coalesced batches that failed together and went one by one
        self._submits: Coalescer[_Submit, tuple[TaskRecord, bool]] = Coalescer(
            self._submit_batch, what="submits"
        )
        self._finishes: Coalescer[_Finish, TaskRecord | None] = Coalescer(
            self._finish_batch, what="finishes"
        )

    @classmethod
    async def open(
        cls, url: str, *, max_connections: int = 10, connect_timeout: float = 10.0
    ) -> PostgresStore:
        """Connect a pool of at most ``max_connections`` and migrate the database."""
        if not aio.loop_is_open():
            raise StoreError(
                f"the PostgreSQL store ({redact_url(url)}) needs brio.aio.open_loop() around it"
            )
        try:
            pools = await aio.call(_create_pools, url, max_connections, connect_timeout)
        except (*_DB_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot connect to {redact_url(url)}: {exc}") from exc
        store = cls(*pools)
        try:
            await store._transaction(_migrate)
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.close()
            raise
        return store

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await aio.call(fn)
        except _DB_ERRORS as exc:
            raise _store_error(exc) from exc

    async def _read(self, fn: Callable[[Connection], Awaitable[T]], *, pool: Any = None) -> T:
        """``fn`` on a pooled connection (of ``pool``, else the main one) outside any
        transaction: a read, or a write that is one statement, which commits on its own (no
        BEGIN and COMMIT round trips)."""

        async def read() -> T:
            async with (pool or self._pool).acquire() as conn:
                return await fn(conn)

        return await self._call(read)

    async def _placement_write(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``fn``, one statement, on the placement pool: committed without waiting for the WAL
        flush (the module's docstring says why that is safe)."""
        return await self._read(fn, pool=self._placement_pool)

    async def _transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``fn`` in one transaction: for writes of more than one statement."""

        async def transaction() -> T:
            async with self._pool.acquire() as conn, conn.transaction():
                return await fn(conn)

        return await self._call(transaction)

    async def close(self) -> None:
        try:
            await self._call(self._pool.close)
        finally:
            if self._placement_pool is not self._pool:
                await self._call(self._placement_pool.close)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.fetchval(SQL.ping.text))

    async def schema_version(self) -> int:
        return int(await self._read(lambda conn: conn.fetchval(SQL.schema_version.text)))

    # tasks

    async def create_task(
        self, new: NewTask, placement: Placement | None = None
    ) -> tuple[TaskRecord, bool]:
        return await self._submits(_Submit(new, placement))

    async def _submit_batch(
        self, batch: Sequence[_Submit]
    ) -> list[outcome.Outcome[tuple[TaskRecord, bool]]]:
        return await self._together(batch, _submit_together, _submit_one)

    async def _finish_batch(
        self, batch: Sequence[_Finish]
    ) -> list[outcome.Outcome[TaskRecord | None]]:
        return await self._together(batch, _finish_together, _finish_one)

    async def _together(
        self,
        batch: Sequence[Op],
        together: Callable[[Connection, Sequence[Op]], Awaitable[list[R]]],
        alone: Callable[[Connection, Op], Awaitable[R]],
    ) -> list[outcome.Outcome[R]]:
        """A coalesced batch (brio.store.coalesce) on one pooled connection, in one crossing:
        ``together`` for all of it, one statement each committed on its own; if that fails
        (one bad row fails its statement), ``alone`` for each, so that each caller gets its
        own answer. A batch of one goes alone."""

        async def run() -> list[outcome.Outcome[R]]:
            async with self._pool.acquire() as conn:
                if len(batch) > 1:
                    try:
                        return [outcome.Value(answer) for answer in await together(conn, batch)]
                    except (*_DB_ERRORS, StoreError):
                        self.batches_split += 1
                return [await _captured(alone(conn, op)) for op in batch]

        return await self._call(run)

    async def create_tasks(self, batch: Sequence[NewTask]) -> list[Created]:
        plan = TaskBatch.of(batch)
        if not plan.items:
            return []
        sessions_sql, sessions_args = SQL.sessions_existing.bind(ids=plan.session_ids)

        async def by_keys(conn: Connection, keys: list[str]) -> dict[str, TaskRecord]:
            sql, args = SQL.tasks_by_keys.bind(keys=keys)
            return {row["idempotency_key"]: _ROWS.task(row) for row in await conn.fetch(sql, *args)}

        async def create(conn: Connection) -> list[Created]:
            if len(plan.keys) > 1:
                assert SQL.lock_keys is not None
                sql, args = SQL.lock_keys.bind(space=KEY_LOCK_SPACE, keys=plan.keys)
                await conn.fetchval(sql, *args)
            existing = await by_keys(conn, plan.keys) if plan.keys else {}
            sessions: set[str] = set()
            if plan.session_ids:
                sessions = {row["id"] for row in await conn.fetch(sessions_sql, *sessions_args)}
            inserts = plan.plan(existing, sessions)
            inserted: dict[str, TaskRecord] = {}
            if inserts:
                sql, args = SQL.insert_tasks.bind(
                    ids=[task_id for task_id, _ in inserts],
                    agents=[n.agent for _, n in inserts],
                    prompts=[n.prompt for _, n in inserts],
                    inputs=[json.dumps(task_input(n.input)) for _, n in inserts],
                    session_ids=[n.session_id for _, n in inserts],
                    keys=[n.idempotency_key for _, n in inserts],
                    priorities=[n.priority for _, n in inserts],
                    target_nodes=[n.node_id for _, n in inserts],
                )
                inserted = {row["id"]: _ROWS.task(row) for row in await conn.fetch(sql, *args)}
            lost = plan.lost_keys(inserted)  # committed by a concurrent writer meanwhile
            return plan.outcomes(inserted, await by_keys(conn, lost) if lost else {})

        return await self._transaction(create)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        sql, args = SQL.task_by_id.bind(id=task_id)
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))

    async def list_tasks(
        self, filt: TaskFilter, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        sql, args = SQL.task_page(filt, limit, cursor)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        tasks = [_ROWS.task(row) for row in rows[:limit]]
        more = len(rows) > limit
        return TaskPage(tasks=tasks, next_cursor=encode_cursor(tasks[-1].seq) if more else None)

    async def claim_task(self, node_id: str, agents: list[str]) -> TaskRecord | None:
        if not agents:
            return None
        sql, args = SQL.claim_task.bind(node_id=node_id, agents=agents)
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))

    async def mark_running(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql, args = SQL.mark_running.bind(id=task_id, attempt=attempt)
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))

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
        # one statement either way (the history with it), committed on its own; without
        # history, coalesced with the other finishes under way
        if messages:
            sql, args = SQL.finish_with_messages[status].bind(
                id=task_id,
                attempt=attempt,
                result=result,
                error=error,
                roles=[role for role, _ in messages],
                contents=[content for _, content in messages],
            )
            return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))
        return await self._finishes(_Finish(task_id, attempt, status, result, error))

    async def cancel_task(self, task_id: str) -> TaskRecord | None:
        sql, args = SQL.cancel_task.bind(id=task_id)
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))

    async def requeue_task(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql, args = SQL.requeue_task.bind(id=task_id, attempt=attempt)
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, *args)))

    async def requeue_node_tasks(self, node_id: str) -> list[TaskRecord]:
        sql, args = SQL.requeue_node_tasks.bind(node_id=node_id)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        return sorted((_ROWS.task(row) for row in rows), key=lambda task: task.seq)

    async def count_tasks(self, status: TaskStatus) -> int:
        sql, args = SQL.count_tasks.bind(status=status.value)
        return int(await self._read(lambda conn: conn.fetchval(sql, *args)))

    # the scheduler

    async def queued_tasks(self, limit: int) -> list[QueuedRecord]:
        sql, args = SQL.queued_tasks.bind(limit=limit)
        return [queued_record(row) for row in await self._read(lambda c: c.fetch(sql, *args))]

    async def queued_tasks_after(
        self, after: tuple[int, int], limit: int, agents: Sequence[str], nodes: Sequence[str]
    ) -> list[QueuedRecord]:
        sql, args = SQL.queued_tasks_after.bind(
            priority=after[0], seq=after[1], agents=list(agents), nodes=list(nodes), limit=limit
        )
        return [queued_record(row) for row in await self._read(lambda c: c.fetch(sql, *args))]

    async def node_tasks(self) -> dict[str, list[str]]:
        rows = await self._read(lambda conn: conn.fetch(SQL.node_tasks.text))
        return by_node(rows)

    async def assign_tasks(self, epoch: int, batch: list[Assignment]) -> list[TaskRecord]:
        if not batch:
            return []
        sql, args = SQL.assign_tasks.bind(
            epoch=epoch,
            ids=[a.task_id for a in batch],
            attempts=[a.attempt for a in batch],
            nodes=[a.node_id for a in batch],
        )
        # one statement, committed on its own (see the fence in brio.store.sql)
        rows = await self._placement_write(lambda c: c.fetch(sql, *args))
        return [_ROWS.task(row) for row in rows]

    async def requeue_nodes_tasks(self, epoch: int, node_ids: list[str]) -> list[TaskRecord]:
        if not node_ids:
            return []
        sql, args = SQL.requeue_nodes_tasks.bind(epoch=epoch, nodes=node_ids)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        return sorted((_ROWS.task(row) for row in rows), key=lambda task: task.seq)

    async def running_on_node(self, node_id: str) -> list[TaskRecord]:
        sql, args = SQL.running_on_node.bind(node_id=node_id)
        return [_ROWS.task(row) for row in await self._read(lambda c: c.fetch(sql, *args))]

    async def claim_assigned(self, node_id: str, agents: list[str], limit: int) -> list[TaskRecord]:
        if not agents or limit <= 0:
            return []
        sql, args = SQL.claim_assigned.bind(node_id=node_id, agents=agents, limit=limit)
        rows = await self._placement_write(lambda conn: conn.fetch(sql, *args))
        return sorted((_ROWS.task(row) for row in rows), key=lambda t: (-t.priority, t.seq))

    # sessions and conversation history

    async def create_session(
        self, title: str | None = None, metadata: JSON = None
    ) -> SessionRecord:
        metadata = {} if metadata is None else metadata
        sql, args = SQL.insert_session.bind(id=new_id(), title=title, metadata=metadata)
        return _ROWS.session(await self._read(lambda conn: conn.fetchrow(sql, *args)))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        sql, args = SQL.session_by_id.bind(id=session_id)
        row = await self._read(lambda conn: conn.fetchrow(sql, *args))
        return None if row is None else _ROWS.session(row)

    async def list_sessions(self, limit: int = 50, offset: int = 0) -> list[SessionRecord]:
        check_page(limit, offset)
        sql, args = SQL.list_sessions.bind(limit=limit, offset=offset)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        return [_ROWS.session(row) for row in rows]

    async def append_messages(
        self, session_id: str, messages: list[tuple[str, str]], task_id: str | None = None
    ) -> list[MessageRecord]:
        check_messages(messages)

        async def append(conn: Connection) -> list[MessageRecord]:
            if not await _session_exists(conn, session_id):
                raise NotFound(f"session {session_id!r} does not exist")
            return await _insert_messages(conn, session_id, messages, task_id)

        return await self._transaction(append)

    async def list_messages(self, session_id: str, limit: int | None = None) -> list[MessageRecord]:
        if limit is not None:
            check_limit(limit)
        bound = SQL.dialect.no_limit if limit is None else limit
        sql, args = SQL.list_messages.bind(session_id=session_id, limit=bound)
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        return [_ROWS.message(row) for row in reversed(rows)]

    # nodes and agents

    async def upsert_node(self, node: NodeRecord) -> None:
        if node.last_seen.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware, not {node.last_seen!r}")
        sql, args = SQL.upsert_node.bind(
            id=node.id,
            role=node.role,
            address=node.address,
            version=node.version,
            status=node.status,
            last_seen=node.last_seen,
        )
        await self._read(lambda conn: conn.execute(sql, *args))

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._read(lambda conn: conn.fetch(SQL.list_nodes.text))
        return [_ROWS.node(row) for row in rows]

    async def upsert_agents(self, node_id: str, agents: list[tuple[str, str, str]]) -> None:
        delete_sql, delete_args = SQL.delete_agents.bind(node_id=node_id)
        insert = SQL.insert_agent
        rows = [
            insert.args(node_id=node_id, name=name, kind=kind, description=description)
            for name, kind, description in agents
        ]

        async def replace(conn: Connection) -> None:
            await conn.execute(delete_sql, *delete_args)
            await conn.executemany(insert.text, rows)

        await self._transaction(replace)

    async def list_agents(self) -> list[AgentRecord]:
        rows = await self._read(lambda conn: conn.fetch(SQL.list_agents.text))
        return [_ROWS.agent(row) for row in rows]

    # the fence: single statements, each committed on its own (brio.store.sql says why)

    async def fence_epoch(self) -> int:
        return int(await self._read(lambda conn: conn.fetchval(SQL.fence_epoch.text)))

    async def fence(self) -> FenceRecord:
        return _ROWS.fence(await self._read(lambda conn: conn.fetchrow(SQL.fence.text)))

    async def raise_fence(self, epoch: int, holder: str) -> bool:
        sql, args = SQL.raise_fence.bind(epoch=epoch, holder=holder)
        return await self._read(lambda conn: conn.fetchrow(sql, *args)) is not None

    async def record_cluster_view(
        self, epoch: int, holder: str, states: list[tuple[str, str]]
    ) -> bool:
        check_cluster_view(epoch, states)
        sql, args = SQL.record_cluster_view.bind(
            epoch=epoch,
            holder=holder,
            nodes=[node_id for node_id, _ in states],
            states=[state for _, state in states],
        )
        return bool(await self._read(lambda conn: conn.fetchval(sql, *args)))

    async def cluster_view(self) -> list[NodeStateRecord]:
        rows = await self._read(lambda conn: conn.fetch(SQL.cluster_view.text))
        return [_ROWS.node_state(row) for row in rows]

    # configuration

    async def put_config(self, key: str, value: JSON) -> None:
        sql, args = SQL.put_config.bind(key=key, value=value)
        await self._read(lambda conn: conn.execute(sql, *args))

    async def get_config(self, key: str) -> JSON | None:
        sql, args = SQL.get_config.bind(key=key)
        return await self._read(lambda conn: conn.fetchval(sql, *args))

    # the witness voter of the coordinator lease (brio.store.witness): one statement per
    # request, committed on its own

    async def ask_witness(self, request: WitnessRequest, lease_duration: float) -> WitnessAnswer:
        sql, args = witness.bind(request, lease_duration)
        row = await self._read(lambda conn: conn.fetchrow(sql, *args))
        return witness.answer(request, row)
