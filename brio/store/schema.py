"""Versioned schema migrations, written once for both backends.

Each migration is a list of statements in a small template language: ``{ts}``, ``{json}``,
``{serial}`` and ``{now}`` stand for the column types and the clock of each dialect, so that
SQLite and PostgreSQL get the same tables, columns, constraints and indexes. A backend applies
the pending migrations at open, all in one transaction, while holding a lock that keeps
concurrent starters from applying the same migration twice (PostgreSQL: an advisory
transaction lock; SQLite: ``BEGIN IMMEDIATE``), and records each in ``schema_migrations``.

Published migrations never change: a new schema is a new entry at the end of ``MIGRATIONS``.
That is also why the task states are spelled out in the CHECK constraint rather than taken
from ``TaskStatus``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from brio.store.base import StoreError

Dialect = Literal["sqlite", "postgresql"]

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "ts": "TEXT",  # ISO 8601 in UTC with microseconds, fixed width so it sorts as text
        "json": "TEXT",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",  # AUTOINCREMENT: seq never reused
        "now": "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')",
    },
    "postgresql": {
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "now": "now()",
    },
}

# A constant key for pg_advisory_xact_lock: "brio" in ASCII.
ADVISORY_LOCK_KEY = 0x6272696F

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {ts} NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]

    def render(self, dialect: Dialect) -> list[str]:
        """The statements in ``dialect``, in order."""
        return [render(stmt, dialect) for stmt in self.statements]


def render(template: str, dialect: Dialect) -> str:
    return template.format_map(_TYPES[dialect])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "nodes, agents, sessions, messages, tasks, fence, config",
        (
            """
            CREATE TABLE nodes (
                id TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                address TEXT,
                version TEXT NOT NULL,
                status TEXT NOT NULL,
                last_seen {ts} NOT NULL
            )""",
            """
            CREATE TABLE agents (
                node_id TEXT NOT NULL,
                name TEXT NOT NULL,
                kind TEXT NOT NULL,
                description TEXT NOT NULL,
                updated_at {ts} NOT NULL,
                PRIMARY KEY (node_id, name)
            )""",
            "CREATE INDEX agents_name ON agents (name)",
            """
            CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                title TEXT,
                metadata {json} NOT NULL,
                created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL
            )""",
            "CREATE INDEX sessions_created ON sessions (created_at)",
            # seq orders tasks (age, cursors); id is the public uuid. target_node is the pin a
            # "node/agent" target asked for and survives requeue; node_id is where it ran.
            """
            CREATE TABLE tasks (
                seq {serial},
                id TEXT NOT NULL UNIQUE,
                agent TEXT NOT NULL,
                prompt TEXT NOT NULL,
                input {json} NOT NULL,
                session_id TEXT REFERENCES sessions (id),
                idempotency_key TEXT UNIQUE,
                priority INTEGER NOT NULL,
                status TEXT NOT NULL CHECK (status IN
                    ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled')),
                target_node TEXT,
                node_id TEXT,
                attempt INTEGER NOT NULL CHECK (attempt >= 1),
                result {json},
                error TEXT,
                created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL,
                started_at {ts},
                finished_at {ts}
            )""",
            "CREATE INDEX tasks_claim ON tasks (status, priority DESC, seq)",
            "CREATE INDEX tasks_status ON tasks (status, seq)",
            "CREATE INDEX tasks_agent ON tasks (agent, seq)",
            "CREATE INDEX tasks_session ON tasks (session_id, seq)",
            "CREATE INDEX tasks_node ON tasks (node_id, status)",
            """
            CREATE TABLE messages (
                id {serial},
                session_id TEXT NOT NULL REFERENCES sessions (id),
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                task_id TEXT REFERENCES tasks (id),
                created_at {ts} NOT NULL
            )""",
            "CREATE INDEX messages_session ON messages (session_id, id)",
            """
            CREATE TABLE fence (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                epoch BIGINT NOT NULL,
                holder TEXT,
                updated_at {ts} NOT NULL
            )""",
            "INSERT INTO fence (id, epoch, holder, updated_at) VALUES (1, 0, NULL, {now})",
            """
            CREATE TABLE config (
                key TEXT PRIMARY KEY,
                value {json},
                updated_at {ts} NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "cluster_view: the primary coordinator's view of every node's state",
        (
            # Written only by the primary, each write conditional on the fence; epoch and
            # holder say which primary wrote the row.
            """
            CREATE TABLE cluster_view (
                node_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                epoch BIGINT NOT NULL,
                holder TEXT NOT NULL,
                updated_at {ts} NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "lease_witness: the store's record as a voter in the coordinator lease",
        (
            # One row (brio.core.witness.WitnessRecord), changed only by the statements of
            # brio.store.witness. Times are seconds of the database clock (clock_timestamp()).
            # Created on SQLite too, where it stays unused: the schema is one for both.
            """
            CREATE TABLE lease_witness (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                term BIGINT NOT NULL CHECK (term >= 0),
                voted_for TEXT,
                promised_to TEXT,
                promise_until DOUBLE PRECISION NOT NULL,
                voters_digest TEXT NOT NULL
            )""",
            "INSERT INTO lease_witness (id, term, voted_for, promised_to, promise_until,"
            " voters_digest) VALUES (1, 0, NULL, NULL, 0, '')",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def pending(applied: Iterable[int]) -> list[Migration]:
    """The migrations still to apply on a database that recorded ``applied``.

    A database that went further than this code knows is refused: its schema may mean
    something this version would get wrong.
    """
    done = set(applied)
    unknown = sorted(v for v in done if v > LATEST_VERSION)
    if unknown:
        raise StoreError(
            f"database schema version {unknown[-1]} is newer than this brio supports "
            f"({LATEST_VERSION}); upgrade brio"
        )
    return [m for m in MIGRATIONS if m.version not in done]
