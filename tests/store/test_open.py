"""Opening stores: URLs, migrations, persistence across reopen, and clear errors."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
import trio

from brio import aio
from brio.core.tasks import TaskStatus
from brio.store import NewTask, Store, StoreError, open_store, redact_url, sqlite_url
from brio.store.base import Assignment
from brio.store.postgres import PostgresStore
from brio.store.schema import LATEST_VERSION, MIGRATIONS
from tests.pg import PostgresServer


def raw_sql(url: str, request: pytest.FixtureRequest, statement: str) -> str:
    """Run one statement on the database at ``url`` behind the store's back."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(statement).fetchall()
        return "\n".join("|".join(map(str, row)) for row in rows)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.sql(statement, database=url.rsplit("/", 1)[1]).strip()


async def test_migrations_are_recorded(
    store: Store, store_url: str, request: pytest.FixtureRequest
) -> None:
    assert await store.schema_version() == LATEST_VERSION
    rows = raw_sql(store_url, request, "SELECT version, description FROM schema_migrations")
    assert rows.splitlines() == [f"{m.version}|{m.description}" for m in MIGRATIONS]
    applied_at = raw_sql(store_url, request, "SELECT applied_at FROM schema_migrations")
    assert applied_at


async def test_reopen_keeps_data_and_applies_nothing_twice(
    store_url: str, aio_loop: None, request: pytest.FixtureRequest
) -> None:
    store = await open_store(store_url)
    session = await store.create_session("kept")
    task, _ = await store.create_task(NewTask("echo", "hi", session_id=session.id))
    await store.raise_fence(4, "c1")
    await store.put_config("k", [1])
    await store.close()

    store = await open_store(store_url)
    try:
        assert await store.schema_version() == LATEST_VERSION
        assert await store.get_task(task.id) == task
        assert await store.get_session(session.id) == session
        assert await store.fence_epoch() == 4
        assert await store.get_config("k") == [1]
    finally:
        await store.close()
    count = raw_sql(store_url, request, "SELECT COUNT(*) FROM schema_migrations")
    assert count == str(len(MIGRATIONS))


async def test_concurrent_starters_migrate_once(
    store_url: str, aio_loop: None, request: pytest.FixtureRequest
) -> None:
    stores: list[Store] = []

    async def start() -> None:
        stores.append(await open_store(store_url))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(start)
        assert len(stores) == 4
    finally:
        for store in stores:
            await store.close()
    count = raw_sql(store_url, request, "SELECT COUNT(*) FROM schema_migrations")
    assert count == str(len(MIGRATIONS))


async def test_a_newer_schema_is_refused(
    store: Store, store_url: str, aio_loop: None, request: pytest.FixtureRequest
) -> None:
    raw_sql(
        store_url,
        request,
        "INSERT INTO schema_migrations (version, description, applied_at)"
        " VALUES (999, 'from the future', CURRENT_TIMESTAMP)",
    )
    with pytest.raises(StoreError, match="newer"):
        await open_store(store_url)


async def test_ping(store: Store) -> None:
    await store.ping()


# SQLite URLs


async def test_sqlite_relative_path_creates_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///nested/dir/brio.db")
    await store.close()
    assert (tmp_path / "nested" / "dir" / "brio.db").is_file()


async def test_sqlite_absolute_path_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "brio.db"
    url = sqlite_url(path)
    assert url.startswith("sqlite:////")
    store = await open_store(url)
    try:
        assert store.backend == "sqlite"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await store.close()


async def test_sqlite_memory() -> None:
    store = await open_store("sqlite:///:memory:")
    try:
        task, _ = await store.create_task(NewTask("echo", "hi"))
        assert await store.count_tasks(TaskStatus.QUEUED) == 1
        assert await store.get_task(task.id) == task
    finally:
        await store.close()


async def test_sqlite_unopenable_path_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open SQLite"):
        await open_store(sqlite_url(tmp_path / "file" / "brio.db"))


@pytest.mark.parametrize("url", ["sqlite://brio.db", "sqlite:///", "sqlite:brio.db"])
async def test_bad_sqlite_url(url: str) -> None:
    with pytest.raises(StoreError, match="bad SQLite URL"):
        await open_store(url)


# errors and redaction


async def test_unknown_scheme_is_store_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="unsupported database URL") as info:
        await open_store("mysql://brio:s3cret@db:3306/brio")
    assert "s3cret" not in str(info.value)
    assert "brio:***@db:3306" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_postgres_fails_fast(aio_loop: None) -> None:
    url = f"postgresql://brio:s3cret@127.0.0.1:{_closed_port()}/brio"
    with trio.fail_after(5), pytest.raises(StoreError, match="cannot connect") as info:
        await open_store(url, connect_timeout=2)
    assert "s3cret" not in str(info.value)
    assert "brio:***@127.0.0.1" in str(info.value)


async def test_postgres_needs_the_aio_loop() -> None:
    with pytest.raises(StoreError, match="open_loop"):
        await open_store("postgres://brio:s3cret@127.0.0.1:1/brio")


@pytest.mark.postgres
async def test_missing_postgres_database_is_store_error(
    postgres_server: PostgresServer, aio_loop: None
) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await open_store(postgres_server.url("no_such_database"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.postgres
@pytest.mark.parametrize(("max_connections", "placement"), [(10, 2), (2, 1), (1, 0)])
async def test_placement_writes_commit_on_sessions_without_synchronous_commit(
    postgres_url: str,
    request: pytest.FixtureRequest,
    aio_loop: None,
    max_connections: int,
    placement: int,
) -> None:
    """assign_tasks and claim_assigned run on the placement sessions (``synchronous_commit =
    off``, set by the client); the rest, a submit among them, on the others; both pools
    together hold at most ``max_connections``."""
    store = await open_store(postgres_url, max_connections=max_connections)
    try:
        assert await store.raise_fence(1, "c1")
        task, _ = await store.create_task(NewTask(agent="echo", prompt="p"))
        assert await store.assign_tasks(1, [Assignment(task.id, 1, "w1")])
        assert [t.id for t in await store.claim_assigned("w1", ["echo"], 5)] == [task.id]
        sessions = raw_sql(
            postgres_url,
            request,
            "SELECT application_name, count(*), string_agg(replace(query, chr(10), ' '), ' ; ')"
            " FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " GROUP BY application_name ORDER BY application_name",
        )
        by_name = {line.split("|")[0]: line.split("|", 2)[1:] for line in sessions.splitlines()}
        if placement:
            count, queries = by_name["brio placement"]
            assert 1 <= int(count) <= placement
            assert "status = 'assigned'" in queries or "status = 'running'" in queries
            assert "INSERT INTO tasks" not in queries
        else:
            assert "brio placement" not in by_name
        assert sum(int(count) for count, _ in by_name.values()) <= max_connections
        # set by the client on the placement sessions; the others keep the server's setting
        source = (
            "SELECT setting || ' ' || source FROM pg_settings WHERE name = 'synchronous_commit'"
        )
        assert isinstance(store, PostgresStore)
        main = await aio.call(store._pool.fetchval, source)
        on_placement = await aio.call(store._placement_pool.fetchval, source)
        assert not main.endswith(" client")
        assert on_placement == ("off client" if placement else main)
    finally:
        await store.close()
