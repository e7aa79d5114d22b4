"""Durable state: ``open_store(url)`` picks the backend from the URL and migrates the schema.

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` and ``sqlite:///:memory:``
open the embedded single-node database; ``postgresql://`` (or ``postgres://``) URLs open the
shared database of a mesh, which needs ``brio.aio.open_loop()`` around it. Its module
(asyncpg, trio-asyncio) is imported only to open one: a SQLite node never loads it.
"""

from __future__ import annotations

from pathlib import Path

from brio.store._common import redact_url
from brio.store.base import (
    JSON,
    MAX_CREATE_BATCH,
    AgentRecord,
    MessageRecord,
    NewTask,
    NodeRecord,
    NotFound,
    SessionRecord,
    Store,
    StoreError,
    TaskFilter,
    TaskPage,
    TaskRecord,
)
from brio.store.sqlite import SQLiteStore

__all__ = [
    "JSON",
    "MAX_CREATE_BATCH",
    "AgentRecord",
    "MessageRecord",
    "NewTask",
    "NodeRecord",
    "NotFound",
    "SQLiteStore",
    "SessionRecord",
    "Store",
    "StoreError",
    "TaskFilter",
    "TaskPage",
    "TaskRecord",
    "open_store",
    "redact_url",
    "sqlite_url",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite file, e.g. the default database under a node's data dir."""
    return _SQLITE_PREFIX + str(path)


async def open_store(
    url: str, *, max_connections: int = 10, connect_timeout: float = 10.0
) -> Store:
    """Open and migrate the database at ``url``; StoreError if that cannot be done.

    ``max_connections`` bounds the PostgreSQL pool (``[database] max_connections``);
    ``connect_timeout`` bounds each connection attempt so an unreachable server fails fast.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        path = url.removeprefix(_SQLITE_PREFIX)
        if path == url or not path:
            raise StoreError(
                f"bad SQLite URL {url!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        return await SQLiteStore.open(path)
    if scheme in ("postgresql", "postgres"):
        from brio.store.postgres import PostgresStore

        return await PostgresStore.open(
            url, max_connections=max_connections, connect_timeout=connect_timeout
        )
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: "
        "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
    )
