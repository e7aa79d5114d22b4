"""The router: every branch of the guide's five-step flow, and the exact operator messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brio.core.membership import PeerState
from brio.core.routing import (
    BadTarget,
    Local,
    NodeUnavailable,
    Remote,
    RouteError,
    UnknownNode,
    route,
)

LOCAL = "coordinator-1"
NODES = {"worker-1": "healthy", "worker-2": "degraded"}


def test_plain_agent_is_local() -> None:
    assert route("echo", LOCAL, NODES) == Local("echo")


def test_own_node_prefix_is_local() -> None:
    assert route("coordinator-1/echo", LOCAL, NODES) == Local("echo")


def test_own_node_prefix_is_local_even_if_listed_as_failed() -> None:
    # We are never "failed" to ourselves; a stale row must not block local calls.
    assert route("coordinator-1/echo", LOCAL, {LOCAL: "failed"}) == Local("echo")


@pytest.mark.parametrize("state", ["healthy", "degraded", "unknown", "suspected"])
def test_known_reachable_node_is_remote(state: str) -> None:
    assert route("w1/coder", LOCAL, {"w1": state}) == Remote("w1", "coder")


def test_accepts_peer_state_values() -> None:
    nodes = {"w1": PeerState.HEALTHY, "w2": PeerState.FAILED}
    assert route("w1/echo", LOCAL, nodes) == Remote("w1", "echo")
    with pytest.raises(NodeUnavailable) as info:
        route("w2/echo", LOCAL, nodes)
    assert info.value.state == "failed"
    assert type(info.value.state) is str


def test_unknown_node_names_the_known_ones() -> None:
    with pytest.raises(UnknownNode) as info:
        route("w9/echo", LOCAL, NODES)
    exc = info.value
    assert exc.node_id == "w9"
    assert exc.target == "w9/echo"
    assert exc.known == ("coordinator-1", "worker-1", "worker-2")
    assert str(exc) == (
        "unknown node 'w9' in target 'w9/echo'; "
        "known nodes: coordinator-1 (this node), worker-1, worker-2"
    )


def test_unknown_node_marks_unreachable_known_ones() -> None:
    nodes = {"b": "removed", "a": "failed", "c": "suspected"}
    with pytest.raises(UnknownNode) as info:
        route("x/echo", "m", nodes)
    assert info.value.known == ("a", "b", "c", "m")
    assert str(info.value) == (
        "unknown node 'x' in target 'x/echo'; "
        "known nodes: a (failed), b (removed), c, m (this node)"
    )


def test_unknown_node_with_no_peers() -> None:
    with pytest.raises(UnknownNode) as info:
        route("w1/echo", LOCAL, {})
    assert info.value.known == (LOCAL,)
    assert str(info.value).endswith("known nodes: coordinator-1 (this node)")


def test_failed_node_is_unavailable() -> None:
    with pytest.raises(NodeUnavailable) as info:
        route("worker-2/echo", LOCAL, {"worker-2": "failed"})
    exc = info.value
    assert (exc.node_id, exc.state, exc.target) == ("worker-2", "failed", "worker-2/echo")
    assert str(exc) == (
        "node 'worker-2' is failed: it stopped answering heartbeats, "
        "so 'worker-2/echo' cannot be delivered until it answers again"
    )


def test_removed_node_is_unavailable() -> None:
    with pytest.raises(NodeUnavailable) as info:
        route("worker-2/echo", LOCAL, {"worker-2": "removed"})
    assert str(info.value) == (
        "node 'worker-2' is removed: it stopped answering heartbeats and was removed from "
        "the pool, so 'worker-2/echo' cannot be delivered until it answers again"
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("", "it is empty"),
        ("/echo", "the node part before '/' is empty"),
        ("w1/", "the agent part after '/' is empty"),
        ("/", "the node part before '/' is empty"),
        ("a/b/c", "it contains more than one '/'"),
        ("//", "it contains more than one '/'"),
        ("w1/ echo", "it contains whitespace or control characters"),
        (" echo", "it contains whitespace or control characters"),
        ("echo\n", "it contains whitespace or control characters"),
        ("w1/ec\tho", "it contains whitespace or control characters"),
        ("ec\x00ho", "it contains whitespace or control characters"),
        ("ec\x7fho", "it contains whitespace or control characters"),
        ("ec\u200bho", "it contains whitespace or control characters"),  # zero-width space
        ("ec\u00a0ho", "it contains whitespace or control characters"),  # no-break space
    ],
)
def test_bad_targets(target: str, reason: str) -> None:
    with pytest.raises(BadTarget) as info:
        route(target, LOCAL, NODES)
    assert info.value.target == target
    assert info.value.reason == reason
    assert (
        str(info.value) == f"bad target {target!r}: {reason}; expected 'agent' or 'node-id/agent'"
    )


def test_errors_share_a_base_that_is_a_value_error() -> None:
    for cls in (BadTarget, UnknownNode, NodeUnavailable):
        assert issubclass(cls, RouteError)
    assert issubclass(RouteError, ValueError)


names = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters="-_.:"), min_size=1
)
states = st.sampled_from([s.value for s in PeerState])


@given(names, names, st.dictionaries(names, states, max_size=5))
def test_well_formed_targets_route_by_the_flow(
    agent: str, node: str, nodes: dict[str, str]
) -> None:
    assert route(agent, LOCAL, nodes) == Local(agent)
    target = f"{node}/{agent}"
    if node == LOCAL:
        assert route(target, LOCAL, nodes) == Local(agent)
    elif node not in nodes:
        with pytest.raises(UnknownNode):
            route(target, LOCAL, nodes)
    elif nodes[node] in ("failed", "removed"):
        with pytest.raises(NodeUnavailable):
            route(target, LOCAL, nodes)
    else:
        assert route(target, LOCAL, nodes) == Remote(node, agent)


@given(st.text(max_size=12), st.dictionaries(names, states, max_size=3))
def test_any_text_routes_or_raises_a_route_error(target: str, nodes: dict[str, str]) -> None:
    try:
        result = route(target, LOCAL, nodes)
    except RouteError as exc:
        assert str(exc)
    else:
        assert result.agent
        assert "/" not in result.agent
