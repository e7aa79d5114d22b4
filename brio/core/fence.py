"""The fence rule: a primary's write is accepted only under the epoch the fence holds now.

The real stores implement it in SQL (``raise_fence`` and the conditional writes of
``brio.store``); the simulator's store uses this class, so the rule and its test-only switch
live in one place.
"""

from __future__ import annotations

from brio.core.lease import ALL_ON, SafetyKnobs


class Fence:
    def __init__(self, knobs: SafetyKnobs = ALL_ON) -> None:
        self.epoch = 0
        self.holder: str | None = None
        self._check = knobs.fence_check

    def raise_to(self, epoch: int, holder: str) -> bool:
        """Move the fence up to ``epoch``; refused unless it is higher than the current one."""
        if epoch <= self.epoch:
            return False
        self.epoch, self.holder = epoch, holder
        return True

    def admits(self, epoch: int) -> bool:
        """May a write under ``epoch`` land now?"""
        return epoch == self.epoch or not self._check
