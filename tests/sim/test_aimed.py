"""Aimed faults (``sim.chaos``): the default mix strikes at the lease's races when the live
state offers them, and so finds a real lease bug that random faults did not.

The bug is one of the mutants the issue lists, made here from the real source by a one-line
edit (``mutant_lease``) and handed to the simulated nodes: *timing the lease from when the
answers arrive rather than when the round was sent*. With aimed faults the default mix finds
it within a few dozen seeds; without them 0 of 200 default seeds did (docs/simulator.md,
*Aimed faults*, has the measured table). With every measure on and the real core, the same
aimed mix finds nothing: ``test_aimed_faults_all_measures_on``, which ``just mutate`` also
runs against every mutant of the lease core.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import brio.core.lease
import sim.chaos
import sim.node
from sim.config import SimConfig
from sim.world import run_seed
from tests.sim.test_teeth import first_violation

LEASE_ONLY = SimConfig(task_rate=0.0)
#: The production timings before issue 12 target 4 (lease 5 s, elections 1-2.5 s). A late
#: answer is aimed at the next round to leave, a renewal whenever there is a primary; with the
#: 0.15-0.45 s election timeouts of now the cluster is so seldom without one that no aim hit
#: an election round with the mutant below in 200 seeds (with 3 s and 1-2.5 s: seed 52; with
#: these: seed 6). Aiming at elections on purpose would bring it back to the defaults.
SLOW_ELECTIONS = replace(LEASE_ONLY, lease_duration=5.0, election_timeout=(1.0, 2.5))
CROWDED = SimConfig(nodes=7, coordinators=5, election_timeout=(0.1, 0.3), task_rate=0.0)


def mutant_lease(old: str, new: str) -> type[brio.core.lease.Lease]:
    """``brio.core.lease.Lease`` with the one line ``old`` of its source replaced by ``new``;
    everything else (messages, actions) is the real module's, so the simulator matches them."""
    source = Path(brio.core.lease.__file__).read_text()
    assert source.count(old) == 1, old
    module = types.ModuleType("brio.core.lease_mutant")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile(source.replace(old, new), "<lease mutant>", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    for name, value in vars(brio.core.lease).items():
        if name != "Lease" and not name.startswith("__"):
            module.__dict__[name] = value
    lease: type[brio.core.lease.Lease] = module.Lease
    return lease


def test_aimed_faults_all_measures_on() -> None:
    """A CI-sized run of the aimed mix with the real core: no violation, and the aims fired."""
    aims: Counter[str] = Counter()
    for config, seeds in ((LEASE_ONLY, range(1000, 1030)), (CROWDED, range(1000, 1030))):
        for seed in seeds:
            result = run_seed(config, seed)
            assert result.violation is None, (seed, result.violation, result.trace[-40:])
            assert result.primary_after_heal is not None, seed
            aims.update({k: v for k, v in result.faults.items() if k.startswith("aimed")})
    assert aims["aimed: late answers"] > 5 and aims["aimed: held votes"] > 5, aims


@pytest.mark.parametrize(
    ("old", "new", "config"),
    [
        pytest.param(
            "until = self._lease_end(current.start)",
            "until = self._lease_end(now)",
            LEASE_ONLY,
            id="renewal-timed-from-the-answers",
        ),
        pytest.param(
            "until = self._lease_end(self._rounds[round_id].start)",
            "until = self._lease_end(now)",
            SLOW_ELECTIONS,
            id="election-timed-from-the-answers",
        ),
    ],
)
def test_aimed_faults_find_a_lease_timed_from_the_answers(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str, config: SimConfig
) -> None:
    # Measured: the first violating seed is 0 for the renewal (then 5, 6) with the default
    # timings, 6 for the election with SLOW_ELECTIONS; 0 of 200 seeds without aiming. The
    # bound leaves room for a change in the draws.
    monkeypatch.setattr(sim.node, "Lease", mutant_lease(old, new))
    found = first_violation(config, 60)
    assert found is not None
    assert found.violation is not None and found.violation.invariant == "two-primaries"
    assert any("aimed: " in line for line in found.trace), "found without an aimed fault"


def test_the_aimed_mix_is_what_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed and mutant without aiming runs clean: the aim made the difference."""
    monkeypatch.setattr(
        sim.node,
        "Lease",
        mutant_lease("until = self._lease_end(current.start)", "until = self._lease_end(now)"),
    )
    found = first_violation(LEASE_ONLY, 60)
    assert found is not None
    monkeypatch.setattr(sim.chaos, "AIMED", False)
    assert run_seed(LEASE_ONLY, found.seed).violation is None
