"""The lease driver: moves gRPC messages, time and disk writes in and out of ``brio.core.lease``.

```
LeaseDriver.run
├── timer            sleeps until the core's next deadline, then ticks it
├── one task per     Vote / Renew call to a peer; the reply is fed back to the core
│   outgoing request
└── primary          exists only while the core says PRIMARY (brio.mesh.primary), in a cancel
                     scope whose deadline falls before the lease ends by this node's clock
```

Requests addressed to the store's witness voter (``brio.core.witness.WITNESS_ID``) go to the
store (``brio.store.witness.Witness``) instead of a peer, with the same timeout; its answer is
fed back as a reply from the witness. A store that cannot answer is silence, as an unreachable
peer is; after ``WITNESS_TROUBLE_AFTER`` failures in a row it is also a problem in /health.

A graceful stop (SIGTERM, ``brio mesh drain``) calls ``transfer``: the primary work is cancelled
and waited for, then the core's releases leave (``Renew`` with ``release`` set; to the store's
witness, its ``RELEASE`` statement), and the caller waits, at most ``TRANSFER_WAIT``, until a
standby campaigns in a newer term (docs/lease.md, *Handing over on a graceful stop*).

Incoming ``Vote`` and ``Renew`` requests are handled synchronously (``handle``): the core's
actions run in order, the vote is written to disk (fsync + rename) before the reply is returned,
and no other event can slip in between. Time is ``trio.current_time()``, the same monotonic
clock the cancel scopes use, so the primary's deadline and the core's lease agree.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from brio.config.model import LeaseConfig
from brio.core import lease as core
from brio.core.constants import MAX_TERM, WITNESS_ID
from brio.mesh import methods, pb
from brio.mesh.lease_state import load_lease_state, save_lease_state
from brio.mesh.methods import Method
from brio.mesh.primary import FenceLost
from brio.store.witness import Witness
from brio.tasks.mesh_view import LeaseView

log = logging.getLogger(__name__)

#: Primary work stops this long before the lease ends (on top of the drift margin).
PRIMARY_MARGIN = 0.05
MISMATCH_LOG_EVERY = 60.0
#: How often a coordinator looks again at whether the cluster's voter sets agree.
PROBLEM_CHECK_EVERY = 1.0
#: A refused (forged) lease message is logged at most this often per sender address and reason.
REFUSAL_LOG_EVERY = 10.0
#: Failed witness requests in a row (about two leases of renewals) before /health says so.
WITNESS_TROUBLE_AFTER = 6
#: How long a graceful stop waits for its primary work to end, then for a newer term.
TRANSFER_WAIT = 1.0


class LeaseTransport(Protocol):
    async def call(
        self, node_id: str, method: Method, request: Any, timeout: float | None = None
    ) -> Any:
        """Call a peer by node id; raise an exception if that is not possible."""


def settings_from(config: LeaseConfig) -> core.LeaseSettings:
    low, high = config.election_timeout
    return core.LeaseSettings(
        config.lease_duration, (low, high), config.max_clock_drift, config.max_term_jump
    )


class LeaseDriver:
    def __init__(
        self,
        node_id: str,
        *,
        config: LeaseConfig,
        voters: frozenset[str],
        candidates: frozenset[str],
        candidate: bool,
        data_dir: Path,
        transport: LeaseTransport,
        primary: Callable[[int], Awaitable[None]] | None,
        warning: str | None = None,
        misconfigured: Callable[[], str | None] = lambda: None,
        witness: Witness | None = None,
    ) -> None:
        self.node_id = node_id
        self.settings = settings_from(config)
        self.voters = voters
        self.candidates = candidates
        self.is_candidate = candidate
        self.data_dir = data_dir
        self.transport = transport
        self._primary_work = primary
        self.warning = warning  # about the voter set, logged at start
        self._misconfigured = misconfigured  # a reason not to campaign, looked at each second
        self.problem: str | None = None  # why this coordinator holds back from the lease
        # The store as a voter, when the voter set names it; None: the witness is silent.
        self.witness = witness if WITNESS_ID in voters else None
        self.witness_failures = 0  # in a row
        self.witness_errors = 0  # in all
        self._mismatch_seen: dict[str, float] = {}  # candidate peer -> last digest mismatch
        self.core: core.Lease | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._primary_scope: trio.CancelScope | None = None
        self._primary_done: trio.Event | None = None  # set once that scope's work has ended
        self._changed = trio.Event()  # set by every batch of actions: ``transfer`` waits on it
        self._mismatch_logged: dict[str, float] = {}
        self._refusal_logged: dict[tuple[str, str], tuple[float, int]] = {}
        self.max_term_jump = config.max_term_jump
        self.elections_won = 0
        self.step_downs = 0
        self.refused = 0  # lease messages refused as forged or out of bounds

    # --- queries --------------------------------------------------------------------------

    def view(self) -> LeaseView:
        fallback = "standby" if self.is_candidate else "worker"
        voters = _shown(self.voters)
        if self.core is None:
            return LeaseView(fallback, 0, None, None, self.node_id in self.voters, voters=voters)
        status = self.core.status()
        role = "primary" if status.role is core.Role.PRIMARY else fallback
        remaining = None
        if status.lease_until is not None:
            remaining = max(0.0, status.lease_until - trio.current_time())
        return LeaseView(
            role,
            status.epoch,
            status.primary,
            remaining,
            status.voter,
            problem=self.problem,
            voters=voters,
        )

    @property
    def witness_trouble(self) -> str | None:
        """Why the store's witness has not answered lately, or None."""
        if WITNESS_ID not in self.voters or not self.is_candidate:
            return None
        if self.witness is None:
            return (
                f"the voter set names {WITNESS_ID} (the store), but this node's store is no witness"
            )
        if self.witness_failures < WITNESS_TROUBLE_AFTER:
            return None
        return (
            f"the store's witness voter ({WITNESS_ID}) did not answer the last "
            f"{self.witness_failures} lease requests: the database is unreachable or slow"
        )

    def status_pb(self) -> pb.LeaseStatus:
        v = self.view()
        return pb.LeaseStatus(
            role=v.role,
            epoch=v.epoch or 0,
            primary=v.primary or "",
            lease_remaining=v.lease_remaining if v.lease_remaining is not None else -1.0,
            voters=sorted(self.voters),
            voter=v.voter,
        )

    # --- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.warning:
            log.warning("lease: %s", self.warning)
        saved = load_lease_state(self.data_dir)  # a corrupt file stops the start, loudly
        persisted = core.Persisted(*saved) if saved is not None else None
        now = trio.current_time()
        self.core = core.Lease(
            self.node_id,
            voters=self.voters,
            peers=self.candidates,
            candidate=self.is_candidate,
            settings=self.settings,
            now=now,
            rng=random.Random(),
            persisted=persisted,
        )
        log.info(
            "lease: %s, voters %s, term %d; no vote for %.1f s after start",
            "candidate" if self.is_candidate else "voter",
            ",".join(sorted(self.voters)),
            self.core.term,
            self.settings.lease_duration,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    check_at = trio.current_time() + PROBLEM_CHECK_EVERY
                    with trio.move_on_at(min(self.core.next_deadline(), check_at)):
                        await self._wake.wait()
                    self._check_problem()
                    now = trio.current_time()
                    if self._wake.is_set() or now >= self.core.next_deadline():
                        # _execute sets _wake for handlers that run between ticks; reset it
                        # after, or the loop never waits again (synchronous: nothing is lost)
                        self._execute(self.core.tick(now))
                    self._wake = trio.Event()
        finally:
            self._nursery = None

    def handle(self, sender: str, message: core.Message) -> core.Message | None:
        """Feed an incoming request to the core; the reply to return, if any.

        The caller (``brio.mesh.handlers``) has checked who sent it (``refusal``) first."""
        if self.core is None:
            return None
        return self._execute(self.core.receive(trio.current_time(), sender, message), sender)

    def may_send(
        self, sender: str, message: core.VoteRequest | core.RenewRequest | core.Release
    ) -> bool:
        """Whether ``sender`` may send this request at all: a renewal or a vote request from
        a configured candidate (a coordinator), a pre-vote also from a voter (a node that lost
        its vote record asks every voter for its term that way; a pre-vote changes nothing)."""
        if sender in self.candidates:
            return True
        pre_vote = isinstance(message, core.VoteRequest) and message.pre_vote
        return pre_vote and sender in self.voters

    def term_refusal(self, message: core.Message) -> str | None:
        """Why a message's term is out of bounds, or None: above what the fence (a BIGINT)
        and the wire hold, or more than ``[mesh.lease] max_term_jump`` above ours."""
        if message.term > MAX_TERM:
            return f"term {message.term} is above the highest term, {MAX_TERM} (2^63 - 1)"
        ours = self.core.term if self.core is not None else 0
        if message.term - ours > self.max_term_jump:
            return (
                f"term {message.term} jumps {message.term - ours} above ours ({ours}); "
                f"at most {self.max_term_jump} ([mesh.lease] max_term_jump)"
            )
        return None

    def log_refusal(self, kind: str, sender: str, where: str, reason: str) -> None:
        """A forged or out-of-bounds lease message: an attack or a badly misconfigured node.
        Logged as such, at most once per ``REFUSAL_LOG_EVERY`` per address and reason."""
        self.refused += 1
        key = (where, reason.split(" ", 1)[0] + kind)
        now = trio.current_time()
        last, hushed = self._refusal_logged.get(key, (-math.inf, 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._refusal_logged[key] = (last, hushed + 1)
            return
        if len(self._refusal_logged) > 1000:
            self._refusal_logged.clear()
        self._refusal_logged[key] = (now, 0)
        more = f" (and {hushed} more since)" if hushed else ""
        log.warning(
            "lease: refused a %s from %s naming %r: %s; a forged lease message (an attack) "
            "or a misconfigured node%s",
            kind,
            where,
            sender,
            reason,
            more,
        )

    async def transfer(self, timeout: float = TRANSFER_WAIT) -> str | None:
        """Hand the lease over before this node stops (SIGTERM, ``brio mesh drain``).

        A coordinator campaigns no more from here on. A primary steps down, waits for its
        primary work to end (the voters may vote for a successor as soon as the releases
        arrive, and the fence stays as it is), then sends the releases, and waits until a
        standby campaigns in a newer term: at most ``timeout`` in all. Without an answer the
        standbys take over as after a crash, once the promises run out. Returns what
        happened, for the operator, when this node was primary."""
        lease = self.core
        if lease is None or self._nursery is None:
            return None
        started = trio.current_time()
        was_primary = lease.role is core.Role.PRIMARY
        epoch = lease.term
        actions = lease.transfer(started, self.candidates - {self.node_id})
        self._execute([a for a in actions if not isinstance(a, core.Send)])
        if not was_primary:
            return None
        deadline = started + timeout
        done = self._primary_done
        if done is not None:
            with trio.move_on_at(deadline):
                await done.wait()
        self._execute([a for a in actions if isinstance(a, core.Send)])
        while lease.term == epoch and trio.current_time() < deadline:
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
        took = trio.current_time() - started
        if lease.term > epoch:
            said = f"handed over epoch {epoch}; a standby campaigns for epoch {lease.term}"
            log.warning("lease: %s (%.3f s)", said, took)
        else:
            said = f"released epoch {epoch}; no standby campaigned within {timeout:.1f} s"
            log.warning("lease: %s", said)
        return said

    # --- actions --------------------------------------------------------------------------

    def _execute(
        self, actions: list[core.Action], reply_to: str | None = None
    ) -> core.Message | None:
        reply: core.Message | None = None
        for action in actions:
            match action:
                case core.Persist(term, voted_for):
                    save_lease_state(self.data_dir, term, voted_for)
                case core.Send(to, message) if to == reply_to and _is_reply(message):
                    reply = message
                case core.Send(to, message):
                    if self._nursery is not None:
                        self._nursery.start_soon(self._send, to, message)
                case core.BecamePrimary(epoch, until):
                    self.elections_won += 1
                    log.warning("lease: primary for epoch %d", epoch)
                    self._start_primary(epoch, until)
                case core.LeaseExtended(epoch, until):
                    self._extend_primary(epoch, until)
                case core.SteppedDown(epoch, reason):
                    self.step_downs += 1
                    log.warning("lease: stepped down from epoch %d: %s", epoch, reason)
                    if self._primary_scope is not None:
                        self._primary_scope.cancel()
                case core.DigestMismatch(peer, theirs, ours):
                    self._log_mismatch(peer, theirs, ours)
        self._wake.set()
        self._changed.set()
        return reply

    def _deadline(self, until: float) -> float:
        return until - min(PRIMARY_MARGIN * self.settings.lease_duration, 0.5)

    def _start_primary(self, epoch: int, until: float) -> None:
        if self._nursery is None or self._primary_work is None:
            return
        scope = trio.CancelScope(deadline=self._deadline(until))
        self._primary_scope = scope
        done = self._primary_done = trio.Event()
        self._nursery.start_soon(self._run_primary, epoch, scope, done)

    def _extend_primary(self, epoch: int, until: float) -> None:
        scope = self._primary_scope
        if scope is not None and not scope.cancel_called:
            scope.deadline = self._deadline(until)
        else:  # the work stopped at its deadline, but a late renewal kept the lease
            self._start_primary(epoch, until)

    async def _run_primary(self, epoch: int, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            await self._primary_body(epoch, scope)
        finally:
            done.set()

    async def _primary_body(self, epoch: int, scope: trio.CancelScope) -> None:
        assert self._primary_work is not None
        with scope:
            try:
                await self._primary_work(epoch)
            except* FenceLost as group:
                exc = group.exceptions[0]
                assert isinstance(exc, FenceLost)
                log.warning("lease: fenced out of epoch %d: %s", epoch, exc)
                if self.core is not None:
                    self._execute(self.core.lost_fence(trio.current_time(), exc.fence_epoch))
            except* Exception:
                # A store outage must not kill the node: stop primary work; the lease
                # restarts it on the next renewal if we still hold it.
                log.exception("lease: primary work for epoch %d failed", epoch)
        if self._primary_scope is scope:
            scope.cancel()  # marks it finished, so that an extension starts a fresh one

    async def _send(self, to: str, message: core.Message) -> None:
        if to == WITNESS_ID:
            await self._ask_witness(message)
            return
        timeout = self._answer_timeout(message)
        if timeout is None:
            return
        method, request = _to_pb(message)
        try:
            answer = await self.transport.call(to, method, request, timeout)
        except Exception as exc:  # unreachable, unknown, refused: the core sees silence
            if getattr(exc, "status", None) in _REFUSED:
                # not silence but a refusal: another cluster secret, a certificate that
                # does not fit... nothing heals that, so it must not hide at DEBUG
                self.log_refused_by(to, type(message).__name__, exc)
            else:
                log.debug("lease: %s to %s: %s", type(message).__name__, to, exc)
            return
        reply = _from_pb(answer)
        if reply is None or _sender(reply) != to or self.core is None:
            return
        refusal = self.term_refusal(reply)
        if refusal is not None:
            self.log_refusal(type(reply).__name__, to, to, refusal)
            return
        self._execute(self.core.receive(trio.current_time(), to, reply))

    async def _ask_witness(self, message: core.Message) -> None:
        """A request to the store's witness voter: one statement, within the lease call
        timeout (``_answer_timeout``); its answer is a reply from ``WITNESS_ID``, its failure
        silence."""
        if self.witness is None or not isinstance(
            message, core.VoteRequest | core.RenewRequest | core.Release
        ):
            return
        timeout = self._answer_timeout(message)
        if timeout is None:
            return
        answer = None
        with trio.move_on_after(timeout):
            try:
                answer = await self.witness.ask_witness(message, self.settings.lease_duration)
            except Exception as exc:  # the store's error: the witness is silent this time
                log.debug("lease: %s to the store's witness: %s", type(message).__name__, exc)
        if answer is None:
            self.witness_failures += 1
            self.witness_errors += 1
            return
        self.witness_failures = 0
        if self.core is not None:
            self._execute(self.core.receive(trio.current_time(), WITNESS_ID, answer.reply))

    def _answer_timeout(self, message: core.Message) -> float | None:
        """How long to wait for the answer to ``message``; None: do not send it at all.

        A renewal's answer counts until the lease its round would grant ends (the core
        times that lease from the round's start, before any voter promised), so the call
        waits until then rather than one renewal interval: an answer held up by a stalled
        event loop or a slow database still extends the lease. Rounds leave every D/3 and
        each waits at most 0.95 D, so at most three calls per peer are in flight. A round
        whose lease ended before its request could leave (a stall of a whole lease) is not
        sent: the next tick steps down. Votes, pre-votes and releases wait one renewal
        interval: an election round is over at the next election timeout anyway."""
        if not isinstance(message, core.RenewRequest):
            return self.settings.renew_interval
        end = self.core.round_lease_end(message.round) if self.core is not None else None
        if end is None:
            return None
        remaining = end - trio.current_time()
        return remaining if remaining > 0 else None

    def log_refused_by(self, peer: str, kind: str, exc: Exception) -> None:
        now = trio.current_time()
        key = f"refused-by:{peer}"
        if now - self._mismatch_logged.get(key, -math.inf) < MISMATCH_LOG_EVERY:
            return
        self._mismatch_logged[key] = now
        log.error("lease: %s refused our %s: %s", peer, kind, exc)

    def _check_problem(self) -> None:
        """Hold the lease while the cluster's voter sets disagree; say so when that changes."""
        if self.core is None or not self.is_candidate:
            return
        now = trio.current_time()
        recent = sorted(
            peer
            for peer, at in self._mismatch_seen.items()
            if peer in self.candidates | {WITNESS_ID}
            and now - at < 3 * self.settings.lease_duration
        )
        problem = self._misconfigured()
        if problem is None and recent == [WITNESS_ID]:
            problem = (
                f"the store's witness ({WITNESS_ID}) holds a promise under another voter set: "
                "a coordinator with other [mesh.lease] voters (or another cluster) uses this "
                "database; every node needs the same voters (BRIO_MESH_LEASE_VOTERS)"
            )
        elif problem is None and recent:
            problem = (
                f"coordinator {', '.join(recent)} runs with another voter set; every node "
                "needs the same [mesh.lease] voters (BRIO_MESH_LEASE_VOTERS)"
            )
        if problem == self.problem:
            return
        self.problem = problem
        if problem is not None:
            log.error("lease: not campaigning: %s", problem)
        else:
            log.warning("lease: the voter sets agree again; campaigning")
        self._execute(self.core.hold(now, problem))

    def _log_mismatch(self, peer: str, theirs: str, ours: str) -> None:
        now = trio.current_time()
        self._mismatch_seen[peer] = now
        if now - self._mismatch_logged.get(peer, -math.inf) < MISMATCH_LOG_EVERY:
            return
        self._mismatch_logged[peer] = now
        log.error(
            "lease: %s runs with another voter set (digest %s, ours %s: %s); its lease "
            "messages are refused. Every node needs the same [mesh.lease] voters.",
            peer,
            theirs,
            ours,
            ",".join(sorted(self.voters)),
        )


# --- wire form ------------------------------------------------------------------------------

#: gRPC statuses by which a peer refuses our lease messages (rather than failing to answer).
_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"})


def _shown(voters: frozenset[str]) -> tuple[str, ...]:
    """The voters sorted, the store's witness last."""
    return tuple(sorted(voters, key=lambda v: (v == WITNESS_ID, v)))


def _is_reply(message: core.Message) -> bool:
    return isinstance(message, core.VoteReply | core.RenewReply)


def _sender(message: core.Message) -> str:
    match message:
        case core.VoteRequest():
            return message.candidate
        case core.RenewRequest() | core.Release():
            return message.leader
        case core.VoteReply() | core.RenewReply():
            return message.voter


def _to_pb(message: core.Message) -> tuple[Method, Any]:
    match message:
        case core.VoteRequest():
            request = pb.LeaseVoteRequest(
                term=message.term,
                candidate=message.candidate,
                pre_vote=message.pre_vote,
                round=message.round,
                voters_digest=message.voters_digest,
            )
            return methods.VOTE, request
        case core.RenewRequest():
            renew = pb.LeaseRenewRequest(
                term=message.term,
                leader=message.leader,
                round=message.round,
                voters_digest=message.voters_digest,
            )
            return methods.RENEW, renew
        case core.Release():
            release = pb.LeaseRenewRequest(
                term=message.term,
                leader=message.leader,
                round=message.round,
                voters_digest=message.voters_digest,
                release=True,
                successor=message.successor,
            )
            return methods.RENEW, release
    raise TypeError(f"{type(message).__name__} is not a request")


def vote_request_from(m: pb.LeaseVoteRequest) -> core.VoteRequest:
    return core.VoteRequest(m.term, m.candidate, m.pre_vote, m.round, m.voters_digest)


def renew_request_from(m: pb.LeaseRenewRequest) -> core.RenewRequest | core.Release:
    if m.release:
        return core.Release(m.term, m.leader, m.round, m.voters_digest, m.successor)
    return core.RenewRequest(m.term, m.leader, m.round, m.voters_digest)


def vote_reply_pb(m: core.VoteReply) -> pb.LeaseVoteReply:
    return pb.LeaseVoteReply(
        term=m.term,
        voter=m.voter,
        granted=m.granted,
        pre_vote=m.pre_vote,
        round=m.round,
        voters_digest=m.voters_digest,
        reason=m.reason,
    )


def renew_reply_pb(m: core.RenewReply) -> pb.LeaseRenewReply:
    return pb.LeaseRenewReply(
        term=m.term,
        voter=m.voter,
        ok=m.ok,
        round=m.round,
        voters_digest=m.voters_digest,
        reason=m.reason,
    )


def _from_pb(answer: Any) -> core.Message | None:
    if isinstance(answer, pb.LeaseVoteReply):
        return core.VoteReply(
            answer.term,
            answer.voter,
            answer.granted,
            answer.pre_vote,
            answer.round,
            answer.voters_digest,
            answer.reason,
        )
    if isinstance(answer, pb.LeaseRenewReply):
        return core.RenewReply(
            answer.term, answer.voter, answer.ok, answer.round, answer.voters_digest, answer.reason
        )
    return None
