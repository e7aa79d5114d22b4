"""``Loads``: the primary's count of each node's tasks stays an upper bound of the real load,
whatever order reads, placements, finishes and their reports come in; and it is exact when
nothing is lost.

The state machine keeps the real world beside the count: which tasks are on which node (the
store), the placements decided and not yet landed, and the finish reports still travelling.
A report may arrive once, twice, naming the wrong node, late (after a read that already saw
the finish), or never; a task may also leave its node with no report at all (a cancel, a
requeue). Reads wait for the placements in flight, as the placer's rounds do (a read that
missed a task landing after it would count too low: hypothesis finds that at once without
the precondition). After every step no node's count is below its real load. When no placement has
failed to land, no task has left without a report and every report has arrived (in any
order, any number of times), the count equals the real load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from brio.core.loads import Loads

NODES = ("w1", "w2", "w3")


@dataclass
class Pending:
    node_id: str
    generation: int


class LoadsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loads = Loads()
        self.on: dict[str, str] = {}  # task -> node, in the store
        self.pending: list[Pending] = []  # decided, not yet landed
        self.reports: list[tuple[str, str]] = []  # (node, task) finishes not yet told
        self.last_id = 0
        self.lossy = False  # something left the count too high for good (until a read)

    def _real(self) -> Counter[str]:
        return Counter(self.on.values())

    @precondition(lambda self: not self.pending)  # a round waits for the inserts in flight
    @rule(assign=st.lists(st.sampled_from(NODES), max_size=4))
    def read(self, assign: list[str]) -> None:
        """A round: the store's tasks per node, and the count its plan leaves: that, plus
        ``assign`` (its assignments, which then land or not like any placement)."""
        ids: dict[str, list[str]] = {}
        for task, node_id in self.on.items():
            ids.setdefault(node_id, []).append(task)
        count = self._real()
        count.update(assign)
        self.loads.reset({n: count[n] for n in NODES}, ids)
        self.lossy = False  # the read is the truth again
        self.pending = [Pending(n, self.loads.generation) for n in assign]

    @rule(node_id=st.sampled_from(NODES))
    def decide(self, node_id: str) -> None:
        if self.loads.get(node_id) is None:
            return  # unknown load: the placer does not place there
        self.loads.reserve(node_id)
        self.pending.append(Pending(node_id, self.loads.generation))

    @precondition(lambda self: self.pending)
    @rule(index=st.integers(min_value=0), lands=st.booleans())
    def land(self, index: int, lands: bool) -> None:
        placement = self.pending.pop(index % len(self.pending))
        if not lands:  # the fence moved, or the key was a replay: counted, never there
            self.lossy = True
            return
        self.last_id += 1
        task = f"t{self.last_id}"
        self.on[task] = placement.node_id
        self.loads.placed(placement.node_id, task, placement.generation)

    @precondition(lambda self: self.on)
    @rule(index=st.integers(min_value=0), reported=st.booleans())
    def finish(self, index: int, reported: bool) -> None:
        task = sorted(self.on)[index % len(self.on)]
        node_id = self.on.pop(task)
        if reported:
            self.reports.append((node_id, task))
        else:  # a cancel or a requeue: no report
            self.lossy = True

    @precondition(lambda self: self.reports)
    @rule(
        index=st.integers(min_value=0),
        how=st.sampled_from(["once", "twice", "wrong node", "lost"]),
    )
    def report(self, index: int, how: str) -> None:
        node_id, task = self.reports.pop(index % len(self.reports))
        if how == "lost":
            self.lossy = True
            return
        if how == "wrong node":
            other = NODES[(NODES.index(node_id) + 1) % len(NODES)]
            assert not self.loads.finished(other, task)
            self.reports.append((node_id, task))  # and the right one still comes
            return
        self.loads.finished(node_id, task)
        if how == "twice":
            assert not self.loads.finished(node_id, task)

    @invariant()
    def never_below_the_real_load(self) -> None:
        real = self._real()
        for node_id in NODES:
            count = self.loads.get(node_id)
            if count is not None:
                assert count >= real[node_id], (node_id, count, real[node_id])

    @invariant()
    def exact_when_nothing_is_lost(self) -> None:
        if self.lossy or self.pending or self.reports or self.loads.get(NODES[0]) is None:
            return
        real = self._real()
        assert {n: self.loads.get(n) for n in NODES} == {n: real[n] for n in NODES}


TestLoads = LoadsMachine.TestCase
TestLoads.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_an_unknown_load_stays_unknown_and_frees_nothing() -> None:
    loads = Loads()
    assert loads.get("w1") is None
    assert not loads.finished("w1", "t1")
    loads.reset({"w1": 1}, {"w1": ["t1"], "gone": ["t2"]})  # "gone" is not a candidate
    assert not loads.finished("gone", "t2")
    assert loads.finished("w1", "t1") and loads.get("w1") == 0
    loads.clear()
    assert loads.get("w1") is None and loads.get("gone") is None
