"""Properties of the lease core that the mutation run (``just mutate``, docs/simulator.md)
showed no other test pinned down: each test here kills mutants of ``brio/core/lease.py`` that
survived ``tests/core/test_lease.py`` and CI's simulator seeds.

``test_the_state_machine_in_brief`` is ``tests/core/test_lease.py``'s state machine with fewer
examples: the mutation run deselects the long one and runs this one per mutant.
"""

from __future__ import annotations

from tests.core.test_lease import run_lease_machine


def test_the_state_machine_in_brief() -> None:
    run_lease_machine(max_examples=80)
