"""The SQLite backend: the embedded database of a single node (the quick start).

One ``sqlite3`` connection, used from trio's worker threads one call at a time under a
``trio.Lock``; a worker thread is never abandoned on cancellation, so a transaction always
finishes (commit or rollback) before the lock is released. Every write is one ``BEGIN
IMMEDIATE`` transaction, committed before the method returns: IMMEDIATE takes the write lock up
front, so two processes on one file (a node and a CLI, or two stores in a test) serialise
instead of failing half-way with SQLITE_BUSY.

The file runs in WAL mode (readers never block the writer) with ``synchronous = FULL``: the API
promises that a task is durable before it answers 202, and NORMAL may lose the last commits
on power loss. The price is one fsync of the WAL per commit, which a single node can afford.
Timestamps are fixed-width ISO 8601 text in UTC; JSON is text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import trio

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

BUSY_TIMEOUT = 10.0  # seconds another process may hold the write lock before we give up
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


def _one_task(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> TaskRecord | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else _ROWS.task(row)


def _session_exists(conn: sqlite3.Connection, session_id: str) -> bool:
    return conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None


def _insert_messages(
    conn: sqlite3.Connection,
    session_id: str,
    messages: list[tuple[str, str]],
    task_id: str | None,
) -> list[MessageRecord]:
    now = _now()
    records = [
        _ROWS.message(
            conn.execute(
                "INSERT INTO messages (session_id, role, content, task_id, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING *",
                (session_id, role, content, task_id, now),
            ).fetchone()
        )
        for role, content in messages
    ]
    conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))
    return records


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(schema.render(schema.MIGRATIONS_TABLE, "sqlite"))
    applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    for migration in schema.pending(applied):
        for statement in migration.render("sqlite"):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.description, _now()),
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


class SQLiteStore:
    """A ``Store`` on one SQLite file (or ``:memory:``)."""

    backend = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        """Open (creating parent directories) and migrate the database at ``path``."""
        try:
            conn = await trio.to_thread.run_sync(_connect, path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
        store = cls(conn)
        try:
            await store._transaction(_migrate)
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.close()
            raise
        return store

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def guarded() -> T:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite: {exc}") from exc

        async with self._lock:
            return await trio.to_thread.run_sync(guarded)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return await self._run(transaction)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            return int(row.fetchone()[0])

        return await self._run(read)

    # tasks

    async def create_task(self, new: NewTask) -> tuple[TaskRecord, bool]:
        def create(conn: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if new.idempotency_key is not None:
                existing = _one_task(
                    conn,
                    f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = ?",
                    (new.idempotency_key,),
                )
                if existing is not None:
                    return existing, False
            if new.session_id is not None and not _session_exists(conn, new.session_id):
                raise NotFound(f"session {new.session_id!r} does not exist")
            now = _now()
            row = conn.execute(
                "INSERT INTO tasks (id, agent, prompt, input, session_id, idempotency_key,"
                " priority, status, target_node, attempt, created_at, updated_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING {TASK_COLUMNS}",
                (
                    new_id(),
                    new.agent,
                    new.prompt,
                    json.dumps(task_input(new.input)),
                    new.session_id,
                    new.idempotency_key,
                    new.priority,
                    TaskStatus.QUEUED.value,
                    new.node_id,
                    now,
                    now,
                ),
            ).fetchone()
            return _ROWS.task(row), True

        return await self._transaction(create)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        sql = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"
        return await self._run(lambda conn: _one_task(conn, sql, (task_id,)))

    async def list_tasks(
        self, filt: TaskFilter, limit: int = 50, cursor: str | None = None
    ) -> TaskPage:
        sql, args = task_page_query(filt, limit, cursor, lambda n: "?")
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        tasks = [_ROWS.task(row) for row in rows[:limit]]
        more = len(rows) > limit
        return TaskPage(tasks=tasks, next_cursor=encode_cursor(tasks[-1].seq) if more else None)

    async def claim_task(self, node_id: str, agents: list[str]) -> TaskRecord | None:
        if not agents:
            return None
        marks = ", ".join("?" * len(agents))
        sql = (
            "UPDATE tasks SET status = 'assigned', node_id = ?, updated_at = ?"
            " WHERE seq = (SELECT seq FROM tasks WHERE status = 'queued'"
            f" AND agent IN ({marks}) AND (target_node IS NULL OR target_node = ?)"
            " ORDER BY priority DESC, seq ASC LIMIT 1)"
            f" RETURNING {TASK_COLUMNS}"
        )
        args = (node_id, _now(), *agents, node_id)
        return await self._transaction(lambda conn: _one_task(conn, sql, args))

    async def mark_running(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'running', started_at = ?, updated_at = ?"
            " WHERE id = ? AND attempt = ?"
            f" AND status IN {sql_in(predecessors(TaskStatus.RUNNING))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        now = _now()
        args = (now, now, task_id, attempt)
        return await self._transaction(lambda conn: _one_task(conn, sql, args))

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
            "UPDATE tasks SET status = ?, result = ?, error = ?, finished_at = ?, updated_at = ?"
            f" WHERE id = ? AND attempt = ? AND status IN {sql_in(predecessors(status))}"
            f" RETURNING {TASK_COLUMNS}"
        )

        def finish(conn: sqlite3.Connection) -> TaskRecord | None:
            now = _now()
            args = (status.value, _dump(result), error, now, now, task_id, attempt)
            task = _one_task(conn, sql, args)
            if task is not None and task.session_id is not None and messages:
                _insert_messages(conn, task.session_id, messages, task.id)
            return task

        return await self._transaction(finish)

    async def cancel_task(self, task_id: str) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'cancelled', finished_at = ?, updated_at = ?"
            f" WHERE id = ? AND status IN {sql_in(predecessors(TaskStatus.CANCELLED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        now = _now()
        args = (now, now, task_id)
        return await self._transaction(lambda conn: _one_task(conn, sql, args))

    async def requeue_task(self, task_id: str, attempt: int) -> TaskRecord | None:
        sql = (
            "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
            " started_at = NULL, updated_at = ?"
            f" WHERE id = ? AND attempt = ? AND status IN {sql_in(predecessors(TaskStatus.QUEUED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        args = (_now(), task_id, attempt)
        return await self._transaction(lambda conn: _one_task(conn, sql, args))

    async def requeue_node_tasks(self, node_id: str) -> list[TaskRecord]:
        sql = (
            "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
            " started_at = NULL, updated_at = ?"
            f" WHERE node_id = ? AND status IN {sql_in(predecessors(TaskStatus.QUEUED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        args = (_now(), node_id)
        rows = await self._transaction(lambda conn: conn.execute(sql, args).fetchall())
        return sorted((_ROWS.task(row) for row in rows), key=lambda task: task.seq)

    async def count_tasks(self, status: TaskStatus) -> int:
        sql = "SELECT COUNT(*) FROM tasks WHERE status = ?"
        return await self._run(lambda conn: int(conn.execute(sql, (status.value,)).fetchone()[0]))

    # sessions and conversation history

    async def create_session(
        self, title: str | None = None, metadata: JSON = None
    ) -> SessionRecord:
        now = _now()
        sql = (
            "INSERT INTO sessions (id, title, metadata, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) RETURNING *"
        )
        args = (new_id(), title, json.dumps({} if metadata is None else metadata), now, now)
        row = await self._transaction(lambda conn: conn.execute(sql, args).fetchone())
        return _ROWS.session(row)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        sql = "SELECT * FROM sessions WHERE id = ?"
        row = await self._run(lambda conn: conn.execute(sql, (session_id,)).fetchone())
        return None if row is None else _ROWS.session(row)

    async def list_sessions(self, limit: int = 50, offset: int = 0) -> list[SessionRecord]:
        check_page(limit, offset)
        sql = "SELECT * FROM sessions ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        rows = await self._run(lambda conn: conn.execute(sql, (limit, offset)).fetchall())
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
        # A negative LIMIT means no limit in SQLite.
        sql = "SELECT * FROM messages WHERE session_id = ? ORDER BY id DESC LIMIT ?"
        args = (session_id, -1 if limit is None else limit)
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [_ROWS.message(row) for row in reversed(rows)]

    # nodes and agents

    async def upsert_node(self, node: NodeRecord) -> None:
        sql = (
            "INSERT INTO nodes (id, role, address, version, status, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET role = excluded.role,"
            " address = excluded.address, version = excluded.version,"
            " status = excluded.status, last_seen = excluded.last_seen"
        )
        args = (
            node.id,
            node.role,
            node.address,
            node.version,
            node.status,
            _fmt_ts(node.last_seen),
        )
        await self._transaction(lambda conn: conn.execute(sql, args))

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._run(
            lambda conn: conn.execute("SELECT * FROM nodes ORDER BY id").fetchall()
        )
        return [_ROWS.node(row) for row in rows]

    async def upsert_agents(self, node_id: str, agents: list[tuple[str, str, str]]) -> None:
        def replace(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute("DELETE FROM agents WHERE node_id = ?", (node_id,))
            conn.executemany(
                "INSERT INTO agents (node_id, name, kind, description, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(node_id, name, kind, description, now) for name, kind, description in agents],
            )

        await self._transaction(replace)

    async def list_agents(self) -> list[AgentRecord]:
        sql = "SELECT * FROM agents ORDER BY name, node_id"
        rows = await self._run(lambda conn: conn.execute(sql).fetchall())
        return [_ROWS.agent(row) for row in rows]

    # the fence

    async def fence_epoch(self) -> int:
        sql = "SELECT epoch FROM fence WHERE id = 1"
        return await self._run(lambda conn: int(conn.execute(sql).fetchone()[0]))

    async def fence(self) -> FenceRecord:
        sql = "SELECT epoch, holder, updated_at FROM fence WHERE id = 1"
        return _ROWS.fence(await self._run(lambda conn: conn.execute(sql).fetchone()))

    async def raise_fence(self, epoch: int, holder: str) -> bool:
        sql = "UPDATE fence SET epoch = ?, holder = ?, updated_at = ? WHERE id = 1 AND epoch < ?"

        def raise_(conn: sqlite3.Connection) -> bool:
            # The time is read under the write lock, so it orders with the fenced writes.
            return conn.execute(sql, (epoch, holder, _now(), epoch)).rowcount == 1

        return await self._transaction(raise_)

    async def record_cluster_view(
        self, epoch: int, holder: str, states: list[tuple[str, str]]
    ) -> bool:
        check_cluster_view(epoch, states)
        sql = (
            "INSERT INTO cluster_view (node_id, state, epoch, holder, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET state = excluded.state,"
            " epoch = excluded.epoch, holder = excluded.holder, updated_at = excluded.updated_at"
        )

        def record(conn: sqlite3.Connection) -> bool:
            # BEGIN IMMEDIATE holds the write lock from the start, so no raise_fence (from this
            # store or another process) can land between this check and the writes.
            current = conn.execute("SELECT epoch FROM fence WHERE id = 1").fetchone()[0]
            if current != epoch:
                return False
            now = _now()
            conn.executemany(
                sql, [(node_id, state, epoch, holder, now) for node_id, state in states]
            )
            return True

        return await self._transaction(record)

    async def cluster_view(self) -> list[NodeStateRecord]:
        sql = "SELECT * FROM cluster_view ORDER BY node_id"
        rows = await self._run(lambda conn: conn.execute(sql).fetchall())
        return [_ROWS.node_state(row) for row in rows]

    # configuration

    async def put_config(self, key: str, value: JSON) -> None:
        sql = (
            "INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at"
        )
        args = (key, _dump(value), _now())
        await self._transaction(lambda conn: conn.execute(sql, args))

    async def get_config(self, key: str) -> JSON | None:
        sql = "SELECT value FROM config WHERE key = ?"
        row = await self._run(lambda conn: conn.execute(sql, (key,)).fetchone())
        return None if row is None else _load(row["value"])
