"""Where a call goes: this node, another node, or nowhere with a clear reason.

A target is ``agent`` (this node) or ``node-id/agent``. The node part names this node, a known
peer, or an error that lists the nodes we do know. Node states arrive as plain strings (the
values of ``PeerState``) so that this module depends on nothing; whether the agent exists on
the chosen node is for that node to say.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

# A node in one of these states stopped answering our heartbeats: calling it would only hang
# until a timeout. "unknown" and "suspected" nodes are still tried.
_UNAVAILABLE = frozenset({"failed", "removed"})
_CONTROL = frozenset({"Cc", "Cf", "Cs"})


@dataclass(frozen=True)
class Local:
    agent: str


@dataclass(frozen=True)
class Remote:
    node_id: str
    agent: str


Route = Local | Remote


class RouteError(ValueError):
    """A target that cannot be routed; ``str(exc)`` is a complete sentence for an operator."""


class BadTarget(RouteError):
    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"bad target {target!r}: {reason}; expected 'agent' or 'node-id/agent'")


class UnknownNode(RouteError):
    def __init__(self, target: str, node_id: str, local_id: str, nodes: Mapping[str, str]) -> None:
        self.target = target
        self.node_id = node_id
        self.known: tuple[str, ...] = tuple(sorted({*nodes, local_id}))
        listed = ", ".join(_describe(n, local_id, nodes) for n in self.known)
        super().__init__(f"unknown node {node_id!r} in target {target!r}; known nodes: {listed}")


def _describe(node_id: str, local_id: str, nodes: Mapping[str, str]) -> str:
    """Mark this node, and the nodes a call could not reach anyway."""
    if node_id == local_id:
        return f"{node_id} (this node)"
    state = str(nodes[node_id])
    return f"{node_id} ({state})" if state in _UNAVAILABLE else node_id


class NodeUnavailable(RouteError):
    def __init__(self, target: str, node_id: str, state: str) -> None:
        self.target = target
        self.node_id = node_id
        self.state = state
        why = (
            "it stopped answering heartbeats and was removed from the pool"
            if state == "removed"
            else "it stopped answering heartbeats"
        )
        super().__init__(
            f"node {node_id!r} is {state}: {why}, so {target!r} cannot be delivered "
            "until it answers again"
        )


def _bad_char(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) in _CONTROL for ch in text)


def route(target: str, local_id: str, nodes: Mapping[str, str]) -> Route:
    """Decide where ``target`` runs; ``nodes`` maps node_id -> state (``known_nodes()``)."""
    if not target:
        raise BadTarget(target, "it is empty")
    if _bad_char(target):
        raise BadTarget(target, "it contains whitespace or control characters")
    if target.count("/") > 1:
        raise BadTarget(target, "it contains more than one '/'")
    node_id, slash, agent = target.partition("/")
    if not slash:
        return Local(target)
    if not node_id:
        raise BadTarget(target, "the node part before '/' is empty")
    if not agent:
        raise BadTarget(target, "the agent part after '/' is empty")
    if node_id == local_id:
        return Local(agent)
    if node_id not in nodes:
        raise UnknownNode(target, node_id, local_id, nodes)
    state = str(nodes[node_id])
    if state in _UNAVAILABLE:
        raise NodeUnavailable(target, node_id, state)
    return Remote(node_id, agent)
