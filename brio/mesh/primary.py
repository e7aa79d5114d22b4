"""What the primary coordinator does while it holds the lease.

``Primary.run`` is the body of the ``primary`` nursery: the lease driver starts it on election
inside a cancel scope whose deadline falls before the lease ends, and cancels it on step-down.
The first thing it does is raise the fence in the store to its epoch; every write after that is
conditional on the fence still holding that epoch, so a primary deposed while paused (GC,
SIGSTOP, a migrated VM) cannot write when it wakes: it gets ``FenceLost`` instead.

Its jobs: the cluster view (the primary's word on each node's state, in the store's
``cluster_view`` table) and placement (``brio.tasks.placer.Placer``: every task without a
node prefix goes where the scheduler core says, under the fence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from brio.store.base import FenceLost, Store
from brio.tasks.placer import Placer

__all__ = ["FenceLost", "Primary"]

log = logging.getLogger(__name__)


class Primary:
    def __init__(
        self,
        node_id: str,
        store: Store,
        view: Callable[[], list[tuple[str, str]]],
        interval: float,
        placer: Placer,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.view = view  # (node id, state) of every node this primary knows
        self.interval = interval
        self.writes = 0  # fenced writes that landed, for status and tests
        self.placer = placer

    async def run(self, epoch: int) -> None:
        """Raise the fence, then do primary work until cancelled or fenced out."""
        await self._raise_fence(epoch)
        log.info("primary for epoch %d: the fence is raised", epoch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._record_view, epoch)
            nursery.start_soon(self.placer.run, epoch)

    async def _raise_fence(self, epoch: int) -> None:
        if await self.store.raise_fence(epoch, self.node_id):
            return
        # Refused: either we raised it already this epoch (a restarted primary task after a
        # late renewal), or someone newer did.
        fence = await self.store.fence()
        if fence.epoch != epoch or fence.holder != self.node_id:
            raise FenceLost(fence.epoch)

    async def _record_view(self, epoch: int) -> None:
        while True:
            if not await self.store.record_cluster_view(epoch, self.node_id, self.view()):
                raise FenceLost((await self.store.fence()).epoch)
            self.writes += 1
            await trio.sleep(self.interval)
