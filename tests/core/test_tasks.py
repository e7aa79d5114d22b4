"""The task lifecycle table: the properties the store's conditional updates rely on."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from brio.core.tasks import TERMINAL, TaskStatus, can_transition, predecessors

statuses = st.sampled_from(list(TaskStatus))


@given(statuses, statuses)
def test_predecessors_agree_with_can_transition(a: TaskStatus, b: TaskStatus) -> None:
    assert (a in predecessors(b)) == can_transition(a, b)


@given(st.lists(statuses, max_size=30))
def test_no_walk_leaves_a_terminal_state(walk: list[TaskStatus]) -> None:
    state = TaskStatus.QUEUED
    for nxt in walk:
        if can_transition(state, nxt):
            assert not state.terminal
            state = nxt
    if state.terminal:
        assert all(not can_transition(state, s) for s in TaskStatus)


def test_the_designed_path_is_allowed() -> None:
    path = [TaskStatus.QUEUED, TaskStatus.ASSIGNED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]
    assert all(can_transition(a, b) for a, b in itertools.pairwise(path))


def test_requeue_only_from_assigned_or_running() -> None:
    assert predecessors(TaskStatus.QUEUED) == {TaskStatus.ASSIGNED, TaskStatus.RUNNING}


def test_every_live_state_can_be_cancelled() -> None:
    live = set(TaskStatus) - TERMINAL
    assert predecessors(TaskStatus.CANCELLED) == live
