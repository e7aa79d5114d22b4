"""The store as a witness voter in the coordinator lease: its decision, as a pure function.

Two coordinators are two voters, and a majority of two is both: losing either stops the lease.
The shared database makes a third voter, the *witness*, with the reserved id ``WITNESS_ID``
(never a node id: ``brio.config.model`` refuses ids that start with ``@``). Candidates send it
the very ``VoteRequest`` (pre-vote and real) and ``RenewRequest`` they send other voters, and it
answers as ``brio.core.lease.Lease`` answers as a voter whose record is never lost:

- **One vote per term**, and **terms only grow**: its record (term, vote) is a row in the
  database, written by the same statement that decides, so it survives any coordinator.
- **Promises by the database's clock.** A vote or a renewal acknowledged at database time
  ``now`` promises not to vote for anyone else before ``now + lease_duration``; the promise
  (``promised_to``, ``promise_until``) is in the row too, so the witness never forgets it and
  needs no restart wait and no amnesia guard. The database's clock is one more clock under
  ``max_clock_drift``: the primary's lease ends ``lease_duration * (1 - max_clock_drift)``
  after it sent the round, by its own clock, before any voter's promise, the witness's included
  (docs/lease.md, *The store as a witness*).
- **The voter set.** The witness is shared by every coordinator, so it also keeps the digest
  of the voter set it last promised under: while that promise stands, a request with another
  digest is refused and answered with the stored digest, which makes the candidate's core
  report a ``DigestMismatch`` (two clusters, or two configurations, on one database).
- **A release** (``Release``, a primary handing over on a graceful stop) gives back the
  promise made to that very leader in the witness's term, and nothing else: the witness may
  then vote for the successor at once.

``brio.store.witness`` runs the same rules as one SQL statement per request kind;
``tests/store/test_witness.py`` checks, with generated request sequences, that this function
and the statements answer alike and leave the same record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import overload

from brio.core.constants import WITNESS_ID
from brio.core.lease import Release, RenewReply, RenewRequest, VoteReply, VoteRequest

#: The refusal of a request under another voter set while the witness's promise stands.
OTHER_VOTERS = "voter sets differ"
#: The refusal of a release from a leader the witness holds no promise to in its term.
NO_PROMISE = "no promise to give back"


@dataclass(frozen=True)
class WitnessRecord:
    """The witness's one row: its term and vote, and the promise it holds."""

    term: int = 0
    voted_for: str | None = None
    promised_to: str | None = None
    promise_until: float = 0.0  # database clock, seconds (0: long past)
    voters_digest: str = ""  # of the voter set it last promised under ("" never)


@dataclass(frozen=True)
class WitnessKnobs:
    """Test-only: ``keep_promise=False`` lets the witness vote while it promised another, so
    that the simulator can show it finds the two primaries the promise prevents."""

    keep_promise: bool = True


WITNESS_SAFE = WitnessKnobs()

Request = VoteRequest | RenewRequest | Release
Reply = VoteReply | RenewReply


@overload
def decide(
    record: WitnessRecord,
    request: VoteRequest,
    now: float,
    lease_duration: float,
    knobs: WitnessKnobs = ...,
) -> tuple[WitnessRecord, VoteReply]: ...
@overload
def decide(
    record: WitnessRecord,
    request: RenewRequest | Release,
    now: float,
    lease_duration: float,
    knobs: WitnessKnobs = ...,
) -> tuple[WitnessRecord, RenewReply]: ...
def decide(
    record: WitnessRecord,
    request: Request,
    now: float,
    lease_duration: float,
    knobs: WitnessKnobs = WITNESS_SAFE,
) -> tuple[WitnessRecord, Reply]:
    """The witness's answer to ``request`` at database time ``now``, and its record after."""
    if isinstance(request, VoteRequest):
        return _vote(record, request, now, lease_duration, knobs)
    if isinstance(request, Release):
        return _release(record, request, now)
    return _renew(record, request, now, lease_duration)


def accepted(reply: Reply) -> bool:
    """Whether the witness said yes: a vote (or pre-vote) granted, a renewal acknowledged."""
    return reply.granted if isinstance(reply, VoteReply) else reply.ok


def _other_voters(record: WitnessRecord, digest: str, now: float) -> bool:
    return record.voters_digest not in ("", digest) and now < record.promise_until


def _promise(record: WitnessRecord, to: str, now: float, lease_duration: float) -> float:
    """Until when the promise to ``to`` runs: as ``Lease._promise``, never shortened."""
    until = now + lease_duration
    if record.promised_to == to:
        return max(until, record.promise_until)
    return until


def _vote(
    record: WitnessRecord,
    request: VoteRequest,
    now: float,
    lease_duration: float,
    knobs: WitnessKnobs,
) -> tuple[WitnessRecord, VoteReply]:
    def reply(granted: bool, reason: str = "", digest: str = request.voters_digest) -> VoteReply:
        term = request.term if granted and not request.pre_vote else record.term
        return VoteReply(term, WITNESS_ID, granted, request.pre_vote, request.round, digest, reason)

    candidate = request.candidate
    if _other_voters(record, request.voters_digest, now):
        return record, reply(False, OTHER_VOTERS, record.voters_digest)
    promised = record.promised_to not in (None, candidate) and now < record.promise_until
    if promised and knobs.keep_promise:
        return record, reply(False, f"promised to {record.promised_to}")
    if request.pre_vote:
        granted = request.term > record.term
        return record, reply(granted, "" if granted else "term is stale")
    if request.term < record.term:
        return record, reply(False, "term is stale")
    if request.term == record.term and record.voted_for not in (None, candidate):
        return record, reply(False, f"voted for {record.voted_for}")
    after = WitnessRecord(
        request.term,
        candidate,
        candidate,
        _promise(record, candidate, now, lease_duration),
        request.voters_digest,
    )
    return after, reply(True)


def _renew(
    record: WitnessRecord, request: RenewRequest, now: float, lease_duration: float
) -> tuple[WitnessRecord, RenewReply]:
    def reply(ok: bool, reason: str = "", digest: str = request.voters_digest) -> RenewReply:
        term = request.term if ok else record.term
        return RenewReply(term, WITNESS_ID, ok, request.round, digest, reason)

    if _other_voters(record, request.voters_digest, now):
        return record, reply(False, OTHER_VOTERS, record.voters_digest)
    if request.term < record.term:
        return record, reply(False, "term is stale")
    voted_for = record.voted_for if request.term == record.term else None
    after = replace(
        record,
        term=request.term,
        voted_for=voted_for,
        promised_to=request.leader,
        promise_until=_promise(record, request.leader, now, lease_duration),
        voters_digest=request.voters_digest,
    )
    return after, reply(True)


def _release(
    record: WitnessRecord, request: Release, now: float
) -> tuple[WitnessRecord, RenewReply]:
    def reply(ok: bool, reason: str = "", digest: str = request.voters_digest) -> RenewReply:
        return RenewReply(record.term, WITNESS_ID, ok, request.round, digest, reason)

    if _other_voters(record, request.voters_digest, now):
        return record, reply(False, OTHER_VOTERS, record.voters_digest)
    if request.term != record.term or record.promised_to != request.leader:
        return record, reply(False, NO_PROMISE)
    return replace(record, promised_to=None, promise_until=0.0), reply(True)
