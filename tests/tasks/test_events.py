"""The event bus: filters, order, and cutting off a slow subscriber."""

import json

import trio

from brio.tasks.events import Event, EventBus, Subscription


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
