"""The coordinator lease as a pure state machine: who is primary, under which epoch, until when.

Raft's election without its log (Ongaro's thesis §6.4 leases, §9.6 pre-vote), and a lease
instead of heartbeats alone:

- **Terms only grow.** The term a primary was elected in is its *epoch*, the fencing token the
  store checks (Kleppmann): a deposed primary's writes carry an old epoch and are refused.
- **One vote per term, durable.** A granted vote is persisted (``Persist`` comes before the
  ``Send`` of the reply in the returned actions) so that a restarted voter cannot vote twice.
- **Promises.** A vote or a renewal acknowledged at local time ``t`` promises the primary that
  this voter will not vote for anyone else before ``t + lease_duration`` by its own clock. A
  restarted voter has forgotten its promises, so it waits one lease duration before voting.
- **The primary's lease** runs to ``round_start + lease_duration * (1 - max_clock_drift)`` once
  a majority acknowledged the round sent at ``round_start`` (its own clock). Every voter's promise
  started later and lasts longer, as long as no clock runs faster than another by more than
  ``max_clock_drift``. It renews every third of the lease.
- **Pre-vote and check-quorum.** A candidate first asks whether it could win, without bumping any
  term; a primary whose lease runs out (a majority did not answer in time) steps down.
- **No record, no vote.** A node that starts with nothing persisted may have lost its record
  (a wiped data dir), and with it the votes it gave. After its restart wait it asks the other
  voters for their terms (a pre-vote request, which changes nobody's state) and grants no vote,
  pre-vote or vote of its own until ``len(voters) - majority + 1`` of them answered from a
  record (or all of them answered and every term is 0: a cluster's first start). It then takes
  the highest term heard as its own, with its vote in that term unknown (``UNKNOWN_VOTE``), so
  it votes only in later terms. Every term won with a vote it lost is among them: the winner's
  round closed before the restart wait ended, and the answering voters overlap that majority
  (docs/lease.md).
- **Handing over** (``transfer``, a graceful stop: SIGTERM or a drain). The primary steps down,
  gives back its own promise and asks every peer to give back theirs (``Release``): a voter
  that promised this very leader in this very term drops the promise at once, since the only
  lease it protected has ended. Once enough voters have given theirs back that the chosen
  standby can win, that standby is told to campaign at once (Raft's TimeoutNow), skipping its
  election timeout. The old primary never campaigns again (``retired``) but still votes.

Voters are a fixed set of node ids (every message carries a digest of it: two majorities of
different sets may share nobody); candidates are the coordinators. The driver feeds events in
with the time as ``now`` (monotonic seconds of this node's clock) and carries out the actions in
the order given. Randomness (the election timeout) comes from a ``random.Random`` passed in.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import assert_never

from brio.core.constants import MAX_TERM


class Role(StrEnum):
    FOLLOWER = "follower"  # a voter or a standby: follows whichever primary renews it
    CANDIDATE = "candidate"  # asking for (pre-)votes
    PRIMARY = "primary"


#: The roles as module constants: the core reads its role on most of its paths, and an enum
#: member read through its class (``Role.PRIMARY``) costs ten times a global's read.
_FOLLOWER, _CANDIDATE, _PRIMARY = Role.FOLLOWER, Role.CANDIDATE, Role.PRIMARY


@dataclass(frozen=True)
class LeaseSettings:
    lease_duration: float
    election_timeout: tuple[float, float]  # a fresh random pick from this range each time
    max_clock_drift: float  # how much faster one clock may run than another, as a fraction
    max_term_jump: int = 100_000  # a message more terms ahead than this is ignored

    def __post_init__(self) -> None:
        # The config layer explains these to operators; this guards the simulator and tests.
        low, high = self.election_timeout
        if not self.lease_duration > 0:
            raise ValueError(f"lease_duration must be > 0, got {self.lease_duration}")
        if not 0 < low <= high:
            raise ValueError(f"election_timeout must be 0 < min <= max, got {low}, {high}")
        if not 0 <= self.max_clock_drift < 0.5:
            raise ValueError(f"max_clock_drift must be in [0, 0.5), got {self.max_clock_drift}")

    @property
    def renew_interval(self) -> float:
        return self.lease_duration / 3


@dataclass(frozen=True)
class SafetyKnobs:
    """Test-only switches, each turning off one safety measure, so that the simulator can show
    it finds the violation that measure prevents. Production code never passes anything but
    the defaults."""

    persist_votes: bool = True
    drift_margin: bool = True
    restart_wait: bool = True
    fence_check: bool = True  # read by the simulated store (brio.core.fence)
    amnesia_guard: bool = True  # a node without a vote record learns the terms before voting


ALL_ON = SafetyKnobs()

#: The refusal of a node that has no vote record yet: a learning node does not count such an
#: answer as a record, only its term.
NO_RECORD = "no vote record: learning the cluster's terms"
#: ``voted_for`` once a node without a record has learned the highest term: it may have voted
#: in that term before it lost its record, for someone it cannot know. Never a node id.
UNKNOWN_VOTE = "(unknown)"


def voters_digest(voters: Iterable[str]) -> str:
    """A short digest of a voter set that every node computes the same way."""
    joined = "\n".join(sorted(set(voters)))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


# messages (the wire form lives in brio/mesh; these are what the core speaks)


@dataclass(frozen=True)
class VoteRequest:
    term: int  # the term the candidate asks for (for a pre-vote: the one it would ask for)
    candidate: str
    pre_vote: bool
    round: int  # the candidate's round counter; the reply echoes it
    voters_digest: str


@dataclass(frozen=True)
class VoteReply:
    term: int  # the voter's term (after granting: the candidate's)
    voter: str
    granted: bool
    pre_vote: bool
    round: int
    voters_digest: str
    reason: str = ""


@dataclass(frozen=True)
class RenewRequest:
    term: int
    leader: str
    round: int
    voters_digest: str


@dataclass(frozen=True)
class RenewReply:
    term: int
    voter: str
    ok: bool
    round: int
    voters_digest: str
    reason: str = ""


@dataclass(frozen=True)
class Release:
    """The primary ``leader`` stepped down (it is stopping) and gives back the promise made
    to it in ``term``; the reply is a ``RenewReply`` (``ok``: given back). ``successor`` is
    the node that should campaign at once (``""``: only give the promise back)."""

    term: int
    leader: str
    round: int
    voters_digest: str
    successor: str = ""


Message = VoteRequest | VoteReply | RenewRequest | RenewReply | Release


# actions (carry them out in order)


@dataclass(frozen=True)
class Persist:
    """Write (term, voted_for) durably before carrying out any later action."""

    term: int
    voted_for: str | None


@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class BecamePrimary:
    epoch: int
    until: float  # local clock


@dataclass(frozen=True)
class LeaseExtended:
    epoch: int
    until: float


@dataclass(frozen=True)
class SteppedDown:
    epoch: int
    reason: str


@dataclass(frozen=True)
class DigestMismatch:
    """A peer runs with another voter set: refused, and worth a loud log line."""

    peer: str
    theirs: str
    ours: str


Action = Persist | Send | BecamePrimary | LeaseExtended | SteppedDown | DigestMismatch


@dataclass(frozen=True)
class Persisted:
    """What survives a restart."""

    term: int
    voted_for: str | None


@dataclass(frozen=True)
class Status:
    role: Role
    epoch: int  # our term
    primary: str | None  # who we believe is primary (ourselves when PRIMARY)
    lease_until: float | None  # PRIMARY: our lease; otherwise the promise we hold for primary
    voter: bool


@dataclass
class _Round:
    start: float
    acks: set[str] = field(default_factory=set)


@dataclass
class _Transfer:
    """A handover under way: the voters that gave their promise back so far (ourselves
    included), and how sure we were when we last told the successor to campaign (0: not
    told; 1: with its own vote it can win; 2: it can win without its own vote)."""

    term: int
    round: int
    successor: str | None
    released: set[str]
    told: int = 0


class Lease:
    """One node's side of the lease: voter, candidate (coordinators) or both."""

    def __init__(
        self,
        node_id: str,
        *,
        voters: Iterable[str],
        peers: Iterable[str] = (),
        candidate: bool,
        settings: LeaseSettings,
        now: float,
        rng: random.Random,
        persisted: Persisted | None = None,
        knobs: SafetyKnobs = ALL_ON,
    ) -> None:
        self.node_id = node_id
        self.voters = frozenset(voters)
        if not self.voters:
            raise ValueError("the voter set is empty")
        # Everyone we talk to: the other voters, plus standby coordinators that are not voters
        # (they hear renewals so that they know the primary, and they ask voters for votes).
        self.peers = (self.voters | frozenset(peers)) - {node_id}
        self.is_candidate = candidate
        self.is_voter = node_id in self.voters
        self.settings = settings
        self.knobs = knobs
        self.digest = voters_digest(self.voters)
        self._rng = rng
        self._now = now
        self.term = persisted.term if persisted else 0
        self.voted_for = persisted.voted_for if persisted else None
        # No record: maybe a wiped data dir, votes forgotten. Learn the terms before voting.
        self._amnesiac = persisted is None and knobs.amnesia_guard and (self.is_voter or candidate)
        self._others = self.voters - {node_id}
        self._heard: dict[str, tuple[int, bool]] = {}  # voter -> (term, answered from a record)
        self._first_query: int | None = None
        self.role = _FOLLOWER
        self.primary: str | None = None
        # The promise we hold: not to vote for anyone but promised_to before promise_until.
        self._promised_to: str | None = None
        self._promise_until = -math.inf
        # Every start is treated as a restart: a wiped data dir loses promises too.
        self._vote_after = now + settings.lease_duration if knobs.restart_wait else now
        self._round = 0
        self._rounds: dict[int, _Round] = {}
        self._pre_votes: set[str] = set()
        self._lease_until = -math.inf
        self._next_renew = math.inf
        self._election_at = self._vote_after + self._timeout()
        self._query_at = self._vote_after if self._amnesiac else math.inf
        self.held: str | None = None  # why we do not campaign now (``hold``)
        self._retired = False  # handed the lease over (``transfer``): never campaign again
        self._transfer: _Transfer | None = None
        self._heard_at: dict[str, float] = {}  # voter -> when it last answered us (alive)

    # ---------------------------------------------------------------- queries

    @property
    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def amnesiac(self) -> bool:
        """Started without a vote record, and not yet learned the terms: it takes no part."""
        return self._amnesiac

    @property
    def records_needed(self) -> int:
        """How many other voters a node without a record must hear from a record: enough to
        overlap, without us, every majority that may have counted a vote we lost."""
        return len(self.voters) - self.majority + 1

    @property
    def retired(self) -> bool:
        """Handed the lease over (``transfer``): it votes, but campaigns no more."""
        return self._retired

    @property
    def lease_until(self) -> float | None:
        return self._lease_until if self.role is _PRIMARY else None

    def status(self) -> Status:
        if self.role is _PRIMARY:
            until: float | None = self._lease_until
        elif self._promised_to is not None and self._promised_to == self.primary:
            until = self._promise_until
        else:
            until = None
        return Status(self.role, self.term, self.primary, until, self.is_voter)

    def round_lease_end(self, round_id: int) -> float | None:
        """Until when an answer to our renewal round ``round_id`` can still count (local
        clock): the end of the lease that round grants, ``round_start + lease_duration * (1 -
        max_clock_drift)``; None when we are not primary or the round is gone (older than a
        lease, or of another term). The driver waits that long for an answer (not one renewal
        interval): every voter promised at its answer time, after the round start, so an
        answer that comes back later than the next round's start but before this end still
        extends the lease safely (``_ack``)."""
        current = self._rounds.get(round_id)
        if self.role is not _PRIMARY or current is None:
            return None
        return self._lease_end(current.start)

    def next_deadline(self) -> float:
        """When to call ``tick`` next (local clock)."""
        if self._amnesiac:
            return self._query_at
        if self.role is _PRIMARY:
            return min(self._next_renew, self._lease_until)
        return self._election_at if self._campaigns else math.inf

    def persisted(self) -> Persisted:
        return Persisted(self.term, self.voted_for)

    # ---------------------------------------------------------------- events

    def tick(self, now: float) -> list[Action]:
        now = self._advance(now)
        if self._amnesiac:
            return self._query(now) if now >= self._query_at else []
        if self.role is _PRIMARY:
            if now >= self._lease_until:
                return self._step_down("lease expired: a majority did not answer in time")
            if now >= self._next_renew:
                return self._start_renew_round(now)
            return []
        if self._campaigns and now >= self._election_at:
            if self.held is not None:
                self._election_at = now + self._timeout()
                return []
            return self._start_pre_vote(now)
        return []

    def receive(self, now: float, sender: str, message: Message) -> list[Action]:
        """Handle one message from ``sender`` (the transport's idea of who sent it)."""
        now = self._advance(now)
        if message.voters_digest != self.digest:
            return self._mismatch(sender, message)
        if message.term > MAX_TERM or message.term > self.term + self.settings.max_term_jump:
            return []  # no store or wire holds it, or a jump only a forger makes: silence
        match message:
            case VoteRequest():
                return self._on_vote_request(now, message)
            case VoteReply():
                return self._on_vote_reply(now, message)
            case RenewRequest():
                return self._on_renew_request(now, message)
            case RenewReply():
                return self._on_renew_reply(now, message)
            case Release():
                return self._on_release(now, sender, message)
        assert_never(message)

    def hold(self, now: float, reason: str | None) -> list[Action]:
        """Campaign no more (and stop being primary) while ``reason`` stands; None lifts it.

        The driver holds the lease when the cluster is misconfigured in a way that makes
        majorities meaningless: a coordinator outside our voter set, or a peer whose voter set
        differs. Two nodes with disjoint voter sets would each elect itself; holding turns
        that flapping into a standstill that the operator is told about.
        """
        now = self._advance(now)
        self.held = reason
        if reason is None:
            return []
        actions = self._step_down(f"held: {reason}") if self.role is _PRIMARY else []
        if self.role is _CANDIDATE:
            self.role = _FOLLOWER
        return actions

    def transfer(self, now: float, successors: Iterable[str]) -> list[Action]:
        """Hand the lease over before stopping (SIGTERM, a drain): campaign no more, and as
        primary step down at once and release every peer's promise (``Release``).

        ``successors`` are the coordinators that may take over; the one heard from last is
        told to campaign at once, as soon as the voters that gave their promise back (ours
        included) and its own vote make a majority (``_tell_successor``). The driver must have
        stopped the primary work (``SteppedDown``) before the first ``Send`` leaves: a voter
        that gets a release may vote for the successor at once. Nothing touches the fence.
        """
        now = self._advance(now)
        self._retired = True
        if self.role is not _PRIMARY:
            if self.role is _CANDIDATE:
                self.role = _FOLLOWER
            return []
        actions = self._step_down("handing the lease over: this node is stopping")
        self._give_back_promise(self.node_id)  # our own promise, to ourselves
        choices = sorted(set(successors) & self.peers)
        # The one heard from last (any answer: it is alive); among equals, the first by name.
        successor = max(choices, key=lambda c: self._heard_at.get(c, -math.inf), default=None)
        self._round += 1
        released = {self.node_id} if self.is_voter else set()
        self._transfer = _Transfer(self.term, self._round, successor, released)
        told = self._tell_successor()
        release = Release(self.term, self.node_id, self._round, self.digest)
        others = self.peers - ({successor} if told else set())
        actions += [Send(peer, release) for peer in sorted(others)]
        return actions + told

    def _tell_successor(self) -> list[Action]:
        """Tell the successor to campaign once it can win: as soon as the voters that gave
        their promise back make a majority with its own vote, and again once they make one
        without it (its own vote may wait out a restart, and its first pre-vote may have
        overtaken a release): each time its pre-vote starts afresh."""
        t = self._transfer
        if t is None or t.successor is None:
            return []
        if self.term != t.term:
            # A newer term has begun (we voted in it): the handover is over, and a release of
            # the old term sent now would carry a term older than ours.
            self._transfer = None
            return []
        if len(t.released - {t.successor}) >= self.majority:
            level = 2
        elif len(t.released | ({t.successor} & self.voters)) >= self.majority:
            level = 1
        else:
            level = 0
        if level <= t.told:
            return []
        t.told = level
        release = Release(t.term, self.node_id, t.round, self.digest, t.successor)
        return [Send(t.successor, release)]

    def lost_fence(self, now: float, fence_epoch: int) -> list[Action]:
        """The store's fence is past our epoch: someone newer was primary; stop at once."""
        self._advance(now)
        if self.role is not _PRIMARY:
            return []
        actions = self._step_down(f"the fence refused epoch {self.term} (it holds {fence_epoch})")
        if fence_epoch > self.term:
            actions[:0] = self._adopt_term(fence_epoch)
        return actions

    # ---------------------------------------------------------------- candidate

    @property
    def _campaigns(self) -> bool:
        return self.is_candidate and not self._retired

    def _start_pre_vote(self, now: float) -> list[Action]:
        if self.term >= MAX_TERM or self._retired:
            return []
        self.role = _CANDIDATE
        self._election_at = now + self._timeout()
        self._round += 1
        self._pre_votes = set()
        proposed = self.term + 1
        if self.is_voter and self._may_vote(now, self.node_id):
            self._pre_votes.add(self.node_id)
        if len(self._pre_votes) >= self.majority:
            return self._start_election(now)
        request = VoteRequest(proposed, self.node_id, True, self._round, self.digest)
        return [Send(peer, request) for peer in sorted(self.voters - {self.node_id})]

    def _start_election(self, now: float) -> list[Action]:
        # Our own vote only if no promise to another stands in the way: a vote we granted
        # while campaigning binds us like anyone else's.
        self_vote = self.is_voter and self._may_vote(now, self.node_id)
        self.term += 1
        self.voted_for = self.node_id if self_vote else None
        self.primary = None
        self._round += 1
        self._rounds = {self._round: _Round(now)}
        actions: list[Action] = self._persist()
        if self_vote:
            self._promise(self.node_id, now)
            self._rounds[self._round].acks.add(self.node_id)
        if len(self._rounds[self._round].acks) >= self.majority:
            return actions + self._become_primary(now, self._round)
        request = VoteRequest(self.term, self.node_id, False, self._round, self.digest)
        actions += [Send(peer, request) for peer in sorted(self.voters - {self.node_id})]
        return actions

    def _on_vote_reply(self, now: float, reply: VoteReply) -> list[Action]:
        if reply.voter not in self.voters:
            return []
        self._heard_at[reply.voter] = now  # alive: a successor to hand the lease to
        if self._amnesiac and self._answers_query(reply):
            learnt = self._heard_from(reply)
            if learnt:
                return learnt
        if reply.term > self.term and not reply.granted:
            return self._adopt_term(reply.term) + self._follow(None)
        if self.role is not _CANDIDATE or not reply.granted or reply.round != self._round:
            return []
        if reply.pre_vote:
            self._pre_votes.add(reply.voter)
            if len(self._pre_votes) >= self.majority:
                return self._start_election(now)
            return []
        if reply.term != self.term:
            return []
        current = self._rounds.get(reply.round)
        if current is None:
            return []
        current.acks.add(reply.voter)
        if len(current.acks) >= self.majority:
            return self._become_primary(now, reply.round)
        return []

    def _become_primary(self, now: float, round_id: int) -> list[Action]:
        until = self._lease_end(self._rounds[round_id].start)
        if now >= until:  # the votes came back after the lease they granted: campaign again
            return []
        self.role = _PRIMARY
        self.primary = self.node_id
        self._lease_until = until
        self._next_renew = self._rounds[round_id].start + self.settings.renew_interval
        return [BecamePrimary(self.term, until)]

    # ---------------------------------------------------------------- primary

    def _start_renew_round(self, now: float) -> list[Action]:
        self._round += 1
        self._rounds[self._round] = _Round(now)
        # Rounds older than a lease can no longer extend it.
        horizon = now - self.settings.lease_duration
        self._rounds = {k: r for k, r in self._rounds.items() if r.start >= horizon}
        self._next_renew = now + self.settings.renew_interval
        actions: list[Action] = []
        if self.is_voter:
            self._promise(self.node_id, now)
            actions += self._ack(now, self._round, self.node_id)
        request = RenewRequest(self.term, self.node_id, self._round, self.digest)
        return actions + [Send(peer, request) for peer in sorted(self.peers)]

    def _on_renew_reply(self, now: float, reply: RenewReply) -> list[Action]:
        if reply.voter not in self.voters:
            return []
        self._heard_at[reply.voter] = now  # alive: a successor to hand the lease to
        if reply.term > self.term:
            return self._adopt_term(reply.term) + self._follow(None)
        t = self._transfer
        if t is not None and reply.round == t.round:  # an answer to our release
            if reply.ok and reply.term == t.term:
                t.released.add(reply.voter)
                return self._tell_successor()
            return []
        if self.role is not _PRIMARY or reply.term != self.term or not reply.ok:
            return []
        return self._ack(now, reply.round, reply.voter)

    def _ack(self, now: float, round_id: int, voter: str) -> list[Action]:
        current = self._rounds.get(round_id)
        if current is None:
            return []
        current.acks.add(voter)
        if len(current.acks) < self.majority:
            return []
        # An older round's majority extends the lease from that round's start, and only when
        # that ends later than the lease does now (a newer round may have extended it past).
        # An end already past (an answer held up by a stalled loop) extends nothing.
        until = self._lease_end(current.start)
        if until <= self._lease_until or until <= now:
            return []
        self._lease_until = until
        return [LeaseExtended(self.term, until)]

    def _lease_end(self, round_start: float) -> float:
        duration = self.settings.lease_duration
        if self.knobs.drift_margin:
            duration *= 1 - self.settings.max_clock_drift
        return round_start + duration

    def _step_down(self, reason: str) -> list[Action]:
        epoch = self.term
        was_primary = self.role is _PRIMARY
        self.role = _FOLLOWER
        if self.primary == self.node_id:
            self.primary = None
        self._lease_until = -math.inf
        self._next_renew = math.inf
        self._rounds = {}
        self._election_at = max(self._now, self._promise_until) + self._timeout()
        return [SteppedDown(epoch, reason)] if was_primary else []

    # ---------------------------------------------------------------- voter

    def _on_vote_request(self, now: float, request: VoteRequest) -> list[Action]:
        def reply(granted: bool, reason: str = "") -> VoteReply:
            return VoteReply(
                self.term,
                self.node_id,
                granted,
                request.pre_vote,
                request.round,
                self.digest,
                reason,
            )

        candidate = request.candidate
        if not self.is_voter:
            return [Send(candidate, reply(False, "not a voter"))]
        if self._amnesiac:  # before anything else, so that a learning node can tell
            return [Send(candidate, reply(False, NO_RECORD))]
        # Neither refusal below adopts the candidate's term: doing so would depose a primary
        # that a majority still renews (leader stickiness).
        if now < self._vote_after:
            return [Send(candidate, reply(False, "restarted: waiting one lease before voting"))]
        if not self._may_vote(now, candidate):
            return [Send(candidate, reply(False, f"promised to {self._promised_to}"))]
        if request.pre_vote:
            granted = request.term > self.term
            return [Send(candidate, reply(granted, "" if granted else "term is stale"))]
        if request.term < self.term:
            return [Send(candidate, reply(False, "term is stale"))]
        actions: list[Action] = []
        if request.term > self.term:
            # No vote in the new term yet, so the vote below is certain: one write for both.
            actions += self._adopt_term(request.term, persist=False)
            actions += self._follow(None)
        if self.voted_for not in (None, candidate):
            return [*actions, Send(candidate, reply(False, f"voted for {self.voted_for}"))]
        if self.voted_for is None:
            self.voted_for = candidate
            actions += self._persist()
        self._promise(candidate, now)
        actions += self._follow(None)  # stop campaigning: we just promised someone else
        return [*actions, Send(candidate, reply(True))]

    def _on_renew_request(self, now: float, request: RenewRequest) -> list[Action]:
        def reply(ok: bool, reason: str = "") -> RenewReply:
            return RenewReply(self.term, self.node_id, ok, request.round, self.digest, reason)

        leader = request.leader
        if request.term < self.term:
            return [Send(leader, reply(False, "term is stale"))]
        actions: list[Action] = []
        if request.term > self.term:
            actions += self._adopt_term(request.term)
        if self.role is not _FOLLOWER or self.primary != leader:
            actions += self._follow(leader)
        if self.is_voter:
            self._promise(leader, now)
        # Standbys that do not vote wait as long as a voter's promise would last.
        heard_until = now + self.settings.lease_duration
        self._election_at = max(heard_until, self._vote_after) + self._timeout()
        if not self.is_voter:
            return actions  # standbys listen; only voters answer
        return [*actions, Send(leader, reply(True))]

    def _on_release(self, now: float, sender: str, release: Release) -> list[Action]:
        """The leader we follow stepped down to stop, and gives our promise back."""

        def reply(ok: bool, reason: str = "") -> RenewReply:
            return RenewReply(self.term, self.node_id, ok, release.round, self.digest, reason)

        leader = release.leader
        if sender != leader:  # only the leader itself may give back a promise made to it
            return []
        # In our term, from the primary we follow, or from one we know nothing against (no
        # other primary, no promise to another: we restarted since, or took its first
        # release already): all a release does is give back a promise made to that very
        # leader, and a campaign it asks for still needs a pre-vote.
        actions: list[Action] = []
        if release.term > self.term:  # a term we missed (a restart): adopt it, as a renewal
            actions += self._adopt_term(release.term) + self._follow(None)
        promised = self._promised_to not in (None, leader) and now < self._promise_until
        if release.term < self.term or self.primary not in (None, leader) or promised:
            why = "term is stale" if release.term < self.term else f"{leader} is not our primary"
            return actions + ([Send(leader, reply(False, why))] if self.is_voter else [])
        self._give_back_promise(leader)
        if self.primary == leader:
            self.primary = None
        if self.is_voter:
            actions.append(Send(leader, reply(True)))
        if release.successor == self.node_id:
            # At once, no election timeout; told again, a pre-vote round still in this term
            # (its election has not begun) starts afresh.
            if self.role is not _PRIMARY and self.held is None and not self._amnesiac:
                actions += self._start_pre_vote(now)
        elif self._campaigns:
            # Another is told to campaign (at once); should it fail, ours need not wait out
            # the lease: one election timeout, as after a lost election.
            fallback = max(now, self._vote_after) + self._timeout()
            self._election_at = min(self._election_at, fallback)
        return actions

    def _give_back_promise(self, to: str) -> None:
        """Drop the promise not to vote for anyone but ``to``, if it is ``to`` we promised."""
        if self._promised_to == to:
            self._promised_to = None
            self._promise_until = -math.inf

    def _may_vote(self, now: float, candidate: str) -> bool:
        if self._amnesiac or now < self._vote_after:
            return False
        return self._promised_to in (None, candidate) or now >= self._promise_until

    def _promise(self, to: str, now: float) -> None:
        until = now + self.settings.lease_duration
        if self._promised_to != to or until > self._promise_until:
            self._promised_to = to
            self._promise_until = until

    # ---------------------------------------------------------------- no record

    def _query(self, now: float) -> list[Action]:
        """Ask the other voters for their terms: a pre-vote request, which changes nothing
        at the voter, and whose answer (granted or not) carries the voter's term."""
        if not self._others:  # a lone voter has nobody to learn from: the fence guards it
            return self._learn()
        self._round += 1
        if self._first_query is None:
            self._first_query = self._round
        self._query_at = now + self.settings.renew_interval  # until enough have answered
        request = VoteRequest(self.term + 1, self.node_id, True, self._round, self.digest)
        return [Send(peer, request) for peer in sorted(self._others)]

    def _answers_query(self, reply: VoteReply) -> bool:
        # Only answers to queries sent after the restart wait: they were given after every
        # round that may have counted a vote we lost had closed.
        first = self._first_query
        return reply.pre_vote and first is not None and reply.round >= first

    def _heard_from(self, reply: VoteReply) -> list[Action]:
        term, recorded = self._heard.get(reply.voter, (0, False))
        self._heard[reply.voter] = (max(term, reply.term), recorded or reply.reason != NO_RECORD)
        records = sum(1 for _, recorded in self._heard.values() if recorded)
        # A cluster's first start: every other voter answered, and nobody knows of a term.
        first_start = len(self._heard) == len(self._others) and all(
            t == 0 for t, _ in self._heard.values()
        )
        if records >= self.records_needed or first_start:
            return self._learn()
        return []

    def _learn(self) -> list[Action]:
        """Take the highest term heard, and a vote unknown in it: vote only in later terms."""
        highest = max((t for t, _ in self._heard.values()), default=0)
        self._amnesiac = False
        self._heard = {}
        self._query_at = math.inf
        if highest >= self.term:
            self.term = highest
            self.voted_for = UNKNOWN_VOTE if highest > 0 else None
        # else: a term we adopted since, above any a majority held: no vote of ours counted
        # in it (and we have cast none since the start).
        return self._persist()

    # ---------------------------------------------------------------- shared

    def _adopt_term(self, term: int, *, persist: bool = True) -> list[Action]:
        """Move to a newer term (no vote in it yet); a primary or candidate gives up."""
        epoch = self.term
        was_primary = self.role is _PRIMARY
        self.term = term
        self.voted_for = None
        actions: list[Action] = []
        if was_primary:
            actions.append(SteppedDown(epoch, f"saw the newer term {term}"))
        if self.role is not _FOLLOWER:
            self.role = _FOLLOWER
            self._lease_until = -math.inf
            self._next_renew = math.inf
            self._rounds = {}
        return (self._persist() if persist else []) + actions

    def _follow(self, leader: str | None) -> list[Action]:
        actions: list[Action] = []
        if self.role is _PRIMARY:  # only reachable with a safety measure switched off
            actions = self._step_down(f"{leader} renews as primary in our term {self.term}")
        self.role = _FOLLOWER
        self.primary = leader
        self._election_at = max(self._now, self._promise_until, self._vote_after) + self._timeout()
        return actions

    def _persist(self) -> list[Action]:
        # Without a record, nothing is written: a record of a term alone would read, after
        # another restart, as "no vote in it", which we cannot know.
        if not self.knobs.persist_votes or self._amnesiac:
            return []
        return [Persist(self.term, self.voted_for)]

    def _mismatch(self, sender: str, message: Message) -> list[Action]:
        actions: list[Action] = [DigestMismatch(sender, message.voters_digest, self.digest)]
        match message:
            case VoteRequest():
                reason = "voter sets differ"
                refusal: Message = VoteReply(
                    self.term,
                    self.node_id,
                    False,
                    message.pre_vote,
                    message.round,
                    self.digest,
                    reason,
                )
                actions.append(Send(message.candidate, refusal))
            case RenewRequest() | Release():
                refusal = RenewReply(
                    self.term, self.node_id, False, message.round, self.digest, "voter sets differ"
                )
                actions.append(Send(message.leader, refusal))
            case _:
                pass
        return actions

    def _advance(self, now: float) -> float:
        # Time never runs backwards inside the core.
        if now > self._now:  # noqa: PLR1730 (max(self._now, now) without the call)
            self._now = now
        return self._now

    def _timeout(self) -> float:
        low, high = self.settings.election_timeout
        return self._rng.uniform(low, high)
