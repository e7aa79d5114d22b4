"""The witness voter's statements on PostgreSQL: ``brio.core.witness``'s rules as SQL.

One statement per request kind, each committed on its own (autocommit, no transaction around
it): a vote, a renewal and a release are each a conditional ``UPDATE ... RETURNING`` of the one
``lease_witness`` row, a pre-vote (which changes nothing) a plain read. The vote and the renewal
lock the row first (``FOR UPDATE`` in a CTE) and read ``clock_timestamp()`` after the lock, as
``raise_fence`` does (``brio.store.sql``): two coordinators asking at once are decided one after
the other, each on the row the other left, and the promise is dated after the wait. No lock is
held across a client round trip, so a paused coordinator never blocks the other's request.

A refusal changes nothing (the ``UPDATE`` matches no row); the answer is built from what the
statement returns: the row as it was, the reason (``''``: granted), and the row as it is now if
the statement changed it. ``tests/store/test_witness.py`` runs generated request sequences
through these statements and through ``brio.core.witness.decide`` and compares both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from brio.core.constants import WITNESS_ID
from brio.core.lease import Release, RenewReply, RenewRequest, VoteReply, VoteRequest
from brio.core.witness import (
    NO_PROMISE,
    OTHER_VOTERS,
    Reply,
    Request,
    WitnessRecord,
)
from brio.store.sql import POSTGRES, Bound

_COLUMNS = ("term", "voted_for", "promised_to", "promise_until", "voters_digest")

# The row with the database time; locked (FOR UPDATE), the time is read after the lock.
_ROW = """
    w AS (
        SELECT term, voted_for, promised_to, promise_until, voters_digest,
               CAST(extract(epoch FROM clock_timestamp()) AS double precision) AS now
        FROM lease_witness WHERE id = 1{lock}
    )"""
_LOCKED = _ROW.format(lock=" FOR UPDATE")
_OTHER_VOTERS = f"""
        WHEN w.voters_digest NOT IN ('', CAST(:digest AS text)) AND w.now < w.promise_until
            THEN '{OTHER_VOTERS}'"""
# NULL compares as unknown, so "promised to nobody" and "voted for nobody" fall through.
_PROMISED = """
        WHEN w.promised_to <> CAST(:candidate AS text) AND w.now < w.promise_until
            THEN 'promised to ' || w.promised_to"""
# A promise to the same node is never shortened (Lease._promise).
_PROMISE_UNTIL = """
        CASE WHEN d.promised_to = CAST(:{who} AS text)
             THEN greatest(d.promise_until, d.now + CAST(:duration AS double precision))
             ELSE d.now + CAST(:duration AS double precision) END"""
_RETURNING = "RETURNING " + ", ".join(f"lease_witness.{c} AS n_{c}" for c in _COLUMNS)

VOTE = POSTGRES.render(f"""
    WITH {_LOCKED},
    d AS (
        SELECT w.*, CASE {_OTHER_VOTERS} {_PROMISED}
            WHEN CAST(:term AS bigint) < w.term THEN 'term is stale'
            WHEN CAST(:term AS bigint) = w.term AND w.voted_for <> CAST(:candidate AS text)
                THEN 'voted for ' || w.voted_for
            ELSE '' END AS reason
        FROM w
    ),
    u AS (
        UPDATE lease_witness SET term = CAST(:term AS bigint),
            voted_for = CAST(:candidate AS text), promised_to = CAST(:candidate AS text),
            promise_until = {_PROMISE_UNTIL.format(who="candidate")},
            voters_digest = CAST(:digest AS text)
        FROM d WHERE lease_witness.id = 1 AND d.reason = ''
        {_RETURNING}
    )
    SELECT d.*, u.* FROM d LEFT JOIN u ON true""")

PRE_VOTE = POSTGRES.render(f"""
    WITH {_ROW.format(lock="")}
    SELECT w.*, CASE {_OTHER_VOTERS} {_PROMISED}
        WHEN CAST(:term AS bigint) > w.term THEN '' ELSE 'term is stale' END AS reason
    FROM w""")

RENEW = POSTGRES.render(f"""
    WITH {_LOCKED},
    d AS (
        SELECT w.*, CASE {_OTHER_VOTERS}
            WHEN CAST(:term AS bigint) < w.term THEN 'term is stale'
            ELSE '' END AS reason
        FROM w
    ),
    u AS (
        UPDATE lease_witness SET term = CAST(:term AS bigint),
            voted_for = CASE WHEN CAST(:term AS bigint) = d.term THEN d.voted_for END,
            promised_to = CAST(:leader AS text),
            promise_until = {_PROMISE_UNTIL.format(who="leader")},
            voters_digest = CAST(:digest AS text)
        FROM d WHERE lease_witness.id = 1 AND d.reason = ''
        {_RETURNING}
    )
    SELECT d.*, u.* FROM d LEFT JOIN u ON true""")

# A release gives back the promise to that very leader in the row's term, nothing else.
RELEASE = POSTGRES.render(f"""
    WITH {_LOCKED},
    d AS (
        SELECT w.*, CASE {_OTHER_VOTERS}
            WHEN w.term <> CAST(:term AS bigint)
                OR w.promised_to IS DISTINCT FROM CAST(:leader AS text)
                THEN '{NO_PROMISE}'
            ELSE '' END AS reason
        FROM w
    ),
    u AS (
        UPDATE lease_witness SET promised_to = NULL, promise_until = 0
        FROM d WHERE lease_witness.id = 1 AND d.reason = ''
        {_RETURNING}
    )
    SELECT d.*, u.* FROM d LEFT JOIN u ON true""")

#: Reads the row as it is (tests, and an operator's look).
RECORD = POSTGRES.render(f"SELECT {', '.join(_COLUMNS)} FROM lease_witness WHERE id = 1")


@dataclass(frozen=True)
class WitnessAnswer:
    """What the witness answered, its record after it, and the database time it decided at."""

    reply: Reply
    record: WitnessRecord
    now: float


@runtime_checkable
class Witness(Protocol):
    """A store that can act as the witness voter (PostgreSQL; SQLite cannot)."""

    async def ask_witness(self, request: Request, lease_duration: float) -> WitnessAnswer:
        """Decide ``request``; StoreError when the database cannot be reached."""
        ...


def bind(request: Request, lease_duration: float) -> Bound:
    """The statement that decides ``request``, with its arguments."""
    match request:
        case VoteRequest(pre_vote=True):
            return PRE_VOTE.bind(
                term=request.term, candidate=request.candidate, digest=request.voters_digest
            )
        case VoteRequest():
            return VOTE.bind(
                term=request.term,
                candidate=request.candidate,
                digest=request.voters_digest,
                duration=lease_duration,
            )
        case Release():
            return RELEASE.bind(
                term=request.term, leader=request.leader, digest=request.voters_digest
            )
        case RenewRequest():
            return RENEW.bind(
                term=request.term,
                leader=request.leader,
                digest=request.voters_digest,
                duration=lease_duration,
            )


def record_of(row: Any, prefix: str = "") -> WitnessRecord:
    return WitnessRecord(*(row[prefix + column] for column in _COLUMNS))


def answer(request: Request, row: Any) -> WitnessAnswer:
    """The reply to ``request`` from the row its statement returned."""
    changed = row.get("n_term") is not None  # None: no n_ columns, or no change
    record = record_of(row, "n_" if changed else "")
    reason: str = row["reason"]
    ok = reason == ""
    digest = record.voters_digest if reason == OTHER_VOTERS else request.voters_digest
    reply: Reply
    if isinstance(request, VoteRequest):
        reply = VoteReply(
            record.term, WITNESS_ID, ok, request.pre_vote, request.round, digest, reason
        )
    else:
        reply = RenewReply(record.term, WITNESS_ID, ok, request.round, digest, reason)
    return WitnessAnswer(reply, record, float(row["now"]))
