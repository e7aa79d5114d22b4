"""The PostgreSQL backend: the shared database of a multi-node mesh, through asyncpg.

asyncpg lives on asyncio, so every operation is one asyncio coroutine (acquire a pooled
connection, run the statements, release) entered from trio through ``brio.aio.call``: one
crossing per operation, and a trio cancellation cancels the asyncio task, which rolls the
transaction back and releases the connection. The store therefore only works inside
``brio.aio.open_loop()``.

Timestamps come from the database clock (``now()``), the one clock every node shares. JSON
columns are ``jsonb`` with a json.dumps/json.loads codec installed on each pooled connection.
``claim_task`` locks its candidate row with ``FOR UPDATE SKIP LOCKED`` so that concurrent
claimers on different nodes each take a different task without waiting on one another.

The fence row is the other lock: ``raise_fence`` and every fenced write (``record_cluster_view``)
take it with ``SELECT ... FOR UPDATE`` first, so they run one after the other, and their
timestamps are ``clock_timestamp()`` read after the lock (``now()`` is when the transaction
began, which may be before it waited), so that they order as the writes did.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import trio

from brio import aio
from brio.core.tasks import TaskStatus, predecessors
from brio.store import schema
from brio.store._common import (
    TASK_COLUMNS,
    RowDecoder,
    check_cluster_view,
    check_limit,
    check_messages,
    check_page,
    check_terminal,
    encode_cursor,
    new_id,
    redact_url,
    sql_in,
    task_input,
    task_page_query,
)
from brio.store.base import (
    JSON,
    AgentRecord,
    FenceRecord,
    MessageRecord,
    NewTask,
    NodeRecord,
    NodeStateRecord,
    NotFound,
    SessionRecord,
    StoreError,
    TaskFilter,
    TaskPage,
    TaskRecord,
)

T = TypeVar("T")
Connection = Any  # asyncpg.Connection; asyncpg ships no type hints

# Taken by raise_fence and by every fenced write before anything else; answers the epoch.

# What asyncpg raises when the server or the network fails (and for a malformed URL).
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _as_is(value: Any) -> Any:
    return value


# asyncpg hands out timestamps as datetimes and jsonb decoded (by _init_connection's codec).
_ROWS = RowDecoder(ts=_as_is, json=_as_is)


def _opt_task(row: Any) -> TaskRecord | None:
    return None if row is None else _ROWS.task(row)


async def _session_exists(conn: Connection, session_id: str) -> bool:
    return await conn.fetchval("SELECT 1 FROM sessions WHERE id = $1", session_id) is not None


async def _insert_messages(
    conn: Connection, session_id: str, messages: list[tuple[str, str]], task_id: str | None
) -> list[MessageRecord]:
    # One INSERT per message, in order, so that ids follow the order given.
    records = [
        _ROWS.message(
            await conn.fetchrow(
                "INSERT INTO messages (session_id, role, content, task_id, created_at)"
                " VALUES ($1, $2, $3, $4, now()) RETURNING *",
                session_id,
                role,
                content,
                task_id,
            )
        )
        for role, content in messages
    ]
    await conn.execute("UPDATE sessions SET updated_at = now() WHERE id = $1", session_id)
    return records


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _create_pool(url: str, max_connections: int, connect_timeout: float) -> Any:
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_connections,
        timeout=connect_timeout,
        init=_init_connection,
    )


async def _migrate(conn: Connection) -> None:
    # Held until the transaction ends: a second starter waits here, then finds nothing to do.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", schema.ADVISORY_LOCK_KEY)
    await conn.execute(schema.render(schema.MIGRATIONS_TABLE, "postgresql"))
    applied = [row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")]
    for migration in schema.pending(applied):
        for statement in migration.render("postgresql"):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO schema_migrations (version, description, applied_at)"
            " VALUES ($1, $2, now())",
            migration.version,
            migration.description,
        )


class PostgresStore:
    """A ``Store`` on a PostgreSQL database, shared by every node of the mesh."""

    backend = "postgresql"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

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
            pool = await aio.call(_create_pool, url, max_connections, connect_timeout)
        except (*_DB_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot connect to {redact_url(url)}: {exc}") from exc
        store = cls(pool)
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
            raise StoreError(f"postgresql: {exc}") from exc

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async def read() -> T:
            async with self._pool.acquire() as conn:
                return await fn(conn)

        return await self._call(read)

    async def _transaction(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async def transaction() -> T:
            async with self._pool.acquire() as conn, conn.transaction():
                return await fn(conn)

        return await self._call(transaction)

    async def close(self) -> None:
        await self._call(self._pool.close)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.fetchval("SELECT 1"))

    async def schema_version(self) -> int:
        sql = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        return int(await self._read(lambda conn: conn.fetchval(sql)))

    # tasks

    async def create_task(self, new: NewTask) -> tuple[TaskRecord, bool]:
        by_key = f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1"

        async def create(conn: Connection) -> tuple[TaskRecord, bool]:
            if new.idempotency_key is not None:
                row = await conn.fetchrow(by_key, new.idempotency_key)
                if row is not None:
                    return _ROWS.task(row), False
            if new.session_id is not None and not await _session_exists(conn, new.session_id):
                raise NotFound(f"session {new.session_id!r} does not exist")
            row = await conn.fetchrow(
                "INSERT INTO tasks (id, agent, prompt, input, session_id, idempotency_key,"
                " priority, status, target_node, attempt, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, 1, now(), now())"
                f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}",
                new_id(),
                new.agent,
                new.prompt,
                task_input(new.input),
                new.session_id,
                new.idempotency_key,
                new.priority,
                new.node_id,
            )
            if row is None:  # a concurrent create with the same key committed first
                return _ROWS.task(await conn.fetchrow(by_key, new.idempotency_key)), False
            return _ROWS.task(row), True

        return await self._transaction(create)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
        return _opt_task(await self._read(lambda conn: conn.fetchrow(sql, task_id)))

    async def list_tasks(
        self, filt: TaskFilter, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        sql, args = task_page_query(filt, limit, cursor, lambda n: f"${n}")
        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        tasks = [_ROWS.task(row) for row in rows[:limit]]
        more = len(rows) > limit
        return TaskPage(tasks=tasks, next_cursor=encode_cursor(tasks[-1].seq) if more else None)

    async def claim_task(self, node_id: str, agents: list[str]) -> TaskRecord | None:
        if not agents:
            return None
        sql = (
            "UPDATE tasks SET status = 'assigned', node_id = $1, updated_at = now()"
            " WHERE seq = (SELECT seq FROM tasks WHERE status = 'queued'"
            " AND agent = ANY($2::text[]) AND (target_node IS NULL OR target_node = $1)"
            " ORDER BY priority DESC, seq ASC LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {TASK_COLUMNS}"
        )
        return _opt_task(await self._transaction(lambda conn: conn.fetchrow(sql, node_id, agents)))

    async def mark_running(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'running', started_at = now(), updated_at = now()"
            f" WHERE id = $1 AND attempt = $2"
            f" AND status IN {sql_in(predecessors(TaskStatus.RUNNING))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        return _opt_task(await self._transaction(lambda conn: conn.fetchrow(sql, task_id, attempt)))

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
        sql = (
            "UPDATE tasks SET status = $3, result = $4, error = $5, finished_at = now(),"
            f" updated_at = now() WHERE id = $1 AND attempt = $2"
            f" AND status IN {sql_in(predecessors(status))} RETURNING {TASK_COLUMNS}"
        )

        async def finish(conn: Connection) -> TaskRecord | None:
            task = _opt_task(
                await conn.fetchrow(sql, task_id, attempt, status.value, result, error)
            )
            if task is not None and task.session_id is not None and messages:
                await _insert_messages(conn, task.session_id, messages, task.id)
            return task

        return await self._transaction(finish)

    async def cancel_task(self, task_id: str) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now()"
            f" WHERE id = $1 AND status IN {sql_in(predecessors(TaskStatus.CANCELLED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        return _opt_task(await self._transaction(lambda conn: conn.fetchrow(sql, task_id)))

    async def requeue_task(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
            " started_at = NULL, updated_at = now() WHERE id = $1 AND attempt = $2"
            f" AND status IN {sql_in(predecessors(TaskStatus.QUEUED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        return _opt_task(await self._transaction(lambda conn: conn.fetchrow(sql, task_id, attempt)))

    async def requeue_node_tasks(self, node_id: str) -> list[TaskRecord]:
        sql = (
            "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
            " started_at = NULL, updated_at = now() WHERE node_id = $1"
            f" AND status IN {sql_in(predecessors(TaskStatus.QUEUED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        rows = await self._transaction(lambda conn: conn.fetch(sql, node_id))
        return sorted((_ROWS.task(row) for row in rows), key=lambda task: task.seq)

    async def count_tasks(self, status: TaskStatus) -> int:
        sql = "SELECT COUNT(*) FROM tasks WHERE status = $1"
        return int(await self._read(lambda conn: conn.fetchval(sql, status.value)))

    # sessions and conversation history

    async def create_session(
        self, title: str | None = None, metadata: JSON = None
    ) -> SessionRecord:
        sql = (
            "INSERT INTO sessions (id, title, metadata, created_at, updated_at)"
            " VALUES ($1, $2, $3, now(), now()) RETURNING *"
        )
        args = (new_id(), title, {} if metadata is None else metadata)
        return _ROWS.session(await self._transaction(lambda conn: conn.fetchrow(sql, *args)))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        sql = "SELECT * FROM sessions WHERE id = $1"
        row = await self._read(lambda conn: conn.fetchrow(sql, session_id))
        return None if row is None else _ROWS.session(row)

    async def list_sessions(self, limit: int = 50, offset: int = 0) -> list[SessionRecord]:
        check_page(limit, offset)
        sql = "SELECT * FROM sessions ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        rows = await self._read(lambda conn: conn.fetch(sql, limit, offset))
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
        # LIMIT NULL means no limit.
        sql = "SELECT * FROM messages WHERE session_id = $1 ORDER BY id DESC LIMIT $2"
        rows = await self._read(lambda conn: conn.fetch(sql, session_id, limit))
        return [_ROWS.message(row) for row in reversed(rows)]

    # nodes and agents

    async def upsert_node(self, node: NodeRecord) -> None:
        if node.last_seen.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware, not {node.last_seen!r}")
        sql = (
            "INSERT INTO nodes (id, role, address, version, status, last_seen)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET role = excluded.role,"
            " address = excluded.address, version = excluded.version,"
            " status = excluded.status, last_seen = excluded.last_seen"
        )
        args = (node.id, node.role, node.address, node.version, node.status, node.last_seen)
        await self._transaction(lambda conn: conn.execute(sql, *args))

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._read(lambda conn: conn.fetch("SELECT * FROM nodes ORDER BY id"))
        return [_ROWS.node(row) for row in rows]

    async def upsert_agents(self, node_id: str, agents: list[tuple[str, str, str]]) -> None:
        async def replace(conn: Connection) -> None:
            await conn.execute("DELETE FROM agents WHERE node_id = $1", node_id)
            await conn.executemany(
                "INSERT INTO agents (node_id, name, kind, description, updated_at)"
                " VALUES ($1, $2, $3, $4, now())",
                [(node_id, name, kind, description) for name, kind, description in agents],
            )

        await self._transaction(replace)

    async def list_agents(self) -> list[AgentRecord]:
        sql = "SELECT * FROM agents ORDER BY name, node_id"
        rows = await self._read(lambda conn: conn.fetch(sql))
        return [_ROWS.agent(row) for row in rows]

    # the fence

    async def fence_epoch(self) -> int:
        sql = "SELECT epoch FROM fence WHERE id = 1"
        return int(await self._read(lambda conn: conn.fetchval(sql)))

    async def fence(self) -> FenceRecord:
        sql = "SELECT epoch, holder, updated_at FROM fence WHERE id = 1"
        return _ROWS.fence(await self._read(lambda conn: conn.fetchrow(sql)))

    # The fence statements are single statements, committed on their own: a transaction that
    # spanned round trips would hold the fence row's lock while its process was paused
    # (SIGSTOP, a GC pause), and the next primary's raise would wait for it to wake.

    async def raise_fence(self, epoch: int, holder: str) -> bool:
        # Lock first, then compute the row: a plain UPDATE would evaluate clock_timestamp()
        # before waiting for a writer's FOR SHARE lock, and date the raise too early.
        sql = """
            WITH locked AS (SELECT id FROM fence WHERE id = 1 AND epoch < $1 FOR UPDATE)
            UPDATE fence SET epoch = $1, holder = $2, updated_at = clock_timestamp()
            FROM locked WHERE fence.id = locked.id RETURNING fence.epoch"""
        return await self._read(lambda conn: conn.fetchrow(sql, epoch, holder)) is not None

    async def record_cluster_view(
        self, epoch: int, holder: str, states: list[tuple[str, str]]
    ) -> bool:
        check_cluster_view(epoch, states)
        # FOR SHARE holds the fence row until this statement commits: a raise_fence that comes
        # after waits for these writes, and one that committed before is seen (the locked row
        # is re-read), so the condition fails and nothing is written.
        sql = """
            WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = $1 FOR SHARE),
            written AS (
                INSERT INTO cluster_view (node_id, state, epoch, holder, updated_at)
                SELECT s.node_id, s.state, $1, $4, clock_timestamp()
                FROM unnest($2::text[], $3::text[]) AS s (node_id, state) CROSS JOIN f
                ON CONFLICT (node_id) DO UPDATE
                SET state = excluded.state, epoch = excluded.epoch, holder = excluded.holder,
                    updated_at = excluded.updated_at
                RETURNING 1
            )
            SELECT count(*) FROM f"""
        nodes = [node_id for node_id, _ in states]
        values = [state for _, state in states]
        held = await self._read(lambda conn: conn.fetchval(sql, epoch, nodes, values, holder))
        return bool(held)

    async def cluster_view(self) -> list[NodeStateRecord]:
        # COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
        sql = 'SELECT * FROM cluster_view ORDER BY node_id COLLATE "C"'
        rows = await self._read(lambda conn: conn.fetch(sql))
        return [_ROWS.node_state(row) for row in rows]

    # configuration

    async def put_config(self, key: str, value: JSON) -> None:
        sql = (
            "INSERT INTO config (key, value, updated_at) VALUES ($1, $2, now())"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at"
        )
        await self._transaction(lambda conn: conn.execute(sql, key, value))

    async def get_config(self, key: str) -> JSON | None:
        sql = "SELECT value FROM config WHERE key = $1"
        return await self._read(lambda conn: conn.fetchval(sql, key))
