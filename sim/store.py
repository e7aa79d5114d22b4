"""The simulated database: one actor holding the fence, and the log of what it accepted.

It uses the very ``brio.core.fence.Fence`` whose rule the real stores implement in SQL, so the
``no-fence-check`` knob switches off the same check here as in the rule's one home.
"""

from __future__ import annotations

from dataclasses import dataclass

from brio.core.fence import Fence
from brio.core.lease import SafetyKnobs


@dataclass(frozen=True)
class Accepted:
    """One entry of the store's log, in the order the store accepted them."""

    time: float  # true time
    node: str
    epoch: int
    kind: str  # "raise" or "write"


@dataclass(frozen=True)
class Answer:
    ok: bool
    fence_epoch: int  # the fence after the request: what a refused primary learns


class Store:
    def __init__(self, knobs: SafetyKnobs) -> None:
        self.fence = Fence(knobs)
        self.log: list[Accepted] = []

    def raise_fence(self, now: float, node: str, epoch: int) -> Answer:
        """Raise the fence to ``epoch`` for ``node``.

        A retried raise whose first attempt landed (its reply lost) finds the fence already at
        its epoch: the real driver reads the fence back and sees itself as the holder, so this
        answers yes without logging a second raise.
        """
        if self.fence.raise_to(epoch, node):
            self.log.append(Accepted(now, node, epoch, "raise"))
            return Answer(True, epoch)
        mine = self.fence.epoch == epoch and self.fence.holder == node
        return Answer(mine, self.fence.epoch)

    def write(self, now: float, node: str, epoch: int) -> Answer:
        """A primary's fenced write: it lands only while the fence holds its epoch."""
        if not self.fence.admits(epoch):
            return Answer(False, self.fence.epoch)
        self.log.append(Accepted(now, node, epoch, "write"))
        return Answer(True, self.fence.epoch)
