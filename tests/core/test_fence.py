"""The fence rule: it only rises, it admits the current epoch alone, and its test-only switch.

The state machine at the end raises the fence and asks it about writes in any order, against a
model (the highest epoch raised so far, and who raised it).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from brio.core.fence import Fence
from brio.core.lease import ALL_ON, SafetyKnobs


def test_a_new_fence_is_at_epoch_0_held_by_nobody() -> None:
    fence = Fence()
    assert (fence.epoch, fence.holder) == (0, None)
    assert fence.admits(0)
    assert not fence.admits(1)


def test_the_fence_rises() -> None:
    fence = Fence()
    assert fence.raise_to(1, "a")
    assert (fence.epoch, fence.holder) == (1, "a")
    assert fence.raise_to(5, "b")  # epochs may be skipped: lost elections use terms up
    assert (fence.epoch, fence.holder) == (5, "b")


@pytest.mark.parametrize("epoch", [3, 2, 0, -1])
def test_the_fence_never_falls_or_changes_hands_at_the_same_epoch(epoch: int) -> None:
    fence = Fence()
    assert fence.raise_to(3, "a")
    assert not fence.raise_to(epoch, "b")
    assert (fence.epoch, fence.holder) == (3, "a")


def test_the_fence_admits_only_the_current_epoch() -> None:
    fence = Fence()
    fence.raise_to(2, "a")
    assert fence.admits(2)
    assert not fence.admits(1)  # a deposed primary
    assert not fence.admits(0)
    assert not fence.admits(3)  # an epoch nobody raised the fence to yet
    fence.raise_to(3, "b")
    assert fence.admits(3)
    assert not fence.admits(2)  # the old primary, the moment the new one raised the fence


def test_without_the_check_the_fence_admits_anything() -> None:
    fence = Fence(SafetyKnobs(fence_check=False))
    fence.raise_to(4, "a")
    assert all(fence.admits(epoch) for epoch in (-1, 0, 3, 4, 5, 100))
    # Raising is unchanged: only the check is switched off.
    assert not fence.raise_to(4, "b")
    assert (fence.epoch, fence.holder) == (4, "a")


def test_other_knobs_leave_the_check_on() -> None:
    fence = Fence(SafetyKnobs(persist_votes=False, drift_margin=False, restart_wait=False))
    fence.raise_to(1, "a")
    assert not fence.admits(0)
    assert Fence(ALL_ON).admits(0)


class FenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fence = Fence()
        self.unchecked = Fence(SafetyKnobs(fence_check=False))
        self.epoch = 0
        self.holder: str | None = None

    @rule(epoch=st.integers(-2, 12), holder=st.sampled_from(("a", "b", "c")))
    def raise_to(self, epoch: int, holder: str) -> None:
        raised = self.fence.raise_to(epoch, holder)
        assert self.unchecked.raise_to(epoch, holder) == raised
        assert raised == (epoch > self.epoch)
        if raised:
            self.epoch, self.holder = epoch, holder

    @rule(epoch=st.integers(-2, 12))
    def write(self, epoch: int) -> None:
        assert self.fence.admits(epoch) == (epoch == self.epoch)
        assert self.unchecked.admits(epoch)

    @invariant()
    def matches_the_model(self) -> None:
        assert (self.fence.epoch, self.fence.holder) == (self.epoch, self.holder)
        assert (self.unchecked.epoch, self.unchecked.holder) == (self.epoch, self.holder)


def test_fence_state_machine() -> None:
    run_state_machine_as_test(
        FenceMachine,
        settings=settings(
            max_examples=100, stateful_step_count=30, derandomize=True, database=None
        ),
    )
