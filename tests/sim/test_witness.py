"""The simulator with the store's witness voter (``--witness``): two coordinators, three voters.

- Liveness, the point of the witness: with one coordinator crashed for good, the other is
  elected, fences the store and keeps the lease (two voters alone could not: the same run
  without the witness elects nobody after the crash).
- The witness is judged like any voter: its grants go to the ``double-vote`` record, and the
  store cuts (``store-cut``) show in the fault counts and the trace.
"""

from __future__ import annotations

from dataclasses import replace

from brio.core.constants import WITNESS_ID
from sim.config import SimConfig
from sim.world import World

QUIET = SimConfig(nodes=2, coordinators=2, witness=True, faults=(), task_rate=0.0)
CRASH_AT = 30.0


def crash_the_primary_for_good(config: SimConfig, seed: int) -> tuple[World, str, list[str]]:
    """Run ``seed`` with the primary crashed at ``CRASH_AT`` (never restarted before the
    heal); the names of the nodes that were primary a ``primary_bound`` later."""
    world = World(config, seed, keep_trace=True)
    killed: list[str] = []
    later: list[str] = []

    def crash() -> None:
        primary = world.current_primary()
        assert primary is not None, "no primary before the crash"
        killed.append(primary.name)
        world.crash_now(primary, "crashes for good")

    def look() -> None:
        later.extend(n.name for n in world.nodes.values() if n.fenced and n.work_epoch is not None)

    world.loop.at(CRASH_AT, crash)
    world.loop.at(CRASH_AT + config.primary_bound, look)
    assert CRASH_AT + config.primary_bound < config.fault_end  # judged before the heal
    result = world.run()
    assert result.violation is None, result.violation
    return world, killed[0], later


def test_the_survivor_is_elected_when_a_coordinator_dies_for_good() -> None:
    for seed in range(10):
        _, killed, later = crash_the_primary_for_good(QUIET, seed)
        survivor = "c2" if killed == "c1" else "c1"
        assert later == [survivor], (seed, killed, later)


def test_without_the_witness_nobody_is_elected_after_the_crash() -> None:
    for seed in range(3):
        _, _, later = crash_the_primary_for_good(replace(QUIET, witness=False), seed)
        assert later == [], (seed, later)


def test_the_witness_votes_are_recorded_and_store_cuts_happen() -> None:
    config = SimConfig(nodes=2, coordinators=2, witness=True, task_rate=0.0)
    world = World(config, 1, keep_trace=True)
    result = world.run()
    assert result.violation is None
    assert result.faults.get("store-cut", 0) > 0
    assert any("store-cut: c" in line for line in result.trace)
    granted = [line for line in result.trace if WITNESS_ID in line and "vote reply" in line]
    assert any(" granted" in line and "pre-vote" not in line for line in granted)
