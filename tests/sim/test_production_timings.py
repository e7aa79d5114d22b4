"""The simulator's default shape runs production's lease timings: its figures (failover
p50/p90/p99, docs/simulator.md) and the CI shapes built on ``SimConfig()`` speak of what ships."""

from __future__ import annotations

from brio.config.model import LeaseConfig
from sim.config import SimConfig


def test_sim_defaults_are_the_lease_config_defaults() -> None:
    production, sim = LeaseConfig(), SimConfig()
    assert sim.lease_duration == production.lease_duration
    assert sim.election_timeout == production.election_timeout
    assert sim.max_clock_drift == production.max_clock_drift
