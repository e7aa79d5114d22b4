"""What travels in the simulated world besides the lease's own messages, and how it reads.

Every exchange is a unary call, as in the real driver: a request, and at most one reply that
travels back on the same call (and is dropped if it arrives after the caller's timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from brio.core.lease import Message, RenewReply, RenewRequest, VoteReply, VoteRequest
from brio.core.membership import NodeFacts
from sim.store import Answer


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


Request = Message | Heartbeat | RaiseFence | FencedWrite
Reply = Message | HeartbeatReply | Answer


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
        case RenewReply():
            answer = "ok" if message.ok else f"refused ({message.reason})"
            return f"renew reply t{message.term} r{message.round} {answer}"
        case _:
            return type(message).__name__


def is_lease(message: Request | Reply) -> bool:
    """Lease traffic is traced message by message; heartbeats only by their effects."""
    return isinstance(message, VoteRequest | VoteReply | RenewRequest | RenewReply)
