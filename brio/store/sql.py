"""Every SQL statement of the two store backends, each written once.

A statement is a template in one neutral form, rendered for each dialect at import time into a
``Query``: its text and the names of its parameters in placeholder order. On the hot path a
backend only binds values by name::

    sql, args = SQLITE_SQL.task_by_id.bind(id=task_id)
    conn.execute(sql, args)  # sqlite3
    sql, args = POSTGRES_SQL.task_by_id.bind(id=task_id)
    await conn.fetchrow(sql, *args)  # asyncpg

The template language:

- ``:name`` is a parameter. Each name becomes one numbered placeholder (``?1``, ``$1``, ...,
  numbered by first use), so a name used twice is bound once.
- ``:now`` is the clock. On PostgreSQL it is ``now()``, the database clock that every node
  shares; on SQLite it is an ordinary parameter, bound by the caller (see ``SQLITE.now``).
- What else a dialect spells its own way is a field of ``Dialect``, formatted into the few
  templates that need it. ``SQLITE`` and ``POSTGRES`` below say, field by field, what differs
  and why; the fence, which the two lock in different ways, follows them.

Transaction control and connection setup (``BEGIN IMMEDIATE``, PRAGMAs, the advisory lock a
PostgreSQL migration takes) are not here: each is part of how its backend talks to its
database, not a statement both run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from brio.core.tasks import TaskStatus, predecessors
from brio.store import schema
from brio.store._common import check_limit, decode_cursor
from brio.store.base import TaskFilter

# The columns every task query returns, which RowDecoder.task reads.
TASK_COLUMNS = (
    "seq, id, agent, prompt, input, session_id, idempotency_key, priority, status, node_id,"
    " attempt, result, error, created_at, updated_at, started_at, finished_at"
)

# A statement's text and the arguments to run it with.
Bound = tuple[str, tuple[object, ...]]

# A parameter: a colon, then a name that starts with a letter (so "12:30" is no parameter).
_PARAM = re.compile(r":([a-z_][a-z0-9_]*)")


def sql_in(statuses: Iterable[TaskStatus]) -> str:
    """``('a', 'b')`` for a set of task states. Safe to inline: the values are enum members."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


