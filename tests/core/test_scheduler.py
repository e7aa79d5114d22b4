"""The scheduler: placement rules and wait reasons by example, then properties over random
clusters, queues and settings checked against an independent statement of who may take a task.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from brio.core.balancer import HashRing
from brio.core.scheduler import (
    Assign,
    Candidate,
    Plan,
    QueuedTask,
    Scheduler,
    SchedulerSettings,
    Wait,
)

PROPS = settings(max_examples=70, deadline=None)


def node(
    node_id: str,
    agents: Sequence[str] = ("echo",),
    capacity: int = 4,
    load: int = 0,
    **kw: object,
) -> Candidate:
    return replace(Candidate(node_id, frozenset(agents), capacity, load), **kw)  # type: ignore[arg-type]


def task(task_id: str, agent: str = "echo", **kw: object) -> QueuedTask:
    return replace(QueuedTask(task_id, agent, attempt=1), **kw)  # type: ignore[arg-type]


def sched(**kw: object) -> Scheduler:
    return Scheduler(SchedulerSettings(**kw))  # type: ignore[arg-type]


def placed(plan: Plan) -> dict[str, str]:
    return {a.task_id: a.node_id for a in plan.assignments}


def reasons(plan: Plan) -> dict[str, str]:
    return {w.task_id: w.reason for w in plan.waits}


def only_wait(plan: Plan) -> Wait:
    assert plan.assignments == []
    [wait] = plan.waits
    return wait


# -- ordering and capacity -----------------------------------------------------------------


def test_priority_first_then_age() -> None:
    s = sched()
    queue = [
        task("old-low", seq=1),
        task("new-high", seq=5, priority=2),
        task("old-high", seq=2, priority=2),
        task("newer-low", seq=3),
    ]
    plan = s.plan(queue, [node("w1", capacity=3)], now=0.0)
    assert [a.task_id for a in plan.assignments] == ["old-high", "new-high", "old-low"]
    assert plan.waits == [
        Wait("newer-low", "every node that runs agent 'echo' is at capacity (w1 3/3)", True)
    ]


def test_assign_carries_the_attempt() -> None:
    plan = sched().plan([replace(task("t"), attempt=3)], [node("w1")], now=0.0)
    assert plan.assignments == [Assign("t", "w1", 3)]


def test_round_robin_spreads_over_equal_nodes_and_across_plans() -> None:
    s = sched()
    nodes = [node(f"w{i}", capacity=100) for i in (1, 2, 3)]
    first = s.plan([task(f"a{i}") for i in range(4)], nodes, now=0.0)
    assert list(placed(first).values()) == ["w1", "w2", "w3", "w1"]
    second = s.plan([task("b")], nodes, now=1.0)
    assert placed(second) == {"b": "w2"}  # the cursor carries over


def test_least_connections_counts_this_plans_assignments() -> None:
    s = sched(strategy="least-connections")
    nodes = [node("w1", load=2, capacity=10), node("w2", load=0, capacity=10)]
    plan = s.plan([task(f"t{i}") for i in range(4)], nodes, now=0.0)
    assert collections.Counter(placed(plan).values()) == {"w2": 3, "w1": 1}


def test_weighted_follows_weights_and_skips_weight_zero() -> None:
    s = sched(strategy="weighted", weights={"w1": 2, "w3": 0})
    nodes = [node(f"w{i}", capacity=100) for i in (1, 2, 3)]
    plan = s.plan([task(f"t{i}") for i in range(9)], nodes, now=0.0)
    assert collections.Counter(placed(plan).values()) == {"w1": 6, "w2": 3}


def test_all_weight_zero_waits() -> None:
    s = sched(strategy="weighted", weights={"w1": 0, "w2": 0})
    wait = only_wait(s.plan([task("t")], [node("w1"), node("w2")], now=0.0))
    assert wait == Wait("t", "every node that runs agent 'echo' has weight 0 (w1, w2)")


def test_a_pinned_task_ignores_weight_zero() -> None:
    s = sched(strategy="weighted", weights={"w1": 0})
    plan = s.plan([task("t", target_node="w1")], [node("w1")], now=0.0)
    assert placed(plan) == {"t": "w1"}


def test_consistent_hash_without_affinity_hashes_sessions_and_rotates_the_rest() -> None:
    s = sched(strategy="consistent-hash")
    nodes = [node(f"w{i}", capacity=100) for i in (1, 2, 3)]
    ids = ["w1", "w2", "w3"]
    queue = [task(f"s{i}", session_id=f"sess-{i}", seq=i) for i in range(6)]
    plan = s.plan([*queue, task("x", seq=10), task("y", seq=11)], nodes, now=0.0)
    ring = HashRing()
    for i in range(6):
        assert placed(plan)[f"s{i}"] == ring.node_for(f"sess-{i}", ids)
    assert (placed(plan)["x"], placed(plan)["y"]) == ("w1", "w2")
    assert s.sticky_sessions() == 0  # no stickiness without session_affinity


# -- who may take a task, and the reasons when nobody may ------------------------------------


def test_no_node_runs_the_agent() -> None:
    wait = only_wait(sched().plan([task("t", "coder")], [node("w1")], now=0.0))
    assert wait == Wait("t", "no node runs agent 'coder'")
    assert only_wait(sched().plan([task("t")], [], now=0.0)).reason == "no node runs agent 'echo'"


def test_no_healthy_node() -> None:
    nodes = [node("w1", ["coder"], healthy=False), node("w2", ["coder"], healthy=False)]
    wait = only_wait(sched().plan([task("t", "coder")], nodes, now=0.0))
    assert wait.reason == "no healthy node runs agent 'coder' (w1, w2 are not healthy)"
    assert not wait.for_capacity


def test_every_node_draining() -> None:
    wait = only_wait(sched().plan([task("t")], [node("w1", draining=True)], now=0.0))
    assert wait.reason == "every node that runs agent 'echo' is draining (w1)"


def test_draining_and_unhealthy_together() -> None:
    nodes = [node("w1", draining=True), node("w2", healthy=False)]
    wait = only_wait(sched().plan([task("t")], nodes, now=0.0))
    assert wait.reason == (
        "no node that runs agent 'echo' takes new tasks: w1 is draining; w2 is not healthy"
    )


def test_draining_and_unhealthy_nodes_are_skipped() -> None:
    nodes = [node("w1", draining=True), node("w2", healthy=False), node("w3")]
    plan = sched().plan([task(f"t{i}") for i in range(3)], nodes, now=0.0)
    assert set(placed(plan).values()) == {"w3"}


def test_every_node_at_capacity_lists_them() -> None:
    nodes = [node("w1", capacity=2, load=2), node("w2", capacity=1, load=3), node("w3", ["x"])]
    wait = only_wait(sched().plan([task("t")], nodes, now=0.0))
    assert wait == Wait(
        "t", "every node that runs agent 'echo' is at capacity (w1 2/2, w2 3/1)", True
    )


def test_at_capacity_also_says_why_the_other_nodes_were_left_out() -> None:
    s = sched(strategy="weighted", weights={"w4": 0})
    nodes = [
        node("w1", load=4),
        node("w2", draining=True),
        node("w3", healthy=False),
        node("w4"),
        node("w5", healthy=False, draining=True),
    ]
    wait = only_wait(s.plan([task("t")], nodes, now=0.0))
    assert wait.reason == (
        "every node that runs agent 'echo' is at capacity (w1 4/4); w2 is draining; "
        "w3, w5 are not healthy; w4 has weight 0"
    )


def test_each_agent_rotates_on_its_own() -> None:
    # One shared cursor would send every 'echo' to w1 and every 'coder' to w2.
    s = sched()
    nodes = [node("w1", ["echo", "coder"], 100), node("w2", ["echo", "coder"], 100)]
    queue = [task(f"t{i}", ["echo", "coder"][i % 2], seq=i) for i in range(8)]
    plan = s.plan(queue, nodes, now=0.0)
    by_agent = collections.Counter((t.agent, placed(plan)[t.task_id]) for t in queue)
    assert by_agent == {
        ("echo", "w1"): 2,
        ("echo", "w2"): 2,
        ("coder", "w1"): 2,
        ("coder", "w2"): 2,
    }


def test_long_lists_are_cut_short() -> None:
    nodes = [node(f"w{i}", load=4) for i in range(8)]
    wait = only_wait(sched().plan([task("t")], nodes, now=0.0))
    assert wait.reason.endswith("(w0 4/4, w1 4/4, w2 4/4, w3 4/4, w4 4/4 and 3 more)")


def test_node_affinity_limits_the_candidates() -> None:
    s = sched(node_affinity={"coder": frozenset({"gpu-1", "gpu-2"})})
    nodes = [node("gpu-1", ["coder"]), node("cpu-1", ["coder"]), node("gpu-2", ["coder"])]
    plan = s.plan([task(f"t{i}", "coder") for i in range(4)], nodes, now=0.0)
    assert set(placed(plan).values()) == {"gpu-1", "gpu-2"}
    # agents without an affinity entry go anywhere
    assert placed(s.plan([task("e")], [node("cpu-1")], now=0.0)) == {"e": "cpu-1"}


def test_node_affinity_with_no_live_allowed_node() -> None:
    s = sched(node_affinity={"coder": frozenset({"gpu-2", "gpu-1"})})
    wait = only_wait(s.plan([task("t", "coder")], [node("cpu-1", ["coder"])], now=0.0))
    assert wait.reason == (
        "node_affinity limits agent 'coder' to gpu-1, gpu-2, and no live node among them runs it"
    )


def test_coordinators_run_agents_unless_told_not_to() -> None:
    nodes = [node("c1", role="coordinator"), node("w1", load=4)]
    assert placed(sched().plan([task("t")], nodes, now=0.0)) == {"t": "c1"}
    s = sched(coordinators_run_agents=False)
    wait = only_wait(s.plan([task("t")], nodes, now=0.0))
    assert wait.reason == "every node that runs agent 'echo' is at capacity (w1 4/4)"
    wait = only_wait(s.plan([task("t")], nodes[:1], now=0.0))
    assert wait.reason == (
        "only coordinators run agent 'echo' (c1), and coordinators_run_agents is false"
    )


@pytest.mark.parametrize(
    ("target", "nodes", "reason"),
    [
        ("w9", [node("w1")], "pinned to w9, which is not a live node"),
        ("w1", [node("w1", ["other"])], "pinned to w1, which does not run agent 'echo'"),
        ("w1", [node("w1", healthy=False)], "pinned to w1, which is not healthy"),
        ("w2", [node("w1"), node("w2", draining=True)], "pinned to w2, which is draining"),
        ("w1", [node("w1", load=4)], "pinned to w1, which is at capacity (4/4)"),
    ],
)
def test_pinned_waits(target: str, nodes: list[Candidate], reason: str) -> None:
    wait = only_wait(sched().plan([task("t", target_node=target)], nodes, now=0.0))
    assert wait.reason == reason
    assert wait.for_capacity == reason.endswith("(4/4)")


def test_a_pin_goes_only_to_its_node() -> None:
    nodes = [node("w1", capacity=1), node("w2", capacity=1)]
    queue = [task("a", target_node="w2"), task("b", target_node="w2", seq=1), task("c", seq=2)]
    plan = sched().plan(queue, nodes, now=0.0)
    assert placed(plan) == {"a": "w2", "c": "w1"}
    assert reasons(plan) == {"b": "pinned to w2, which is at capacity (1/1)"}


def test_a_pin_and_node_affinity_both_hold() -> None:
    s = sched(node_affinity={"coder": frozenset({"gpu-1"})}, coordinators_run_agents=False)
    nodes = [node("gpu-1", ["coder"]), node("cpu-1", ["coder"]), node("c1", role="coordinator")]
    plan = s.plan(
        [task("a", "coder", target_node="cpu-1"), task("b", target_node="c1", seq=1)], nodes, 0.0
    )
    assert reasons(plan) == {
        "a": "pinned to cpu-1, which the node_affinity of agent 'coder' does not allow "
        "(it allows gpu-1)",
        "b": "pinned to c1, a coordinator, and coordinators_run_agents is false",
    }


# -- session affinity ----------------------------------------------------------------------

SESSIONS = [f"sess-{i}" for i in range(60)]


def session_tasks(prefix: str, sessions: Sequence[str] = SESSIONS) -> list[QueuedTask]:
    return [task(f"{prefix}-{s}", session_id=s, seq=i) for i, s in enumerate(sessions)]


def test_a_session_sticks_within_the_ttl_even_when_the_ring_would_move_it() -> None:
    s = sched(session_affinity=True, affinity_ttl=100.0)
    two = [node("w1", capacity=1000), node("w2", capacity=1000)]
    three = [*two, node("w3", capacity=1000)]
    first = placed(s.plan(session_tasks("a"), two, now=0.0))
    ring = HashRing()
    would_move = [x for x in SESSIONS if ring.node_for(x, ["w1", "w2", "w3"]) == "w3"]
    assert would_move  # the newcomer would take some sessions from a fresh start
    # within the ttl, every session stays where it was, and each placement refreshes it
    later = placed(s.plan(session_tasks("b"), three, now=99.0))
    assert all(later[f"b-{x}"] == first[f"a-{x}"] for x in SESSIONS)
    again = placed(s.plan(session_tasks("c"), three, now=198.0))
    assert all(again[f"c-{x}"] == first[f"a-{x}"] for x in SESSIONS)
    # after the ttl without a placement, a session is hashed afresh (over three nodes now)
    fresh = placed(s.plan(session_tasks("d"), three, now=298.0))
    assert all(fresh[f"d-{x}"] == ring.node_for(x, ["w1", "w2", "w3"]) for x in SESSIONS)


def test_expired_stickiness_is_pruned() -> None:
    s = sched(session_affinity=True, affinity_ttl=10.0)
    s.plan(session_tasks("a"), [node("w1", capacity=1000)], now=0.0)
    assert s.sticky_sessions() == len(SESSIONS)
    assert s.stuck_to("sess-1", "echo") == "w1"
    s.plan(session_tasks("b", SESSIONS[:5]), [node("w1", capacity=1000)], now=5.0)
    s.plan([], [], now=10.0)
    assert s.sticky_sessions() == 5  # the five refreshed at 5.0 live until 15.0
    assert s.stuck_to("sess-1", "echo") == "w1"
    assert s.stuck_to("sess-9", "echo") is None
    s.plan([], [], now=15.0)
    assert s.sticky_sessions() == 0


def test_a_full_stuck_node_makes_the_task_wait() -> None:
    s = sched(session_affinity=True)
    nodes = [node("w1", capacity=100), node("w2", capacity=100)]
    home = placed(s.plan([task("a", session_id="S")], nodes, now=0.0))["a"]
    full = [replace(n, load=100) if n.node_id == home else n for n in nodes]
    plan = s.plan([task("b", session_id="S"), task("c", seq=1)], full, now=1.0)
    other = ({"w1", "w2"} - {home}).pop()
    assert placed(plan) == {"c": other}  # a sessionless task still uses the free node
    assert plan.waits == [
        Wait(
            "b",
            f"session 'S' is stuck to {home}, which is at capacity (100/100); "
            "it waits there rather than leave its history",
            True,
        )
    ]


def test_a_session_moves_when_its_node_stops_being_a_candidate_and_sticks_there() -> None:
    s = sched(session_affinity=True)
    nodes = [node("w1", capacity=100), node("w2", capacity=100)]
    home = placed(s.plan([task("a", session_id="S")], nodes, now=0.0))["a"]
    other = ({"w1", "w2"} - {home}).pop()
    sick = [replace(n, healthy=n.node_id != home) for n in nodes]
    assert placed(s.plan([task("b", session_id="S")], sick, now=1.0)) == {"b": other}
    assert s.stuck_to("S", "echo") == other
    # back to health, the session stays on its new node
    assert placed(s.plan([task("c", session_id="S")], nodes, now=2.0)) == {"c": other}


def test_stickiness_is_per_session_and_agent() -> None:
    s = sched(session_affinity=True)
    nodes = [node("w1", ["echo", "coder"], capacity=100), node("w2", ["coder"], capacity=100)]
    s.plan([task("a", session_id="S")], nodes, now=0.0)
    s.plan([task("b", "coder", session_id="S")], nodes, now=0.0)
    assert s.stuck_to("S", "echo") == "w1"
    assert s.stuck_to("S", "coder") == HashRing().node_for("S", ["w1", "w2"])


def test_pinned_session_tasks_leave_stickiness_alone() -> None:
    s = sched(session_affinity=True)
    nodes = [node("w1", capacity=100), node("w2", capacity=100)]
    home = placed(s.plan([task("a", session_id="S")], nodes, now=0.0))["a"]
    other = ({"w1", "w2"} - {home}).pop()
    assert placed(s.plan([task("b", session_id="S", target_node=other)], nodes, 1.0)) == {
        "b": other
    }
    assert s.stuck_to("S", "echo") == home


@settings(max_examples=20, deadline=None)
@given(
    ids=st.lists(st.sampled_from([f"w{i}" for i in range(8)]), min_size=2, unique=True),
    data=st.data(),
)
def test_node_down_moves_only_the_failed_nodes_sessions(
    ids: list[str], data: st.DataObject
) -> None:
    s = sched(session_affinity=True)
    nodes = [node(i, capacity=1000) for i in ids]
    before = placed(s.plan(session_tasks("a"), nodes, now=0.0))
    gone = data.draw(st.sampled_from(ids))
    s.node_down(gone, now=1.0)
    assert all(s.stuck_to(x, "echo") != gone for x in SESSIONS)
    after = placed(s.plan(session_tasks("b"), [n for n in nodes if n.node_id != gone], 2.0))
    for x in SESSIONS:
        if before[f"a-{x}"] == gone:
            assert after[f"b-{x}"] != gone
        else:
            assert after[f"b-{x}"] == before[f"a-{x}"]


# -- settings, inputs and time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"strategy": "random"}, "unknown strategy"),
        ({"affinity_ttl": -1.0}, "affinity_ttl"),
        ({"affinity_ttl": float("nan")}, "affinity_ttl"),
        ({"weights": {"w1": -2}}, "weight of 'w1'"),
    ],
)
def test_settings_are_checked(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SchedulerSettings(**kw)  # type: ignore[arg-type]


def test_duplicate_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        sched().plan([], [node("w1"), node("w1")], now=0.0)
    with pytest.raises(ValueError, match="queued twice"):
        sched().plan([task("t"), task("t")], [node("w1")], now=0.0)


def test_time_never_runs_backwards() -> None:
    s = sched(session_affinity=True, affinity_ttl=10.0)
    s.plan([task("a", session_id="S")], [node("w1")], now=100.0)
    s.plan([], [], now=5.0)  # an older now is taken as 100.0: S placed at 100 stays
    assert s.stuck_to("S", "echo") == "w1"
    s.plan([task("b", session_id="S")], [node("w1")], now=50.0)  # refreshed at 100.0
    s.plan([], [], now=110.0)
    assert s.sticky_sessions() == 0


# -- properties over random clusters ---------------------------------------------------------

NODE_IDS = ["c1", "w1", "w2", "w3", "w4"]
AGENTS = ["echo", "coder", "files"]

mostly = st.sampled_from([True, True, True, False])


@st.composite
def clusters(draw: st.DrawFn) -> list[Candidate]:
    """Each node present or not, mostly healthy and undrained, with a little room."""
    return [
        Candidate(
            node_id=node_id,
            agents=frozenset(a for a in AGENTS if draw(mostly)),
            capacity=draw(st.integers(0, 3)),
            load=draw(st.sampled_from([0, 0, 1, 2, 4])),
            role="coordinator" if node_id.startswith("c") else "worker",
            healthy=draw(mostly),
            draining=not draw(mostly),
        )
        for node_id in NODE_IDS
        if draw(mostly)
    ]


settings_st = st.builds(
    SchedulerSettings,
    strategy=st.sampled_from(["round-robin", "least-connections", "weighted", "consistent-hash"]),
    weights=st.dictionaries(st.sampled_from(NODE_IDS), st.integers(0, 3), max_size=2),
    node_affinity=st.dictionaries(
        st.sampled_from(AGENTS), st.frozensets(st.sampled_from(NODE_IDS), max_size=4), max_size=1
    ),
    session_affinity=st.booleans(),
    affinity_ttl=st.sampled_from([0.0, 5.0, 100.0]),
    coordinators_run_agents=st.booleans(),
)


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedTask]:
    n = draw(st.integers(0, 10))
    return [
        QueuedTask(
            task_id=f"t{i}",
            agent=draw(st.sampled_from(AGENTS)),
            attempt=draw(st.integers(1, 3)),
            priority=draw(st.integers(0, 2)),
            seq=draw(st.integers(0, 20)),
            session_id=draw(st.none() | st.sampled_from(["s1", "s2", "s3"])),
            target_node=draw(st.none() | st.none() | st.sampled_from([*NODE_IDS, "ghost"])),
        )
        for i in range(n)
    ]


def may_take(cfg: SchedulerSettings, t: QueuedTask, n: Candidate) -> bool:
    """Whether ``n`` may take ``t`` at all, room aside: the rules restated independently."""
    if t.target_node is not None and n.node_id != t.target_node:
        return False
    allowed = cfg.node_affinity.get(t.agent)
    if allowed is not None and n.node_id not in allowed:
        return False
    if n.role == "coordinator" and not cfg.coordinators_run_agents:
        return False
    if cfg.strategy == "weighted" and t.target_node is None and cfg.weights.get(n.node_id, 1) == 0:
        return False
    return t.agent in n.agents and n.healthy and not n.draining


rounds_st = st.lists(
    st.tuples(clusters(), queues(), st.floats(0, 20), st.none() | st.sampled_from(NODE_IDS)),
    min_size=1,
    max_size=3,
)


@PROPS
@given(cfg=settings_st, rounds=rounds_st)
def test_plans_obey_every_rule(
    cfg: SchedulerSettings,
    rounds: list[tuple[list[Candidate], list[QueuedTask], float, str | None]],
) -> None:
    s, twin = Scheduler(cfg), Scheduler(cfg)
    now = 0.0
    for nodes, queue, step, down in rounds:
        now += step
        plan = s.plan(queue, nodes, now)
        assert plan == twin.plan(queue, nodes, now)  # deterministic
        by_id = {n.node_id: n for n in nodes}
        tasks = {t.task_id: t for t in queue}

        # every task exactly once
        ids = [a.task_id for a in plan.assignments] + [w.task_id for w in plan.waits]
        assert sorted(ids) == sorted(tasks)

        # capacity never exceeded, and only nodes allowed to take the task
        used = collections.Counter(a.node_id for a in plan.assignments)
        for node_id, count in used.items():
            n = by_id[node_id]
            assert n.load + count <= n.capacity
        for a in plan.assignments:
            t = tasks[a.task_id]
            assert may_take(cfg, t, by_id[a.node_id])
            assert a.attempt == t.attempt

        # a capacity wait means every node it may use is full (a stuck session needs only
        # its own node to be full); any other wait means no node may take it at all
        order = sorted(queue, key=lambda t: (-t.priority, t.seq, t.task_id))
        rank = {t.task_id: i for i, t in enumerate(order)}
        sticky = cfg.session_affinity
        if plan.assignments:
            event("some task assigned")
        for w in plan.waits:
            t = tasks[w.task_id]
            able = [n for n in nodes if may_take(cfg, t, n)]
            event("waits for capacity" if w.for_capacity else "waits for something else")
            if not w.for_capacity:
                assert able == [], w
                continue
            assert able, w
            if sticky and t.session_id is not None and t.target_node is None:
                if "stuck" in w.reason:
                    event("a session waits for its full node")
                continue
            assert all(n.load + used[n.node_id] >= n.capacity for n in able), w
            # ...and no later task was placed on a node this one could have used
            for a in plan.assignments:
                if rank[a.task_id] > rank[t.task_id]:
                    assert a.node_id not in {n.node_id for n in able}

        # assignments come out in queue order
        assert [rank[a.task_id] for a in plan.assignments] == sorted(
            rank[a.task_id] for a in plan.assignments
        )
        if down is not None:
            s.node_down(down, now)
            twin.node_down(down, now)
            assert all(s.stuck_to(x, a) != down for x in ["s1", "s2", "s3"] for a in AGENTS)
        assert s.sticky_sessions() <= 3 * len(AGENTS)


@settings(max_examples=50, deadline=None)
@given(
    loads=st.lists(st.integers(0, 3), min_size=1, max_size=5),
    n=st.integers(0, 30),
    strategy=st.sampled_from(["round-robin", "least-connections", "weighted", "consistent-hash"]),
)
def test_a_plan_fills_exactly_the_free_capacity(loads: list[int], n: int, strategy: str) -> None:
    nodes = [node(f"w{i}", capacity=3, load=load) for i, load in enumerate(loads)]
    free = sum(3 - load for load in loads)
    plan = sched(strategy=strategy).plan([task(f"t{i}", seq=i) for i in range(n)], nodes, 0.0)
    assert len(plan.assignments) == min(n, free)
    assert [a.task_id for a in plan.assignments] == [f"t{i}" for i in range(min(n, free))]
    assert all(w.for_capacity for w in plan.waits)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 6), n=st.integers(0, 40))
def test_round_robin_spreads_n_tasks_over_k_nodes_within_one(k: int, n: int) -> None:
    nodes = [node(f"w{i}", capacity=100) for i in range(k)]
    plan = sched().plan([task(f"t{i}", seq=i) for i in range(n)], nodes, 0.0)
    counts = collections.Counter(placed(plan).values())
    per_node = [counts[f"w{i}"] for i in range(k)]
    assert max(per_node) - min(per_node) <= 1


@PROPS
@given(cfg=settings_st, nodes=clusters(), queue=queues(), cut=st.integers(0, 10))
def test_plans_of_consecutive_pages_with_carried_loads_are_one_plan(
    cfg: SchedulerSettings, nodes: list[Candidate], queue: list[QueuedTask], cut: int
) -> None:
    """The placer reads the queue in pages and plans each with the loads the pages before it
    left, and a page after the first holds only what ``openings`` of those loads allows: the
    same assignments, in the same order, as one plan of the whole (the waits are the same
    but for those left out), so the fairness rules hold across pages. ``room`` bounds what a
    plan can place."""
    order = sorted(queue, key=lambda t: (-t.priority, t.seq, t.task_id))
    whole = Scheduler(cfg).plan(order, nodes, 1.0)
    assert len(whole.assignments) <= Scheduler(cfg).room(nodes)
    paged = Scheduler(cfg)
    first = paged.plan(order[:cut], nodes, 1.0)
    added = collections.Counter(a.node_id for a in first.assignments)
    carried = [replace(n, load=n.load + added[n.node_id]) for n in nodes]
    open_ = paged.openings(carried)
    rest = [
        t
        for t in order[cut:]
        if (t.agent in open_.agents if t.target_node is None else t.target_node in open_.nodes)
    ]
    second = paged.plan(rest, carried, 1.0)
    assert first.assignments + second.assignments == whole.assignments
    assert first.waits + second.waits == [
        w for w in whole.waits if w.task_id in {t.task_id for t in order[:cut] + rest}
    ]
    if len(rest) < len(order[cut:]):
        event("a later page left tasks out")


def test_room_counts_free_slots_on_nodes_that_take_tasks() -> None:
    nodes = [
        node("w1", capacity=4, load=1),  # 3
        node("w2", capacity=2, load=5),  # over capacity: 0, not -3
        node("w3", capacity=4, healthy=False),
        node("w4", capacity=4, draining=True),
        node("c1", capacity=2, role="coordinator"),  # 2 unless coordinators do not run agents
        node("w5", capacity=1),  # weight 0 still takes pinned tasks: 1
    ]
    assert sched(weights={"w5": 0}).room(nodes) == 3 + 2 + 1
    assert sched(coordinators_run_agents=False).room(nodes) == 3 + 1
    assert sched().room([]) == 0


def test_openings_name_the_agents_and_pins_nodes_with_room_may_take() -> None:
    nodes = [
        node("w1", agents=("echo", "coder"), capacity=2, load=2),  # full
        node("w2", agents=("echo", "files"), capacity=2),
        node("w3", agents=("gpu",), capacity=2, healthy=False),
        node("w4", agents=("sql",), capacity=1),  # weight 0: pinned tasks only
        node("c1", agents=("lint",), capacity=1, role="coordinator"),
    ]
    s = sched(strategy="weighted", weights={"w4": 0}, node_affinity={"files": frozenset({"w1"})})
    open_ = s.openings(nodes)
    assert open_.agents == {"echo", "lint"}  # files may not run on w2, sql only pinned
    assert open_.nodes == {"w2", "w4", "c1"}
    assert sched(coordinators_run_agents=False).openings(nodes).nodes == {"w2", "w4"}
