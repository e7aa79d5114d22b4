"""``PeerCalls.nudge``: one wake-up call per node and method in flight; the rest coalesce.

c1's real ``PeerCalls`` (run in its nursery, as the node runs it) calls a stand-in for w1's
``Call`` service over an in-memory HTTP/2 connection (``tests/mesh/channel.py``): the request
goes through grpclib and ``transport.Service`` as over a socket. The stand-in records what
each call carried and holds the first one until the test lets it go, so that the nudges sent
meanwhile can be seen to wait and then go as one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from brio import aio
from brio.mesh import methods, pb
from brio.mesh.assembly import Mesh
from brio.mesh.calls import NUDGE_IDS
from brio.mesh.transport import Caller, Service, TransportStats
from tests.mesh.channel import Identity, attach, serve_in_memory
from tests.mesh.helpers import built_mesh

W1 = "127.0.0.3:50051"


class Worker:
    """``Call`` of a pretend w1: records ``(method, payload)``; holds calls while ``gate``
    is closed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.gate = trio.Event()
        self.arrived = trio.Event()

    async def call(self, request: Any, caller: Caller, timeout: float | None) -> pb.MeshResponse:
        assert caller.claimed_node_id == "c1"
        self.calls.append((request.method, json.loads(request.json or "{}")))
        self.arrived.set()
        await self.gate.wait()
        return pb.MeshResponse(json="{}", node_id="w1")

    def service(self) -> Service:
        return Service({methods.CALL: self.call}, 1 << 20, TransportStats())


@asynccontextmanager
async def c1_calling(
    tmp_path: Path, worker: Worker, *, knows_w1: bool = True
) -> AsyncIterator[Mesh]:
    """c1 with its ``PeerCalls`` running; w1 in its table (unless not ``knows_w1``), its
    channel to ``worker`` in memory; ``learn_w1`` adds it later."""
    async with (
        aio.open_loop(),
        built_mesh(tmp_path / "c1", "c1") as c1,
        serve_in_memory([worker.service()], stats=TransportStats()) as w1,
        trio.open_nursery() as nursery,
    ):
        attach(c1.calls.pool, W1, await w1.connect(Identity(("127.0.0.2", 41000))))
        if knows_w1:
            learn_w1(c1)
        await nursery.start(c1.calls.run)
        yield c1
        nursery.cancel_scope.cancel()


def learn_w1(c1: Mesh) -> None:
    c1.membership.add(W1, trio.current_time(), node_id="w1", role="worker")


async def settle(worker: Worker, calls: int) -> None:
    with trio.fail_after(5):
        while len(worker.calls) < calls:
            await trio.sleep(0.01)
    await trio.sleep(0.05)  # and nothing more arrives


async def test_nudges_sent_while_one_is_in_flight_go_as_one_call_after_it(
    tmp_path: Path,
) -> None:
    worker = Worker()
    async with c1_calling(tmp_path, worker) as c1:
        c1.calls.nudge("w1", "task.run", ["t1"])
        with trio.fail_after(5):
            await worker.arrived.wait()
        for n in range(2, 11):
            c1.calls.nudge("w1", "task.run", [f"t{n}"])
        c1.calls.nudge("w1", "task.queued")  # another method: its own call, not held
        await settle(worker, 2)
        assert worker.calls == [("task.run", {"task_ids": ["t1"]}), ("task.queued", {})]

        worker.gate.set()  # the first call is answered: the nine waiting go as one
        await settle(worker, 3)
        assert worker.calls[2] == ("task.run", {"task_ids": [f"t{n}" for n in range(2, 11)]})

        # nothing in flight any more: the next nudge goes at once, on its own
        c1.calls.nudge("w1", "task.run", ["t11"])
        await settle(worker, 4)
        assert worker.calls[3] == ("task.run", {"task_ids": ["t11"]})


async def test_one_nudge_carries_a_bounded_number_of_ids(tmp_path: Path) -> None:
    worker = Worker()
    async with c1_calling(tmp_path, worker) as c1:
        c1.calls.nudge("w1", "task.run", ["first"])
        with trio.fail_after(5):
            await worker.arrived.wait()
        for n in range(3 * NUDGE_IDS):
            c1.calls.nudge("w1", "task.run", [f"t{n}"])
        worker.gate.set()
        await settle(worker, 2)
        ids = worker.calls[1][1]["task_ids"]
        assert ids == [f"t{n}" for n in range(NUDGE_IDS)]


async def test_a_nudge_to_an_unknown_node_is_logged_and_the_next_one_still_goes(
    tmp_path: Path,
) -> None:
    worker = Worker()
    worker.gate.set()
    async with c1_calling(tmp_path, worker, knows_w1=False) as c1:
        c1.calls.nudge("w1", "task.run", ["lost"])  # w1 is not in the table yet
        await trio.sleep(0.05)
        learn_w1(c1)
        c1.calls.nudge("w1", "task.run", ["found"])
        await settle(worker, 1)
        assert worker.calls == [("task.run", {"task_ids": ["found"]})]
