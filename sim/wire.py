"""What travels in the simulated world besides the lease's own messages, and how it reads.

Every exchange is a unary call, as in the real driver: a request, and at most one reply that
travels back on the same call (and is dropped if it arrives after the caller's timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from brio.core.lease import Message, Release, RenewReply, RenewRequest, VoteReply, VoteRequest
from brio.core.membership import NodeFacts
from brio.core.scheduler import QueuedTask
from sim.store import Answer

#: The store's name as a call's destination (the witness voter lives there too).
STORE = "store"


@dataclass(frozen=True)
class Heartbeat:
    facts: NodeFacts  # the caller's, as the real heartbeat carries them


@dataclass(frozen=True)
class HeartbeatReply:
    facts: NodeFacts


@dataclass(frozen=True)
class RaiseFence:
    epoch: int


@dataclass(frozen=True)
class FencedWrite:
    epoch: int
    seq: int  # the primary's write counter, to tell writes apart in the trace


# ---- tasks: what a node asks of the store's task table (``sim.store.Tasks``), and the notices
# the primary and standbys send each other. Each store request carries a request id (``rid``,
# unique per node life); the store answers a repeated id with the answer it gave the first
# time, so a retried call and a duplicated copy both act once (a statement runs once).


@dataclass(frozen=True)
class Submit:
    rid: str
    task_id: str
    seq: int
    agent: str
    session_id: str | None
    target_node: str | None


@dataclass(frozen=True)
class Snapshot:
    """The placer's read: load per node (assigned + running) and the first ``limit`` queued."""

    rid: str
    limit: int


@dataclass(frozen=True)
class Requeue:
    """The primary's fenced requeue of the tasks of nodes that are down, attempt + 1."""

    rid: str
    epoch: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Assign:
    """One batch of assignments in one fenced write: (task id, attempt, node) each."""

    rid: str
    epoch: int
    batch: tuple[tuple[str, int, str], ...]


@dataclass(frozen=True)
class RequeueMine:
    """A worker's start: whatever the store says it had assigned or running goes back."""

    rid: str


@dataclass(frozen=True)
class Claim:
    """A worker claims up to ``limit`` of its assigned tasks straight into running."""

    rid: str
    limit: int


@dataclass(frozen=True)
class Finish:
    """A worker records a task's result, for the attempt it ran."""

    rid: str
    task_id: str
    attempt: int


@dataclass(frozen=True)
class TaskRun:
    """The primary tells a node of its batch (``task.run``); best effort, nodes poll too."""

    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class TaskQueued:
    """A standby that took a submission wakes the primary (``task.queued``)."""


@dataclass(frozen=True)
class TaskAnswer:
    ok: bool
    fence_epoch: int = 0
    loads: tuple[tuple[str, int], ...] = ()  # Snapshot: node -> load
    tasks: tuple[tuple[str, int], ...] = ()  # (task id, attempt): queued, landed or claimed
    queued: tuple[QueuedTask, ...] = ()  # Snapshot


@dataclass(frozen=True)
class Ack:
    """The answer to a notice."""


TaskRequest = Submit | Snapshot | Requeue | Assign | RequeueMine | Claim | Finish
Request = Message | Heartbeat | RaiseFence | FencedWrite | TaskRequest | TaskRun | TaskQueued
Reply = Message | HeartbeatReply | Answer | TaskAnswer | Ack


def describe(message: Request | Reply) -> str:
    """One short line for the trace."""
    match message:
        case VoteRequest():
            kind = "pre-vote" if message.pre_vote else "vote"
            return f"{kind} request t{message.term} r{message.round} for {message.candidate}"
        case VoteReply():
            kind = "pre-vote" if message.pre_vote else "vote"
            answer = "granted" if message.granted else f"refused ({message.reason})"
            return f"{kind} reply t{message.term} r{message.round} {answer}"
        case RenewRequest():
            return f"renew request t{message.term} r{message.round}"
        case Release():
            told = f", {message.successor} to campaign" if message.successor else ""
            return f"release t{message.term} r{message.round}{told}"
        case RenewReply():
            answer = "ok" if message.ok else f"refused ({message.reason})"
            return f"renew reply t{message.term} r{message.round} {answer}"
        case Assign():
            shown = ", ".join(f"{t}#{a}->{n}" for t, a, n in message.batch)
            return f"assign under epoch {message.epoch}: {shown}"
        case Requeue():
            return f"requeue under epoch {message.epoch} the tasks of {', '.join(message.nodes)}"
        case _:
            return type(message).__name__


def passing(way: str, peer: str, message: Request | Reply, after: str = "") -> str:
    """A trace line for a message: ``way`` is ``<-`` (from ``peer``) or ``->`` (to it)."""
    return f"{way} {peer} {describe(message)}{after}"


#: Lease traffic is traced message by message; heartbeats only by their effects. Tested by
#: exact type (none of these classes has subclasses): ``type(m) in`` a frozenset is cheaper
#: than ``isinstance`` with a union, and it runs for every message.
LEASE_MESSAGES: frozenset[type] = frozenset(
    {VoteRequest, VoteReply, RenewRequest, RenewReply, Release}
)
TASK_STATEMENTS: frozenset[type] = frozenset(
    {Submit, Snapshot, Requeue, Assign, RequeueMine, Claim, Finish}
)
#: Task traffic draws its network fate from its own stream (``sim.world``).
TASK_TRAFFIC: frozenset[type] = TASK_STATEMENTS | {TaskRun, TaskQueued, TaskAnswer, Ack}


def is_lease(message: Request | Reply) -> bool:
    return type(message) in LEASE_MESSAGES


def is_task_statement(message: Request | Reply) -> bool:
    return type(message) in TASK_STATEMENTS


def is_task(message: Request | Reply) -> bool:
    return type(message) in TASK_TRAFFIC
