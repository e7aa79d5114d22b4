"""The CI run: a few hundred seeds of every fault (but drift beyond the bound), every safety
measure on. Zero violations, and liveness held in every seed after the heal."""

from __future__ import annotations

from sim.config import SimConfig
from sim.world import run_seed

SEEDS = 300  # about 15 s on one core of the 2-core CI machine


def test_mixed_faults_all_measures_on() -> None:
    config = SimConfig()
    failovers = 0
    for seed in range(SEEDS):
        result = run_seed(config, seed)
        assert result.violation is None, (seed, result.violation, result.trace[-40:])
        assert result.primary_after_heal is not None, seed
        assert result.members_after_heal is not None, seed
        assert result.primary_after_heal <= config.primary_bound
        assert result.members_after_heal <= config.membership_bound
        failovers += len(result.failovers)
    assert failovers > SEEDS  # the faults did take primaries away
