"""The event bus: filters, order, and cutting off a slow subscriber."""

import json

import pytest
import trio

from brio.store.base import MAX_CREATE_BATCH
from brio.tasks.events import EVENT_TYPES, SUBSCRIBER_MAX_EVENTS, Event, EventBus, Subscription


async def test_subscribers_get_only_what_they_asked_for_in_order() -> None:
    bus = EventBus()
    with bus.subscribe() as by_task, bus.subscribe() as by_session, bus.subscribe() as everything:
        by_task.task_ids.add("t1")
        by_session.session_ids.add("s1")
        everything.everything = True
        bus.publish("task_created", "t1", None, {})
        bus.publish("task_created", "t2", "s1", {})
        bus.publish("task_output", "t1", None, {"chunk": "a"})
        bus.publish("task_output", "t3", None, {})

        def drain(sub: Subscription) -> list[Event]:
            out = []
            while True:
                try:
                    out.append(sub.receive.receive_nowait())
                except trio.WouldBlock:
                    return out

        assert [(e.type, e.task_id) for e in drain(by_task)] == [
            ("task_created", "t1"),
            ("task_output", "t1"),
        ]
        assert [e.task_id for e in drain(by_session)] == ["t2"]
        seqs = [e.seq for e in drain(everything)]
        assert len(seqs) == 4 and seqs == sorted(seqs)
    assert bus.subscriber_count == 0


async def test_a_slow_subscriber_is_cut_off_without_blocking_others() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=2) as slow, bus.subscribe(buffer=100) as fast:
        slow.everything = fast.everything = True
        for i in range(5):
            bus.publish("task_output", "t", None, {"index": i})
        assert slow.overflowed
        got = [e async for e in slow.receive]  # ends: the bus closed the stream
        assert len(got) == 2
        assert not fast.overflowed
        assert len([fast.receive.receive_nowait() for _ in range(5)]) == 5


async def test_a_subscriber_is_cut_off_by_bytes_too() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=1000, max_bytes=10_000) as sub:
        sub.everything = True
        bus.publish("task_created", "t", None, {"prompt": "x" * 4000})
        bus.publish("task_created", "t", None, {"prompt": "x" * 4000})
        assert not sub.overflowed
        first = sub.receive.receive_nowait()
        sub.delivered(first)  # taken off the stream: room again
        bus.publish("task_created", "t", None, {"prompt": "x" * 4000})
        assert not sub.overflowed
        bus.publish("task_created", "t", None, {"prompt": "x" * 4000})
        assert sub.overflowed
        assert json.loads(first.text)["data"]["prompt"] == "x" * 4000


async def test_the_default_bounds_hold_the_largest_batch_but_not_a_reader_that_stopped() -> None:
    """A batch of MAX_CREATE_BATCH echo tasks makes five events a task; the old 1000-event
    buffer cut a subscriber off within the first batch's task_created events."""
    bus = EventBus()
    with bus.subscribe() as reader:
        reader.everything = True
        for kind in ["task_created", "task_update", "task_update", "task_output"]:
            for i in range(MAX_CREATE_BATCH):
                bus.publish(kind, f"t{i}", None, {"status": "queued", "prompt": f"p{i}"})
        for i in range(MAX_CREATE_BATCH):
            bus.publish("task_completed", f"t{i}", None, {"status": "succeeded"})
        assert not reader.overflowed
        got = [reader.receive.receive_nowait() for _ in range(5 * MAX_CREATE_BATCH)]
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert got[0].type == "task_created" and got[-1].type == "task_completed"
    with bus.subscribe() as stopped:
        stopped.everything = True
        for i in range(SUBSCRIBER_MAX_EVENTS):
            bus.publish("task_output", "t", None, {"index": i})
        assert not stopped.overflowed
        bus.publish("task_output", "t", None, {"index": SUBSCRIBER_MAX_EVENTS})
        assert stopped.overflowed


async def test_a_type_filter_drops_events_before_they_are_serialised_or_queued() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=1) as completions:
        completions.everything = True
        completions.types = frozenset({"task_completed"})
        skipped = [bus.publish(kind, "t", None, {}) for kind in EVENT_TYPES[:3]]
        assert all("text" not in e.__dict__ for e in skipped)  # never made into JSON
        done = bus.publish("task_completed", "t", None, {"status": "succeeded"})
        assert not completions.overflowed  # a buffer of one held the only wanted event
        assert completions.receive.receive_nowait() is done
        assert completions.pending_bytes == len(done.text)


def test_a_local_only_subscription_gets_no_event_from_the_mesh_and_costs_it_no_json() -> None:
    """The forwarder and the task meter want this node's own events: one that came from a
    peer (``origin``) is neither queued for them nor serialised for them."""
    bus = EventBus()
    with bus.subscribe() as local, bus.subscribe() as every:
        local.everything, local.local_only = True, True
        every.everything = True
        mine = bus.publish("task_update", "t1", None, {"status": "running"})
        theirs = bus.publish("task_update", "t2", None, {"status": "running"}, origin="worker-1")
        assert local.receive.receive_nowait() is mine
        with pytest.raises(trio.WouldBlock):
            local.receive.receive_nowait()
        assert [every.receive.receive_nowait() for _ in range(2)] == [mine, theirs]
        assert local.pending_bytes == len(mine.text)
    with bus.subscribe() as local:
        local.everything, local.local_only = True, True
        unseen = bus.publish("task_completed", "t3", None, {"status": "ok"}, origin="worker-1")
        assert "text" not in unseen.__dict__  # nobody wanted it: never serialised
