"""The CI run: a few hundred seeds of every fault (but drift beyond the bound), every safety
measure on. Zero violations, and liveness held in every seed after the heal.

Three shapes: the default cluster (5 nodes, 3 candidates, production timings), a crowded,
hurried one (7 nodes, 5 candidates, elections ten times faster) where campaigns interleave
within one round trip: the race behind ``tests/sim/test_core_findings.py``, and three nodes
losing their disks across partitions, where a node without a record must learn the terms
before it votes (``no-amnesia-guard`` in ``test_teeth.py``).
"""

from __future__ import annotations

import pytest

from sim.config import Fault, SimConfig
from sim.world import run_seed

SHAPES = {
    # about 25 s on one core of the 2-core CI machine
    "default": (SimConfig(), 500),
    "crowded": (SimConfig(nodes=7, coordinators=5, election_timeout=(0.1, 0.3)), 200),
    "disk-loss": (
        SimConfig(nodes=3, coordinators=2, faults=(Fault.PARTITION, Fault.DISK_LOSS)),
        150,
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_mixed_faults_all_measures_on(shape: str) -> None:
    config, seeds = SHAPES[shape]
    failovers = 0
    for seed in range(seeds):
        result = run_seed(config, seed)
        assert result.violation is None, (seed, result.violation, result.trace[-40:])
        assert result.primary_after_heal is not None, seed
        assert result.members_after_heal is not None, seed
        assert result.primary_after_heal <= config.primary_bound
        assert result.members_after_heal <= config.membership_bound
        failovers += len(result.failovers)
    assert failovers > seeds  # the faults did take primaries away
