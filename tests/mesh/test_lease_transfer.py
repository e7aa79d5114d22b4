"""``LeaseDriver.transfer`` (a graceful stop) with three drivers in virtual time.

The cluster of ``test_lease_clock.py``: each driver's transport hands the wire form of its
messages (a release is a ``Renew`` with ``release`` set) to the peer driver, 2 ms each way.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from brio.core import lease as core
from brio.mesh import methods, pb
from brio.mesh.lease import TRANSFER_WAIT, _to_pb, renew_request_from
from brio.mesh.lease_state import load_lease_state
from tests.mesh.test_lease_clock import CONFIG, ELECTION_BOUND, cluster, no_overlap, until_primary


async def test_a_stopping_primary_hands_the_lease_over_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as net:
        old = await until_primary(net, ELECTION_BOUND)
        epoch = net.drivers[old].view().epoch
        assert epoch is not None
        await trio.sleep(CONFIG.lease_duration / 2)  # a renewal or two: the promises stand
        started = trio.current_time()
        await net.drivers[old].transfer()
        returned = trio.current_time() - started
        new = await until_primary(net, CONFIG.lease_duration, not_=old)
        took = trio.current_time() - started
        print(f"handover: transfer returned after {returned:.3f} s, {new} primary at {took:.3f} s")
        assert took < CONFIG.lease_duration / 5  # not the promises running out (5 s)
        assert returned < TRANSFER_WAIT  # it saw the newer term, no need to wait the whole bound
        new_epoch = net.drivers[new].view().epoch
        assert new_epoch == epoch + 1
        # the old work had ended before the new began, and the old primary never comes back
        (first, second) = net.work
        assert first.node == old and first.cancelled and second.node == new
        no_overlap(net.work)
        await trio.sleep(3 * CONFIG.lease_duration)
        assert net.primaries() == [new]
        assert net.drivers[old].view().primary == new
        retired = net.drivers[old].core
        assert retired is not None and retired.retired
    saved = load_lease_state(tmp_path / old)
    assert saved is not None and saved.term == epoch + 1  # it voted (or heard) in the new term


async def test_a_standby_that_stops_hands_nothing_over_and_the_primary_stays(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with cluster(tmp_path) as net:
        primary = await until_primary(net, ELECTION_BOUND)
        standby = next(n for n in net.drivers if n != primary)
        await net.drivers[standby].transfer()
        await trio.sleep(2 * CONFIG.lease_duration)
        assert net.primaries() == [primary]
        assert len(net.work) == 1


def test_a_release_travels_as_a_renew_with_release_set() -> None:
    release = core.Release(7, "c1", 12, "abc", "c2")
    method, request = _to_pb(release)
    assert method == methods.RENEW
    assert isinstance(request, pb.LeaseRenewRequest)
    assert (request.release, request.successor) == (True, "c2")
    assert renew_request_from(request) == release
    plain = pb.LeaseRenewRequest(term=7, leader="c1", round=12, voters_digest="abc")
    assert renew_request_from(plain) == core.RenewRequest(7, "c1", 12, "abc")
