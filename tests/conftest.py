"""Shared fixtures.

PostgreSQL: ``postgres_server`` starts one real server per test session (see ``tests/pg.py``);
``postgres_url`` gives each test a fresh empty database. Without the server binaries these
skip with the reason, except in CI (``CI`` set), where PostgreSQL must never be skipped.

Stores: ``store`` is an opened, migrated store, once per backend (test ids ``[sqlite]`` and
``[postgresql]``); ``store_url`` is the same database's URL, for tests that open their own
stores. ``aio_loop`` opens the trio-asyncio loop that asyncpg needs for the test's duration.

Parallel runs: ``just ci`` runs everything outside ``tests/system`` on both cores
(pytest-xdist, ``-n 2``), then the real-process clusters of ``tests/system`` one after another in
their file order, as they always ran: some files share one cluster across ordered tests, and two
clusters at once on a 2-core machine would turn their failure detectors' timeouts into alarms.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from brio.aio import open_loop
from brio.store import Store, open_store, sqlite_url
from tests.pg import PostgresServer, PostgresUnavailable


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if _in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests, but: {exc}")
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with open_loop():
        yield


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "data" / "brio.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str, aio_loop: None) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
