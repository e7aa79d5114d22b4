"""The CI run: a few hundred seeds of every fault (but drift beyond the bound), every safety
measure on, tasks included. Zero violations, and liveness (a primary, membership, every task
finished) held in every seed after the heal.

Four shapes: the default cluster (5 nodes, 3 candidates, production timings), a crowded,
hurried one (7 nodes, 5 candidates, elections ten times faster) where campaigns interleave
within one round trip: the race behind ``tests/sim/test_core_findings.py``, and three nodes
losing their disks across partitions, where a node without a record must learn the terms
before it votes (``no-amnesia-guard`` in ``test_teeth.py``); and two coordinators with the
store's witness as the third voter, cut off from the store at times (``--witness``). Both
the default cluster and the witness's also run with graceful stops (``stop``: the primary
hands the lease over, then exits) in the mix, which the default mix leaves out.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.config import Fault, SimConfig
from sim.world import run_seed

# Tasks cost about 70 % more CPU per seed; to keep CI's added CPU near a minute, half of the
# default and crowded seeds run with tasks and the other half without (``task_rate=0``: the
# lease and membership exactly as before tasks, same traces), each part within the per-test
# timeout on a busy machine.
CROWDED = SimConfig(nodes=7, coordinators=5, election_timeout=(0.1, 0.3))
WITNESS = SimConfig(nodes=2, coordinators=2, witness=True, task_capacity=4)
#: Every fault but drift beyond the bound, and graceful stops (``Fault.STOP``) among them.
WITH_STOPS = tuple(f for f in Fault if f is not Fault.DRIFT_BEYOND)
SHAPES = {
    "default": (SimConfig(), range(0, 250)),
    "default-lease": (SimConfig(task_rate=0.0), range(250, 500)),
    "crowded": (CROWDED, range(0, 100)),
    "crowded-lease": (replace(CROWDED, task_rate=0.0), range(100, 200)),
    "disk-loss": (
        SimConfig(nodes=3, coordinators=2, faults=(Fault.PARTITION, Fault.DISK_LOSS)),
        range(150),
    ),
    # The guide's two coordinators with the store as the third voter (brio.core.witness),
    # every fault and store cuts; four slots a node, so that two nodes still run many tasks.
    "witness": (WITNESS, range(120)),
    "stop": (SimConfig(faults=WITH_STOPS), range(500, 600)),
    "stop-witness": (replace(WITNESS, faults=WITH_STOPS), range(200, 280)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_mixed_faults_all_measures_on(shape: str) -> None:
    config, seeds = SHAPES[shape]
    failovers = tasks = 0
    for seed in seeds:
        result = run_seed(config, seed)
        assert result.violation is None, (seed, result.violation, result.trace[-40:])
        assert result.primary_after_heal is not None, seed
        assert result.members_after_heal is not None, seed
        assert result.tasks_after_heal is not None or not config.tasks, seed
        assert result.primary_after_heal <= config.primary_bound
        assert result.members_after_heal <= config.membership_bound
        assert result.tasks_after_heal is None or result.tasks_after_heal <= config.task_bound
        assert result.tasks_completed <= result.executions
        failovers += len(result.failovers)
        tasks += result.tasks_completed
    assert failovers > len(seeds)  # the faults did take primaries away
    assert tasks > 50 * len(seeds) or not config.tasks  # and tasks ran through them
