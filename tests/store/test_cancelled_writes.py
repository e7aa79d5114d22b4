"""A write cancelled at any moment lands whole or not at all, and leaves nothing behind on the
connection it used (on PostgreSQL the pool's reset sends no query; an open transaction must
still be rolled back before the connection serves anyone else)."""

from __future__ import annotations

import trio

from brio.core.tasks import TaskStatus
from brio.store import NewTask, TaskFilter, open_store


async def test_cancelled_batches_land_whole_or_not_and_the_next_write_commits(
    store_url: str, aio_loop: None
) -> None:
    store = await open_store(store_url, max_connections=1)  # every call on one connection
    other = await open_store(store_url)
    try:
        for n, delay in enumerate([0.0, 0.001, 0.003, 0.01, 0.03, 0.1]):
            batch = [NewTask("echo", f"b{n}", idempotency_key=f"b{n}-{i}") for i in range(200)]
            with trio.move_on_after(delay):
                await store.create_tasks(batch)
            after, created = await store.create_task(NewTask("echo", f"after{n}"))
            assert created
            # seen from another connection: committed, not inside a transaction left open
            assert await other.get_task(after.id) == after
            page = await other.list_tasks(TaskFilter(agent="echo"), limit=1000)
            landed = sum(t.prompt == f"b{n}" for t in page.tasks)
            assert landed in (0, 200), (delay, landed)
        assert await other.count_tasks(TaskStatus.QUEUED) >= 6
    finally:
        await store.close()
        await other.close()
