"""The lease driver in real nodes: Vote and Renew over gRPC, the vote file, the primary's work.

Nodes run in process (``run_node``) on loopback with a real PostgreSQL; requests are sent
with the mesh's own client, as a peer would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from brio import aio
from brio.core.lease import voters_digest
from brio.mesh import pb
from brio.mesh.lease_state import save_lease_state
from brio.mesh.methods import RENEW, VOTE, Method
from brio.mesh.tls import client_context
from brio.mesh.transport import ChannelPool, MeshCallError, TransportStats
from brio.node.root import NodeHandle
from brio.store import open_store
from tests.certs import make_cluster_certs, tls_config
from tests.mesh.helpers import mesh_config, started

pytestmark = pytest.mark.postgres

LEASE = {"lease_duration": 0.6, "election_timeout": [0.1, 0.2]}


async def lease_call(
    address: str, method: Method, request: Any, as_node: str, tls: Any = None
) -> Any:
    """The reply, or the MeshCallError that the call raised (returned, not raised)."""
    async with aio.open_loop():
        pool = ChannelPool(tls, as_node, TransportStats())
        try:
            return await pool.unary(address, method.path, request, method.reply, 10)
        except MeshCallError as exc:
            return exc
        finally:
            pool.close()


def vote(term: int, candidate: str, voters: list[str], pre_vote: bool = False) -> Any:
    return pb.LeaseVoteRequest(
        term=term,
        candidate=candidate,
        pre_vote=pre_vote,
        round=1,
        voters_digest=voters_digest(voters),
    )


def worker_voting_with(
    tmp_path: Path, db: str, voters: list[str], speaking_as: tuple[str, ...] = ()
) -> Any:
    return mesh_config(
        tmp_path,
        "w1",
        "worker",
        "127.0.0.3",
        db,
        server={"enabled": False},
        lease={**LEASE, "voters": voters},
        # the coordinators the test speaks as: lease messages are taken from candidates only
        peers=[
            {"id": c, "address": f"127.0.0.{9 + i}:9", "role": "coordinator"}
            for i, c in enumerate(speaking_as)
        ],
    )


async def test_a_vote_is_on_disk_when_the_reply_arrives(tmp_path: Path, postgres_url: str) -> None:
    voters = ["c1", "c2", "w1"]
    # A voter with a vote record of its own (one without must first learn the cluster's
    # terms from the others: tests/core/test_lease.py); it has voted in no term yet.
    (tmp_path / "w1").mkdir(parents=True, exist_ok=True)
    save_lease_state(tmp_path / "w1", 0, None)
    async with started(worker_voting_with(tmp_path, postgres_url, voters, ("c1", "c2"))) as (w1,):
        assert w1.mesh_address is not None
        early = await lease_call(w1.mesh_address, VOTE, vote(1, "c1", voters), "c1")
        assert not early.granted and "restarted" in early.reason  # one lease after start
        await trio.sleep(0.7)
        reply = await lease_call(w1.mesh_address, VOTE, vote(1, "c1", voters), "c1")
        assert reply.granted and reply.term == 1 and reply.voter == "w1"
        saved = json.loads((tmp_path / "w1" / "lease-state.json").read_text())
        assert (saved["term"], saved["voted_for"]) == (1, "c1")
        # The same term for someone else: refused (promised to c1, and voted for c1).
        other = await lease_call(w1.mesh_address, VOTE, vote(1, "c2", voters), "c2")
        assert not other.granted
        # c1 renews as primary of term 1: acknowledged.
        renew = pb.LeaseRenewRequest(
            term=1, leader="c1", round=2, voters_digest=voters_digest(voters)
        )
        ack = await lease_call(w1.mesh_address, RENEW, renew, "c1")
        assert ack.ok and ack.round == 2
        assert w1.mesh is not None and w1.mesh.lease_view().primary == "c1"


async def test_another_voter_set_is_refused_and_logged(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "brio.mesh.lease")
    async with started(worker_voting_with(tmp_path, postgres_url, ["c1", "w1"], ("c1",))) as (w1,):
        assert w1.mesh_address is not None
        await trio.sleep(0.7)
        theirs = ["c1", "w1", "w2"]
        reply = await lease_call(w1.mesh_address, VOTE, vote(1, "c1", theirs), "c1")
        assert not reply.granted and reply.reason == "voter sets differ"
    assert any("runs with another voter set" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "w1" / "lease-state.json").exists()


async def test_a_node_outside_the_lease_says_so(tmp_path: Path, postgres_url: str) -> None:
    async with started(worker_voting_with(tmp_path, postgres_url, ["c1", "c2", "c3"])) as (w1,):
        assert w1.mesh_address is not None
        error = await lease_call(w1.mesh_address, VOTE, vote(1, "c1", ["c1", "c2", "c3"]), "c1")
        assert isinstance(error, MeshCallError) and error.status == "FAILED_PRECONDITION"
        assert "takes no part in the lease" in str(error)
        error = await lease_call(w1.mesh_address, VOTE, pb.LeaseVoteRequest(), "c1")
        assert isinstance(error, MeshCallError) and error.status == "INVALID_ARGUMENT"
        assert "candidate: required" in str(error)


async def test_a_certificate_must_match_the_candidate(tmp_path: Path, postgres_url: str) -> None:
    certs = make_cluster_certs(tmp_path / "certs", {"w1": ["127.0.0.3"], "c2": ["127.0.0.4"]})
    config = mesh_config(
        tmp_path,
        "w1",
        "worker",
        "127.0.0.3",
        postgres_url,
        server={"enabled": False},
        lease={**LEASE, "voters": ["c1", "c2", "w1"]},
        tls=tls_config(certs, "w1"),
    )
    client_tls = client_context(
        config.model_copy().mesh.tls.model_validate(tls_config(certs, "c2"))
    )
    async with started(config) as (w1,):
        assert w1.mesh_address is not None
        error = await lease_call(
            w1.mesh_address,
            VOTE,
            vote(1, "c1", ["c1", "c2", "w1"]),
            "c2",
            client_tls,
        )
        assert isinstance(error, MeshCallError) and error.status == "PERMISSION_DENIED"
        assert "the certificate is for 'c2' but the candidate is 'c1'" in str(error)


async def wait_role(handle: NodeHandle, role: str, timeout: float = 10) -> None:
    assert handle.mesh is not None
    with trio.fail_after(timeout):
        while handle.mesh.lease_view().role != role:
            await trio.sleep(0.02)


async def test_primary_writes_under_the_fence_and_steps_down_without_a_majority(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    w1_config = worker_voting_with(tmp_path, postgres_url, ["c1", "w1"])
    w1_stop = trio.Event()
    async with trio.open_nursery() as nursery:
        from brio.node.root import run_node

        w1: NodeHandle = await nursery.start(run_node, w1_config, w1_stop)
        c1_config = mesh_config(
            tmp_path,
            "c1",
            "coordinator",
            "127.0.0.2",
            postgres_url,
            server={"enabled": False},
            lease={**LEASE, "voters": ["c1", "w1"]},
            peers=[{"id": "w1", "address": w1.mesh_address, "role": "worker"}],
        )
        async with started(c1_config) as (c1,):
            await wait_role(c1, "primary")
            assert c1.mesh is not None and c1.mesh.primary is not None
            epoch = c1.mesh.lease_view().epoch
            assert epoch is not None and epoch >= 1
            with trio.fail_after(10):
                while c1.mesh.primary.writes < 2:
                    await trio.sleep(0.02)
            async with aio.open_loop():
                store = await open_store(postgres_url)
                try:
                    fence = await store.fence()
                    view = {r.node_id: (r.state, r.epoch) for r in await store.cluster_view()}
                finally:
                    await store.close()
            assert (fence.epoch, fence.holder) == (epoch, "c1")
            assert view["c1"] == ("healthy", epoch)
            assert "w1" in view
            # The worker's lease view knows the primary too.
            assert w1.mesh is not None and w1.mesh.lease_view().primary == "c1"

            w1_stop.set()  # the only other voter leaves: no majority
            await wait_role(c1, "standby", timeout=5)
            writes = c1.mesh.primary.writes
            await trio.sleep(0.5)
            assert c1.mesh.primary.writes == writes  # the primary nursery is gone
    assert f"stepped down from epoch {epoch}" in caplog.text
