"""The store part: opened (migrations applied) first, closed last."""

from __future__ import annotations

import trio

from brio.store import open_store
from brio.store.base import Store


class StorePart:
    def __init__(self, url: str, max_connections: int) -> None:
        self.url = url
        self.max_connections = max_connections

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        store = await open_store(self.url, max_connections=self.max_connections)
        try:
            task_status.started(store)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