@dataclass(frozen=True, slots=True)
class Query:
    """One statement rendered for one dialect: ``text`` with numbered placeholders, and
    ``names``, the parameter bound to each placeholder in order."""

    text: str
    names: tuple[str, ...]

    def args(self, **values: object) -> tuple[object, ...]:
        """The values in placeholder order. TypeError unless exactly ``names`` are given: a
        misspelt or forgotten name fails at once instead of binding the wrong value."""
        try:
            args = tuple(values[name] for name in self.names)
        except KeyError as exc:
            raise TypeError(f"no value for :{exc.args[0]} in {self.text!r}") from None
        if len(values) != len(self.names):
            extra = sorted(set(values) - set(self.names))
            raise TypeError(f"{self.text!r} has no parameter {', '.join(extra)}")
        return args

    def bind(self, **values: object) -> Bound:
        """The text and ``args(**values)``."""
        return self.text, self.args(**values)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What SQLite and PostgreSQL spell differently, outside the fence."""

    name: schema.Dialect
    placeholder: str  # the n-th placeholder, n from 1, as a format string
    now: str | None  # the clock as SQL, or None: ``:now`` stays a parameter the caller binds
    member: str  # ``{column}`` is one of the strings in the list parameter ``:{param}``
    claim_lock: str  # ends the subquery that picks the task a claim takes
    byte_order: str  # follows an ORDER BY term to sort text by bytes
    no_limit: int | None  # the LIMIT value that means no limit

    def is_in(self, column: str, param: str) -> str:
        return self.member.format(column=column, param=param)

    def render(self, template: str) -> Query:
        if "::" in template:  # ":x::text[]" would read as the parameter ":x" then ":text"
            raise ValueError(f"write CAST(:x AS type), not :x::type: {template!r}")
        names: list[str] = []

        def place(match: re.Match[str]) -> str:
            name = match[1]
            if name == "now" and self.now is not None:
                return self.now
            if name not in names:
                names.append(name)
            return self.placeholder.format(names.index(name) + 1)

        return Query(_PARAM.sub(place, template), tuple(names))


SQLITE = Dialect(
    name="sqlite",
    placeholder="?{}",
    # The store's clock, read once per call and bound: fixed-width ISO 8601 text with
    # microseconds, which sorts as text (SQLite's strftime has milliseconds only).
    now=None,
    # SQLite cannot bind a list; the caller binds it as a JSON array.
    member="{column} IN (SELECT value FROM json_each(:{param}))",
    # No row locks: BEGIN IMMEDIATE already runs one claim after another.
    claim_lock="",
    byte_order="",  # BINARY, the default collation
    no_limit=-1,  # a negative LIMIT has no bound; SQLite refuses LIMIT NULL
)

POSTGRES = Dialect(
    name="postgresql",
    placeholder="${}",
    now="now()",  # the time the transaction began, on the clock every node shares
    member="{column} = ANY(CAST(:{param} AS text[]))",
    # Claimers on different nodes each take a different row instead of waiting on one another.
    claim_lock=" FOR UPDATE SKIP LOCKED",
    byte_order=' COLLATE "C"',  # as SQLite sorts, whatever the database's locale
    no_limit=None,  # LIMIT NULL has no bound; PostgreSQL refuses a negative LIMIT
)

# The fence, where the dialects lock differently.
#
# SQLite: every write is a BEGIN IMMEDIATE transaction holding the database's one write lock
# from its start, so raising is a plain conditional UPDATE, and a fenced write reads the epoch
# (``fence_epoch``), then writes its rows one by one (``record_cluster_view``, once a row).
#
# PostgreSQL: the fence row is the lock, and each fence statement is a single statement
# committed on its own: a transaction spanning round trips would hold the row's lock while its
# process was paused (SIGSTOP, a GC pause), and the next primary's raise would wait for it to
# wake. The times are clock_timestamp(), read after the lock was taken (now() is when the
# transaction began, which may be before it waited), so that they order as the writes did.

_NODE_STATE_UPSERT = (
    "ON CONFLICT (node_id) DO UPDATE SET state = excluded.state, epoch = excluded.epoch,"
    " holder = excluded.holder, updated_at = excluded.updated_at"
)

_RAISE_FENCE: dict[schema.Dialect, str] = {
    "sqlite": (
        "UPDATE fence SET epoch = :epoch, holder = :holder, updated_at = :now"
        " WHERE id = 1 AND epoch < :epoch"
    ),
    # Lock first, then compute the row: a plain UPDATE would evaluate clock_timestamp() before
    # waiting for a writer's FOR SHARE lock, and date the raise too early.
    "postgresql": """
        WITH locked AS (SELECT id FROM fence WHERE id = 1 AND epoch < :epoch FOR UPDATE)
        UPDATE fence SET epoch = :epoch, holder = :holder, updated_at = clock_timestamp()
        FROM locked WHERE fence.id = locked.id RETURNING fence.epoch""",
}

_RECORD_CLUSTER_VIEW: dict[schema.Dialect, str] = {
    "sqlite": (
        "INSERT INTO cluster_view (node_id, state, epoch, holder, updated_at)"
        f" VALUES (:node_id, :state, :epoch, :holder, :now) {_NODE_STATE_UPSERT}"
    ),
    # FOR SHARE holds the fence row until this statement commits: a raise_fence that comes
    # after waits for these writes, and one that committed before is seen (the locked row is
    # re-read), so the condition fails and nothing is written. Answers 1 if the epoch held.
    "postgresql": f"""
        WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = :epoch FOR SHARE),
        written AS (
            INSERT INTO cluster_view (node_id, state, epoch, holder, updated_at)
            SELECT s.node_id, s.state, :epoch, :holder, clock_timestamp()
            FROM unnest(CAST(:nodes AS text[]), CAST(:states AS text[])) AS s (node_id, state)
            CROSS JOIN f
            {_NODE_STATE_UPSERT}
            RETURNING 1
        )
        SELECT count(*) FROM f""",
}

# The scheduler's fenced writes: assignments of a batch and the requeue of failed nodes'
# tasks, each one statement that lands only while the fence holds the primary's epoch
# (brio.tasks.placer). SQLite checks the fence first inside its BEGIN IMMEDIATE transaction,
# as record_cluster_view does; PostgreSQL joins the FOR SHARE-locked fence row. The batch's
# columns are named a_* so that RETURNING's task columns are never ambiguous.
_ASSIGN_SET = "UPDATE tasks SET status = 'assigned', node_id = a_node, updated_at = :now"
_ASSIGN_WHERE = "tasks.id = a_id AND tasks.attempt = a_attempt AND tasks.status = 'queued'"
_ASSIGN: dict[schema.Dialect, str] = {
    # The unary + keeps SQLite off the status index, which made it scan every queued task for
    # each row of the batch (0.5 s for 64 rows behind 4000 queued); by id it is one lookup each.
    "sqlite": f"""
        {_ASSIGN_SET}
        FROM (SELECT json_extract(value, '$[0]') AS a_id, json_extract(value, '$[1]') AS a_attempt,
                     json_extract(value, '$[2]') AS a_node FROM json_each(:batch))
        WHERE {_ASSIGN_WHERE.replace("tasks.status", "+tasks.status")}
        RETURNING {TASK_COLUMNS}""",
    "postgresql": f"""
        WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = :epoch FOR SHARE)
        {_ASSIGN_SET}
        FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]), CAST(:nodes AS text[]))
             AS a (a_id, a_attempt, a_node) CROSS JOIN f
        WHERE {_ASSIGN_WHERE} RETURNING {TASK_COLUMNS}""",
}

_REQUEUE_NODES_WHERE = "WHERE {nodes} AND status IN " + sql_in(predecessors(TaskStatus.QUEUED))
_REQUEUE_NODES: dict[schema.Dialect, str] = {
    "sqlite": (
        "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
        f" started_at = NULL, updated_at = :now {_REQUEUE_NODES_WHERE} RETURNING {TASK_COLUMNS}"
    ),
    "postgresql": (
        "WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = :epoch FOR SHARE)"
        " UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
        f" started_at = NULL, updated_at = :now FROM f {_REQUEUE_NODES_WHERE}"
        f" RETURNING {TASK_COLUMNS}"
    ),
}

# create_task: one task, queued, or already assigned to :node_id when the primary placed it as it
# came (brio.tasks.placer.Placer.create_task) and the fence still holds its :epoch. SQLite
# checks the fence first inside its BEGIN IMMEDIATE transaction and binds the status; PostgreSQL
# joins the FOR SHARE-locked fence row, which is no row (so no lock) for a NULL :epoch. No row
# if another transaction inserted the key since task_by_key looked (possible on PostgreSQL;
# SQLite's BEGIN IMMEDIATE rules it out): the caller reads that task.
_TASK_INSERT_COLUMNS = (  # of both inserts (a batch is always queued: its node_id NULL)
    "INSERT INTO tasks (id, agent, prompt, input, session_id, idempotency_key, priority, status,"
    " target_node, node_id, attempt, created_at, updated_at)"
)
_INSERT_TASK: dict[schema.Dialect, str] = {
    "sqlite": f"""
        {_TASK_INSERT_COLUMNS}
        VALUES (:id, :agent, :prompt, :input, :session_id, :key, :priority, :status,
                :target_node, :node_id, 1, :now, :now)
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}""",
    "postgresql": f"""
        WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = :epoch FOR SHARE)
        {_TASK_INSERT_COLUMNS}
        SELECT :id, :agent, :prompt, :input, :session_id, :key, :priority,
               CASE WHEN f.epoch IS NULL THEN 'queued' ELSE 'assigned' END, :target_node,
               CASE WHEN f.epoch IS NULL THEN NULL ELSE CAST(:node_id AS text) END,
               1, :now, :now
        FROM (SELECT 1) AS one LEFT JOIN f ON true
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}""",
}

# create_tasks: a whole batch in one INSERT, in the batch's order (so seq follows it). The
# caller has already dropped the keys in use and the unknown sessions; ON CONFLICT leaves out a
# key a concurrent writer took meanwhile (PostgreSQL only: BEGIN IMMEDIATE rules it out on
# SQLite). SQLite reads the rows from one JSON array of arrays (``WHERE true`` keeps its parser
# from reading ON CONFLICT as a join's ON); PostgreSQL unnests one array per column, with the
# input as JSON text.
_INSERT_TASKS: dict[schema.Dialect, str] = {
    "sqlite": f"""
        {_TASK_INSERT_COLUMNS}
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
               json_extract(value, '$[2]'), json_extract(value, '$[3]'),
               json_extract(value, '$[4]'), json_extract(value, '$[5]'),
               json_extract(value, '$[6]'), 'queued', json_extract(value, '$[7]'), NULL,
               1, :now, :now
        FROM json_each(:rows) WHERE true ORDER BY key
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}""",
    "postgresql": f"""
        {_TASK_INSERT_COLUMNS}
        SELECT t.id, t.agent, t.prompt, CAST(t.input AS jsonb), t.session_id, t.key, t.priority,
               'queued', t.target_node, NULL, 1, :now, :now
        FROM unnest(CAST(:ids AS text[]), CAST(:agents AS text[]), CAST(:prompts AS text[]),
                    CAST(:inputs AS text[]), CAST(:session_ids AS text[]), CAST(:keys AS text[]),
                    CAST(:priorities AS int[]), CAST(:target_nodes AS text[]))
             WITH ORDINALITY AS t (id, agent, prompt, input, session_id, key, priority,
                                   target_node, n)
        ORDER BY t.n
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}""",
}


# PostgreSQL only: the single submits a node coalesced (brio.store.coalesce), in one INSERT.
# As create_task's, but a row per task: each queued, or assigned to its :node_ids entry when
# that is not NULL and the fence still holds :epoch (a batch has one epoch). Rows go in by key
# (NULLs last), then in the batch's order: two batches inserting the same keys take them in one
# order, so neither holds a key the other waits for. A key in use (before, or earlier in the
# batch) gives no row: the caller reads that task.
_INSERT_SUBMITS = f"""
    WITH f AS (SELECT epoch FROM fence WHERE id = 1 AND epoch = :epoch FOR SHARE)
    {_TASK_INSERT_COLUMNS}
    SELECT t.id, t.agent, t.prompt, CAST(t.input AS jsonb), t.session_id, t.key, t.priority,
           CASE WHEN f.epoch IS NULL OR t.node_id IS NULL THEN 'queued' ELSE 'assigned' END,
           t.target_node, CASE WHEN f.epoch IS NULL THEN NULL ELSE t.node_id END, 1, :now, :now
    FROM unnest(CAST(:ids AS text[]), CAST(:agents AS text[]), CAST(:prompts AS text[]),
                CAST(:inputs AS text[]), CAST(:session_ids AS text[]), CAST(:keys AS text[]),
                CAST(:priorities AS int[]), CAST(:target_nodes AS text[]),
                CAST(:node_ids AS text[]))
         WITH ORDINALITY AS t (id, agent, prompt, input, session_id, key, priority,
                               target_node, node_id, n)
    LEFT JOIN f ON true
    ORDER BY t.key NULLS LAST, t.n
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}"""


def _finish(status: TaskStatus) -> str:
    return (
        f"UPDATE tasks SET status = '{status.value}', result = :result, error = :error,"
        " finished_at = :now, updated_at = :now WHERE id = :id AND attempt = :attempt"
        f" AND status IN {sql_in(predecessors(status))} RETURNING {TASK_COLUMNS}"
    )


# PostgreSQL only: the finishes a node coalesced into one state, in one UPDATE; each row as
# _finish's (result as JSON text, NULL for none). A task's row answers only if its attempt and
# state allowed the move.
def _finish_many(status: TaskStatus) -> str:
    return (
        f"UPDATE tasks SET status = '{status.value}', result = CAST(u_result AS jsonb),"
        " error = u_error, finished_at = :now, updated_at = :now"
        " FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[]),"
        " CAST(:results AS text[]), CAST(:errors AS text[])) AS u (u_id, u_attempt, u_result,"
        " u_error) WHERE tasks.id = u_id AND tasks.attempt = u_attempt"
        f" AND tasks.status IN {sql_in(predecessors(status))} RETURNING {TASK_COLUMNS}"
    )


# The messages go in only if the finish landed and the task has a session, in the order given
# (their ids follow it); the session is touched only if messages went in.
_FINISH_WITH_MESSAGES = f"""
    WITH t AS ({{finish}}),
    m AS (
        INSERT INTO messages (session_id, role, content, task_id, created_at)
        SELECT t.session_id, x.role, x.content, t.id, :now
        FROM t CROSS JOIN unnest(CAST(:roles AS text[]), CAST(:contents AS text[]))
             WITH ORDINALITY AS x (role, content, n)
        WHERE t.session_id IS NOT NULL
        ORDER BY x.n
        RETURNING session_id
    ),
    s AS (UPDATE sessions SET updated_at = :now WHERE id IN (SELECT session_id FROM m))
    SELECT {TASK_COLUMNS} FROM t"""

# list_tasks filters, in the order their flags key Statements.task_page's table.
_PAGE_TESTS = ("status = :status", "agent = :agent", "session_id = :session_id", "seq < :before")

_REQUEUE = (
    "UPDATE tasks SET status = 'queued', attempt = attempt + 1, node_id = NULL,"
    " started_at = NULL, updated_at = :now"
)
_REQUEUABLE = sql_in(predecessors(TaskStatus.QUEUED))


class Statements:
    """Every statement of the store, rendered for one dialect (``SQLITE_SQL``,
    ``POSTGRES_SQL``). Statements that change one task answer it (``RETURNING``) only if the
    lifecycle allowed the move, so a refused move is no row."""

    def __init__(self, d: Dialect) -> None:
        q = d.render
        self.dialect = d

        # schema and liveness
        self.ping = q("SELECT 1")
        self.schema_version = q("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        self.applied_migrations = q("SELECT version FROM schema_migrations")
        self.record_migration = q(
            "INSERT INTO schema_migrations (version, description, applied_at)"
            " VALUES (:version, :description, :now)"
        )

        # tasks
        self.task_by_id = q(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id")
        self.task_by_key = q(f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = :key")
        self.insert_task = q(_INSERT_TASK[d.name])
        self.tasks_by_keys = q(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE {d.is_in('idempotency_key', 'keys')}"
        )
        self.insert_tasks = q(_INSERT_TASKS[d.name])
        self.claim_task = q(
            "UPDATE tasks SET status = 'assigned', node_id = :node_id, updated_at = :now"
            " WHERE seq = (SELECT seq FROM tasks WHERE status = 'queued'"
            f" AND {d.is_in('agent', 'agents')}"
            " AND (target_node IS NULL OR target_node = :node_id)"
            f" ORDER BY priority DESC, seq ASC LIMIT 1{d.claim_lock})"
            f" RETURNING {TASK_COLUMNS}"
        )
        self.mark_running = q(
            "UPDATE tasks SET status = 'running', started_at = :now, updated_at = :now"
            " WHERE id = :id AND attempt = :attempt"
            f" AND status IN {sql_in(predecessors(TaskStatus.RUNNING))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        # One statement per terminal state, since each may be entered from different states.
        terminal = [status for status in TaskStatus if status.terminal]
        self.finish_task = {status: q(_finish(status)) for status in terminal}
        # PostgreSQL only: coalesced submits and finishes (brio.store.postgres)
        self.insert_submits = q(_INSERT_SUBMITS) if d.name == "postgresql" else None
        self.finish_tasks = (
            {status: q(_finish_many(status)) for status in terminal}
            if d.name == "postgresql"
            else {}
        )
        # PostgreSQL only: the finish and the history it appends, in one statement (no
        # transaction round trips). SQLite runs them one by one in its one transaction.
        self.finish_with_messages = (
            {status: q(_FINISH_WITH_MESSAGES.format(finish=_finish(status))) for status in terminal}
            if d.name == "postgresql"
            else {}
        )
        # PostgreSQL only: a batch's idempotency keys locked in one order (by their text), for
        # its transaction, before it inserts. Two batches that share keys in other orders
        # would each hold one key's insert and wait for the other's: a deadlock.
        self.lock_keys = (
            q(
                "SELECT count(pg_advisory_xact_lock(:space, hashtext(k)))"
                " FROM (SELECT DISTINCT unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS s"
            )
            if d.name == "postgresql"
            else None
        )
        self.cancel_task = q(
            "UPDATE tasks SET status = 'cancelled', finished_at = :now, updated_at = :now"
            f" WHERE id = :id AND status IN {sql_in(predecessors(TaskStatus.CANCELLED))}"
            f" RETURNING {TASK_COLUMNS}"
        )
        self.requeue_task = q(
            f"{_REQUEUE} WHERE id = :id AND attempt = :attempt AND status IN {_REQUEUABLE}"
            f" RETURNING {TASK_COLUMNS}"
        )
        self.requeue_node_tasks = q(
            f"{_REQUEUE} WHERE node_id = :node_id AND status IN {_REQUEUABLE}"
            f" RETURNING {TASK_COLUMNS}"
        )
        self.count_tasks = q("SELECT COUNT(*) FROM tasks WHERE status = :status")
        # the scheduler: what waits, where the load is, and its fenced writes
        self.queued_tasks = q(
            "SELECT id, agent, attempt, priority, seq, session_id, target_node FROM tasks"
            " WHERE status = 'queued' ORDER BY priority DESC, seq ASC LIMIT :limit"
        )
        # the next page of the same order, after the last task of the page before (a key,
        # not an offset: a task queued or placed meanwhile neither repeats nor hides one),
        # only of tasks that nodes with room may take: unpinned of their agents, or pinned
        # to one of them
        self.queued_tasks_after = q(
            "SELECT id, agent, attempt, priority, seq, session_id, target_node FROM tasks"
            " WHERE status = 'queued'"
            " AND (priority < :priority OR (priority = :priority AND seq > :seq))"
            f" AND ((target_node IS NULL AND {d.is_in('agent', 'agents')})"
            f" OR {d.is_in('target_node', 'nodes')})"
            " ORDER BY priority DESC, seq ASC LIMIT :limit"
        )
        # one row per task taking a slot: at most the cluster's slots (the placer counts them,
        # and takes them off as their completions come in)
        self.node_tasks = q(
            "SELECT node_id, id FROM tasks"
            f" WHERE status IN {sql_in(predecessors(TaskStatus.QUEUED))}"
            " AND node_id IS NOT NULL"
        )
        self.assign_tasks = q(_ASSIGN[d.name])
        self.requeue_nodes_tasks = q(
            _REQUEUE_NODES[d.name].format(nodes=d.is_in("node_id", "nodes"))
        )
        # a worker takes the tasks assigned to it straight into running, a batch at a time
        self.running_on_node = q(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE node_id = :node_id AND status = 'running'"
            " ORDER BY seq"
        )
        self.claim_assigned = q(
            "UPDATE tasks SET status = 'running', started_at = :now, updated_at = :now"
            " WHERE seq IN (SELECT seq FROM tasks WHERE status = 'assigned'"
            f" AND node_id = :node_id AND {d.is_in('agent', 'agents')}"
            f" ORDER BY priority DESC, seq ASC LIMIT :limit{d.claim_lock})"
            f" RETURNING {TASK_COLUMNS}"
        )

        # list_tasks: one statement for each set of filters, keyed by which are given.
        self._task_pages = {
            flags: q(_task_page(flags))
            for flags in itertools.product((False, True), repeat=len(_PAGE_TESTS))
        }

        # sessions and conversation history
        self.session_exists = q("SELECT 1 FROM sessions WHERE id = :id")
        self.sessions_existing = q(f"SELECT id FROM sessions WHERE {d.is_in('id', 'ids')}")
        self.insert_session = q(
            "INSERT INTO sessions (id, title, metadata, created_at, updated_at)"
            " VALUES (:id, :title, :metadata, :now, :now) RETURNING *"
        )
        self.session_by_id = q("SELECT * FROM sessions WHERE id = :id")
        self.list_sessions = q(
            "SELECT * FROM sessions ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"
        )
        self.insert_message = q(
            "INSERT INTO messages (session_id, role, content, task_id, created_at)"
            " VALUES (:session_id, :role, :content, :task_id, :now) RETURNING *"
        )
        self.touch_session = q("UPDATE sessions SET updated_at = :now WHERE id = :id")
        # The newest first, so that LIMIT keeps the latest; the caller reverses them.
        self.list_messages = q(
            "SELECT * FROM messages WHERE session_id = :session_id ORDER BY id DESC LIMIT :limit"
        )

        # nodes and agents
        self.upsert_node = q(
            "INSERT INTO nodes (id, role, address, version, status, last_seen)"
            " VALUES (:id, :role, :address, :version, :status, :last_seen)"
            " ON CONFLICT (id) DO UPDATE SET role = excluded.role,"
            " address = excluded.address, version = excluded.version,"
            " status = excluded.status, last_seen = excluded.last_seen"
        )
        self.list_nodes = q("SELECT * FROM nodes ORDER BY id")
        self.delete_agents = q("DELETE FROM agents WHERE node_id = :node_id")
        self.insert_agent = q(
            "INSERT INTO agents (node_id, name, kind, description, updated_at)"
            " VALUES (:node_id, :name, :kind, :description, :now)"
        )
        self.list_agents = q("SELECT * FROM agents ORDER BY name, node_id")

        # the fence
        self.fence_epoch = q("SELECT epoch FROM fence WHERE id = 1")
        self.fence = q("SELECT epoch, holder, updated_at FROM fence WHERE id = 1")
        self.raise_fence = q(_RAISE_FENCE[d.name])
        self.record_cluster_view = q(_RECORD_CLUSTER_VIEW[d.name])
        self.cluster_view = q(f"SELECT * FROM cluster_view ORDER BY node_id{d.byte_order}")

        # configuration
        self.put_config = q(
            "INSERT INTO config (key, value, updated_at) VALUES (:key, :value, :now)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at"
        )
        self.get_config = q("SELECT value FROM config WHERE key = :key")

    def task_page(self, filt: TaskFilter, limit: int, cursor: str | None) -> Bound:
        """The SELECT for one page of ``list_tasks``, newest first, and its arguments. It
        fetches one row more than ``limit`` to tell whether another page follows."""
        check_limit(limit)
        filters: dict[str, object] = {
            "status": None if filt.status is None else filt.status.value,
            "agent": filt.agent,
            "session_id": filt.session_id,
            "before": None if cursor is None else decode_cursor(cursor),
        }
        query = self._task_pages[tuple(value is not None for value in filters.values())]
        given = {name: value for name, value in filters.items() if value is not None}
        return query.bind(limit=limit + 1, **given)


def _task_page(flags: tuple[bool, ...]) -> str:
    tests = [test for test, given in zip(_PAGE_TESTS, flags, strict=True) if given]
    where = " WHERE " + " AND ".join(tests) if tests else ""
    return f"SELECT {TASK_COLUMNS} FROM tasks{where} ORDER BY seq DESC LIMIT :limit"


SQLITE_SQL = Statements(SQLITE)
POSTGRES_SQL = Statements(POSTGRES)
