"""The witness voter's SQL (``brio.store.witness``) against its pure rules (``brio.core.witness``).

Differential: hypothesis draws sequences of vote, pre-vote and renew requests (candidates,
terms, two voter sets) with steps of database time between them; each request goes to a real
PostgreSQL through ``PostgresStore.ask_witness`` and, with the database time the statement
decided at, to ``decide``; the two must give the same reply and leave the same record. Time
steps are made by moving the stored promise back (``promise_until - dt``), in both: the same
as the database clock running ``dt`` further, without sleeping.

Then the race the row lock is for: two coordinators (two stores, two pools) ask for the same
term at the same moment, many times; exactly one gets the vote.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brio.aio import open_loop
from brio.core.constants import WITNESS_ID
from brio.core.lease import Release, RenewRequest, VoteRequest
from brio.core.witness import WitnessRecord, accepted, decide
from brio.store import open_store
from brio.store.postgres import PostgresStore
from brio.store.witness import RECORD, record_of

pytestmark = pytest.mark.postgres

LEASE = 5.0
RESET = (
    "UPDATE lease_witness SET term = 0, voted_for = NULL, promised_to = NULL,"
    " promise_until = 0, voters_digest = '' WHERE id = 1"
)
SHIFT = "UPDATE lease_witness SET promise_until = promise_until - $1 WHERE id = 1"

candidates = st.sampled_from(["c1", "c2", "c1", "c3"])
terms = st.integers(min_value=0, max_value=6)
digests = st.sampled_from(["A", "A", "A", "B"])
rounds = st.integers(min_value=0, max_value=1000)
requests = st.one_of(
    st.builds(VoteRequest, terms, candidates, st.booleans(), rounds, digests),
    st.builds(RenewRequest, terms, candidates, rounds, digests),
    st.builds(Release, terms, candidates, rounds, digests),
)
# A negative step: the database clock stepped back (a promise must not shrink then).
waits = st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.9, 5.1, 7.0, -3.0]).map(lambda dt: ("wait", dt))
steps = st.lists(st.one_of(requests, requests, waits), min_size=1, max_size=25)


async def _store(url: str) -> PostgresStore:
    store = await open_store(url)
    assert isinstance(store, PostgresStore)
    return store


async def _execute(store: PostgresStore, sql: str, *args: object) -> None:
    await store._read(lambda conn: conn.execute(sql, *args))


async def _differential(url: str, sequence: list[object]) -> None:
    async with open_loop():
        store = await _store(url)
        try:
            await _execute(store, RESET)
            model = WitnessRecord()
            for step in sequence:
                if isinstance(step, tuple):
                    _, dt = step
                    await _execute(store, SHIFT, dt)
                    model = replace(model, promise_until=model.promise_until - dt)
                    continue
                assert isinstance(step, VoteRequest | RenewRequest | Release)
                got = await store.ask_witness(step, LEASE)
                want_record, want_reply = decide(model, step, got.now, LEASE)
                assert got.reply == want_reply, step
                assert got.record == want_record, step
                row = await store._read(lambda conn: conn.fetchrow(RECORD.text))
                assert record_of(row) == want_record  # what is stored, not only returned
                model = want_record
        finally:
            await store.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=steps)
@example(  # the database clock steps back: the promise to c1 is not shortened by its renewal
    sequence=[VoteRequest(1, "c1", False, 1, "A"), ("wait", -3.0), RenewRequest(1, "c1", 2, "A")]
)
@example(  # a release gives the promise back: c2 is granted at once; a stale one changes nothing
    sequence=[
        VoteRequest(1, "c1", False, 1, "A"),
        Release(1, "c2", 2, "A"),
        Release(1, "c1", 3, "A"),
        VoteRequest(2, "c2", False, 1, "A"),
        Release(1, "c1", 4, "A"),
    ]
)
def test_the_statements_decide_as_the_core(postgres_url: str, sequence: list[object]) -> None:
    trio.run(_differential, postgres_url, sequence)


def test_a_fresh_witness_grants_then_keeps_its_promise(postgres_url: str) -> None:
    """The first answers spelt out, so that a shared mistake of core and SQL shows too."""

    async def main() -> None:
        async with open_loop():
            store = await _store(postgres_url)
            try:
                pre = await store.ask_witness(VoteRequest(1, "c1", True, 1, "A"), LEASE)
                assert (accepted(pre.reply), pre.reply.term, pre.record) == (
                    True,
                    0,
                    WitnessRecord(),
                )
                vote = await store.ask_witness(VoteRequest(1, "c1", False, 2, "A"), LEASE)
                assert accepted(vote.reply) and vote.reply.voter == WITNESS_ID
                assert vote.record.promised_to == "c1" and vote.record.voted_for == "c1"
                assert vote.record.promise_until == vote.now + LEASE
                other = await store.ask_witness(VoteRequest(2, "c2", False, 1, "A"), LEASE)
                assert not accepted(other.reply)
                assert other.reply.reason == "promised to c1"
                assert other.record == vote.record
                stranger = await store.ask_witness(RenewRequest(1, "c1", 3, "B"), LEASE)
                assert not accepted(stranger.reply)
                assert stranger.reply.voters_digest == "A"  # the candidate's core sees it
            finally:
                await store.close()

    trio.run(main)


def test_two_coordinators_at_once_get_one_vote(postgres_url: str) -> None:
    async def main() -> None:
        async with open_loop():
            one, two = await _store(postgres_url), await _store(postgres_url)
            try:

                async def ask(store: PostgresStore, who: str, term: int, won: list[str]) -> None:
                    got = await store.ask_witness(VoteRequest(term, who, False, 1, "A"), 0.0)
                    if accepted(got.reply):
                        won.append(who)

                for term in range(1, 41):
                    granted: list[str] = []
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ask, one, "c1", term, granted)
                        nursery.start_soon(ask, two, "c2", term, granted)
                    assert len(granted) == 1, (term, granted)
            finally:
                await one.close()
                await two.close()

    trio.run(main)
