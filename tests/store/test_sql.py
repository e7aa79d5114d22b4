"""The statements of ``brio.store.sql``: how templates render, how values bind, and that every
rendered statement is valid SQL for its database (including the ``list_tasks`` filter sets the
store suite may not all reach)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

import pytest

from brio.store import open_store, schema
from brio.store.sql import POSTGRES, POSTGRES_SQL, SQLITE, SQLITE_SQL, Query, Statements
from tests.pg import PostgresServer

_PLACEHOLDER = re.compile(r"[?$](\d+)")


def statements(sql: Statements) -> Iterator[tuple[str, Query]]:
    """Every rendered statement, named by its attribute (and key, for the tables)."""
    for name, value in sorted(vars(sql).items()):
        if isinstance(value, Query):
            yield name, value
        elif isinstance(value, dict):
            for key, query in value.items():
                yield f"{name}[{key}]", query


def test_a_name_is_one_placeholder_numbered_by_first_use() -> None:
    template = "UPDATE t SET a = :a, b = :b WHERE a = :a AND c = :c"
    assert SQLITE.render(template) == Query(
        "UPDATE t SET a = ?1, b = ?2 WHERE a = ?1 AND c = ?3", ("a", "b", "c")
    )
    assert POSTGRES.render(template) == Query(
        "UPDATE t SET a = $1, b = $2 WHERE a = $1 AND c = $3", ("a", "b", "c")
    )


def test_now_is_the_database_clock_on_postgresql_and_a_parameter_on_sqlite() -> None:
    template = "UPDATE t SET at = :now WHERE id = :id AND seen < :now"
    assert POSTGRES.render(template) == Query(
        "UPDATE t SET at = now() WHERE id = $1 AND seen < now()", ("id",)
    )
    assert SQLITE.render(template) == Query(
        "UPDATE t SET at = ?1 WHERE id = ?2 AND seen < ?1", ("now", "id")
    )


def test_a_time_literal_is_no_parameter_and_a_cast_must_be_spelt_out() -> None:
    assert SQLITE.render("SELECT '12:30' WHERE x = :x").names == ("x",)
    with pytest.raises(ValueError, match="CAST"):
        POSTGRES.render("SELECT :x::text[]")


def test_args_take_exactly_the_statement_s_names_in_placeholder_order() -> None:
    query = POSTGRES.render("SELECT :b, :a, :b")
    assert query.args(a=1, b=2) == (2, 1)
    assert query.bind(a=1, b=2) == ("SELECT $1, $2, $1", (2, 1))
    with pytest.raises(TypeError, match=":a"):
        query.args(b=2)
    with pytest.raises(TypeError, match="c"):
        query.args(a=1, b=2, c=3)


def test_both_dialects_bind_the_same_names() -> None:
    """A backend binds each statement by the same names on either database; the clock is
    SQLite's alone, and only the fenced writes have a different shape (brio.store.sql):
    SQLite checks the fence before them, PostgreSQL in them. A batch insert binds its rows
    as one JSON array on SQLite and one array per column on PostgreSQL."""
    sqlite = dict(statements(SQLITE_SQL))
    postgres = dict(statements(POSTGRES_SQL))
    # PostgreSQL's one-statement finish with history, which SQLite runs as several, the
    # batch's key locks (SQLite's writer is one transaction at a time), and the coalesced
    # submits and finishes (SQLite's writer group-commits its own way)
    postgres_only = {name for name in postgres if name.startswith("finish_with_messages[")}
    assert len(postgres_only) == len(SQLITE_SQL.finish_task)
    finishes = {name for name in postgres if name.startswith("finish_tasks[")}
    assert len(finishes) == len(SQLITE_SQL.finish_task)
    postgres_only |= finishes | {"lock_keys", "insert_submits"}
    assert sqlite.keys() == postgres.keys() - postgres_only
    for name, query in sqlite.items():
        if name in ("record_cluster_view", "assign_tasks", "insert_tasks"):
            continue
        if name == "requeue_nodes_tasks":
            assert set(postgres[name].names) - set(query.names) == {"epoch"}
            continue
        if name == "insert_task":  # SQLite binds the status its fence check chose
            assert set(postgres[name].names) - set(query.names) == {"epoch"}
            assert set(query.names) - set(postgres[name].names) == {"now", "status"}
            continue
        assert set(query.names) - {"now"} == set(postgres[name].names), name
        assert "now" not in postgres[name].names, name


@pytest.mark.parametrize("sql", [SQLITE_SQL, POSTGRES_SQL], ids=["sqlite", "postgresql"])
def test_every_placeholder_has_a_name(sql: Statements) -> None:
    for name, query in statements(sql):
        numbers = {int(n) for n in _PLACEHOLDER.findall(query.text)}
        assert numbers == set(range(1, len(query.names) + 1)), name
        assert not re.search(r":[a-z_]", query.text), name


def test_every_sqlite_statement_compiles() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute(schema.render(schema.MIGRATIONS_TABLE, "sqlite"))
    for migration in schema.MIGRATIONS:
        for statement in migration.render("sqlite"):
            conn.execute(statement)
    for name, query in statements(SQLITE_SQL):
        try:
            conn.execute(f"EXPLAIN {query.text}", [None] * len(query.names))
        except sqlite3.Error as exc:
            pytest.fail(f"{name}: {exc}")


@pytest.mark.postgres
async def test_every_postgresql_statement_prepares(
    postgres_url: str, postgres_server: PostgresServer, aio_loop: None
) -> None:
    store = await open_store(postgres_url)  # for the schema
    await store.close()
    prepares = [
        f"PREPARE s{i} AS {query.text}" for i, (_, query) in enumerate(statements(POSTGRES_SQL))
    ]
    postgres_server.sql("; ".join(prepares), database=postgres_url.rsplit("/", 1)[1])
