"""The placer against a real store (both backends): how much of the queue a round reads, and
that reading less neither breaks the scheduler's fairness nor lets a blocked head starve the
tasks behind it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

from brio.core.scheduler import Candidate, Scheduler, SchedulerSettings
from brio.core.tasks import TaskStatus
from brio.store import NewTask, Store
from brio.store.base import Assignment, Placement, QueuedRecord, TaskFilter, TaskRecord
from brio.tasks.events import EventBus
from brio.tasks.placer import Placer

EPOCH = 1


class Directory:
    """Live nodes as a test sets them; records the notices."""

    def __init__(self, *nodes: Candidate) -> None:
        self.nodes = list(nodes)
        self.gone: set[str] = set()  # nodes that are down
        self.told: list[tuple[str, list[str]]] = []

    def candidates(self) -> list[Candidate]:
        return list(self.nodes)

    def down(self, with_tasks: set[str]) -> list[str]:
        return sorted(with_tasks & self.gone)

    def notify(self, node_id: str, task_ids: list[str]) -> None:
        self.told.append((node_id, task_ids))


class Reads:
    """A real store that records the limit of each queued-tasks read (a first page, or a
    next page with the agents and pinned nodes it was limited to)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.limits: list[int] = []
        self.open_to: list[tuple[list[str], list[str]]] = []  # of each next page

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def queued_tasks(self, limit: int) -> list[QueuedRecord]:
        self.limits.append(limit)
        return await self.inner.queued_tasks(limit)

    async def queued_tasks_after(
        self, after: tuple[int, int], limit: int, agents: Sequence[str], nodes: Sequence[str]
    ) -> list[QueuedRecord]:
        self.limits.append(limit)
        self.open_to.append((list(agents), list(nodes)))
        return await self.inner.queued_tasks_after(after, limit, agents, nodes)


def node(node_id: str, capacity: int, *agents: str) -> Candidate:
    return Candidate(node_id, frozenset(agents or ("a",)), capacity, 0)


async def queue(store: Store, n: int, agent: str = "a", pin: str | None = None) -> list[str]:
    made = await store.create_tasks([NewTask(agent=agent, prompt="p", node_id=pin)] * n)
    ids = []
    for outcome in made:
        assert isinstance(outcome, tuple)
        ids.append(outcome[0].id)
    return ids


async def placer_for(store: Store, directory: Directory, **kwargs: Any) -> tuple[Placer, Reads]:
    assert await store.raise_fence(EPOCH, "c1")
    reads = Reads(store)
    placer = Placer(reads, Scheduler(SchedulerSettings()), directory, EventBus(), **kwargs)
    return placer, reads


async def assigned_ids(store: Store) -> list[str]:
    page = await store.list_tasks(TaskFilter(status=TaskStatus.ASSIGNED), limit=500)
    return [t.id for t in page.tasks]


async def assigned(store: Store, ids: list[str]) -> dict[str, str | None]:
    """Task id -> node for those of ``ids`` that are assigned."""
    out: dict[str, str | None] = {}
    for task_id in ids:
        task = await store.get_task(task_id)
        assert task is not None
        if task.status is TaskStatus.ASSIGNED:
            out[task_id] = task.node_id
    return out


async def test_a_round_reads_only_about_the_free_room_of_a_long_queue(store: Store) -> None:
    """Three free slots and 300 queued tasks: the round reads the room and the margin, not a
    batch of 500, and places the three oldest."""
    ids = await queue(store, 300)
    placer, reads = await placer_for(store, Directory(node("w1", 3)), margin=4)
    assert await placer.round(EPOCH) is False
    assert reads.limits == [3 + 4]
    assert placer.read == 7
    assert set(await assigned(store, ids)) == set(ids[:3])
    assert placer.waiting == 4  # the margin read and waits for room


async def test_the_next_round_reads_by_the_room_left_and_the_freed_slots(store: Store) -> None:
    """The first page of a round is sized by the loads the last round left: full nodes and
    one freed slot read the freed slot and the margin."""
    ids = await queue(store, 100)
    placer, reads = await placer_for(store, Directory(node("w1", 10)), margin=4)
    await placer.round(EPOCH)
    assert await store.cancel_task(ids[0]) is not None  # a slot of w1 frees
    placer.slot_freed("w1", ids[0])
    reads.limits.clear()
    await placer.round(EPOCH)
    assert reads.limits == [1 + 4]
    assert set(await assigned(store, ids)) == set(ids[1:11])


async def test_a_head_pinned_to_a_missing_node_does_not_starve_the_tasks_behind_it(
    store: Store,
) -> None:
    """Forty tasks pinned to a node that is not there, then six that w1 can run: the round
    reads a first page of the head, then a next page of only what w1 may take, which skips
    the rest of the head in the store and places the six."""
    await queue(store, 40, pin="gone")
    later = await queue(store, 6)
    placer, reads = await placer_for(store, Directory(node("w1", 10)), margin=2)
    await placer.round(EPOCH)
    assert set(await assigned(store, later)) == set(later)
    assert reads.limits == [10 + 2, 10 + 2] and reads.open_to == [(["a"], ["w1"])]
    assert placer.read == 12 + 6 and placer.waiting == 12
    # and again, with the head still there
    more = await queue(store, 2)
    placer.wake()
    await placer.round(EPOCH)
    assert set(await assigned(store, more)) == set(more)
    assert placer.read == 18 + 6 + 2  # first page (4 room + 2), the two


async def test_pages_are_planned_with_the_loads_of_the_pages_before(store: Store) -> None:
    """Six slots; the first page places four and meets blocked tasks, the next page sees the
    two slots left, not six: exactly six land, the six oldest."""
    await queue(store, 3, pin="gone")
    first = await queue(store, 4)
    await queue(store, 5, pin="gone")
    rest = await queue(store, 10)
    placer, reads = await placer_for(store, Directory(node("w1", 6)), margin=2)
    await placer.round(EPOCH)
    assert reads.limits == [6 + 2, 2 + 2]
    got = await assigned(store, first + rest)
    assert set(got) == set(first + rest[:2])
    assert {n: len(t) for n, t in (await store.node_tasks()).items()} == {"w1": 6}


async def test_tasks_waiting_for_a_full_node_do_not_starve_another_nodes_agent(
    store: Store,
) -> None:
    """w1 (agent a) is full with a long queue of a's; b's behind them go to w2 in one round
    (the room left on w2 keeps the round reading), and no a overtakes on w1."""
    heads = await queue(store, 2, agent="a")
    directory = Directory(node("w1", 2, "a"), node("w2", 3, "b"))
    placer, _ = await placer_for(store, directory, margin=2, batch=100)
    await placer.round(EPOCH)
    assert set(await assigned(store, heads)) == set(heads)
    blocked = await queue(store, 30, agent="a")
    bs = await queue(store, 3, agent="b")
    placer.wake()
    await placer.round(EPOCH)
    got = await assigned(store, blocked + bs)
    assert got == dict.fromkeys(bs, "w2")


async def test_a_round_reads_no_more_than_a_batch(store: Store) -> None:
    """Tasks pinned to w1 for an agent it does not run pass the next pages' filter and wait:
    the round stops after ``batch`` tasks read, and says there is nothing to do at once
    (nothing was placed)."""
    await queue(store, 30, agent="z", pin="w1")
    placer, reads = await placer_for(store, Directory(node("w1", 4)), margin=1, batch=12)
    assert await placer.round(EPOCH) is False
    assert reads.limits == [5, 5, 2] and placer.read == 12


async def test_room_no_queued_task_can_use_is_left_out_until_a_wake(store: Store) -> None:
    """w2 has room but runs only b, and only a's are queued: after a round that found so,
    a freed slot reads that slot and the margin, and no next page for w2; a wake (a b may
    have come) counts w2's room again."""
    await queue(store, 30, agent="a")
    directory = Directory(node("w1", 2, "a"), node("w2", 5, "b"))
    placer, reads = await placer_for(store, directory, margin=2)
    await placer.round(EPOCH)
    assert reads.limits == [7 + 2, 5 + 2] and reads.open_to == [(["b"], ["w2"])]
    freed = (await assigned_ids(store))[0]
    assert await store.cancel_task(freed) is not None
    placer.slot_freed("w1", freed)
    reads.limits.clear()
    await placer.round(EPOCH)
    assert reads.limits == [1 + 2]
    bs = await queue(store, 2, agent="b")
    placer.wake()
    reads.limits.clear()
    await placer.round(EPOCH)
    assert reads.limits == [5 + 2, 5 + 2]
    assert await assigned(store, bs) == dict.fromkeys(bs, "w2")


async def test_tasks_back_from_a_node_that_is_down_may_use_idle_room(store: Store) -> None:
    """w2 (agent b) is idle behind a queue of a's; b's come back from a dead node: the same
    round places them on w2, not only the next poll."""
    await queue(store, 30, agent="a")
    bs = await queue(store, 2, agent="b")
    directory = Directory(node("w1", 2, "a"), node("w2", 5, "b"))
    placer, _ = await placer_for(store, directory, margin=2)
    assert await store.assign_tasks(EPOCH, [Assignment(t, 1, "dead") for t in bs])
    await placer.round(EPOCH)  # w2 idle: nothing queued for it
    directory.gone = {"dead"}
    await placer.round(EPOCH)
    assert await assigned(store, bs) == dict.fromkeys(bs, "w2")


async def test_a_poll_counts_idle_room_again(store: Store) -> None:
    """Time alone may open idle room (a session's stickiness expires): a round after a
    poll, not woken by anything, looks for w2 again."""
    await queue(store, 30, agent="a")
    directory = Directory(node("w1", 2, "a"), node("w2", 5, "b"))
    placer, reads = await placer_for(store, directory, margin=2, poll=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        with trio.fail_after(5):
            while len(reads.limits) < 4:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert reads.limits[:4] == [7 + 2, 5 + 2, 5 + 2, 5 + 2]


async def test_a_round_that_read_a_batch_and_placed_some_runs_again_at_once(
    store: Store,
) -> None:
    """With a batch read, some placed and room left, more may be placeable: True."""
    ids = await queue(store, 3)
    await queue(store, 20, pin="gone")
    tail = await queue(store, 1)
    placer, _ = await placer_for(store, Directory(node("w1", 10)), margin=1, batch=10)
    assert await placer.round(EPOCH) is True
    assert set(await assigned(store, ids)) == set(ids)
    assert await assigned(store, tail) == {}


async def test_a_freed_slot_wakes_the_loop_while_the_queue_was_left_unread(store: Store) -> None:
    """The round stopped with every task it read placed and the node full (no task waits
    for room, but more are queued): a freed slot must still start a round."""
    ids = await queue(store, 5)
    placer, reads = await placer_for(store, Directory(node("w1", 3)), margin=1, batch=3, poll=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        with trio.fail_after(5):
            while len(await assigned(store, ids)) < 3:
                await trio.sleep(0.01)
        assert reads.limits == [3] and placer.waiting == 0
        assert await store.cancel_task(ids[0]) is not None
        placer.slot_freed("w1", ids[0])
        with trio.fail_after(5):
            while ids[3] not in await assigned(store, ids):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def test_batch_and_margin_must_be_positive() -> None:
    with pytest.raises(ValueError, match="margin"):
        Placer(None, Scheduler(SchedulerSettings()), Directory(), EventBus(), margin=0)  # type: ignore[arg-type]


async def idle_primary(store: Store, *nodes: Candidate) -> tuple[Placer, Reads, Directory]:
    """A placer whose first round (an empty queue) has run: it places submits as they come."""
    directory = Directory(*nodes)
    placer, reads = await placer_for(store, directory, poll=60)
    return placer, reads, directory


async def until_it_places_submits(placer: Placer) -> None:
    with trio.fail_after(5):
        while not placer.places_submits:
            await trio.sleep(0.005)


async def test_a_submit_to_an_idle_primary_is_placed_as_it_comes(store: Store) -> None:
    """With the queue read to its end and empty, a submit is inserted already assigned (no
    round: no queue read), by the strategy (round-robin here) and never beyond capacity by
    the loads the last round left plus its own placements; then it is queued and wakes one."""
    placer, reads, directory = await idle_primary(store, node("w1", 1), node("w2", 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        assert reads.limits == [2 + 16]  # the first round; none for the submits below
        first, created = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert created and first.status is TaskStatus.ASSIGNED
        second, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert second.status is TaskStatus.ASSIGNED
        assert {first.node_id, second.node_id} == {"w1", "w2"}
        assert reads.limits == [18]
        placer.tell([first, second])
        assert sorted(directory.told) == sorted(
            [(first.node_id, [first.id]), (second.node_id, [second.id])]
        )
        assert placer.placed == 2
        # both nodes are full by that count: the third waits in the queue, and the path is off
        third, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert third.status is TaskStatus.QUEUED and third.node_id is None
        placer.wake()  # as the service does for a task that comes back queued
        with trio.fail_after(5):
            while len(reads.limits) < 2:
                await trio.sleep(0.005)
        assert await assigned(store, [first.id, second.id, third.id]) == {
            first.id: first.node_id,
            second.id: second.node_id,
        }
        assert not placer.places_submits  # the third waits for room
        nursery.cancel_scope.cancel()


async def test_a_submit_is_queued_while_anything_may_wait_in_the_queue(store: Store) -> None:
    """A task that waits (no node runs its agent), a wake since the last round, or a fence
    that moved: the submit is a plain queued insert, for a round to place."""
    placer, _, _ = await idle_primary(store, node("w1", 5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        stuck, _ = await placer.create_task(NewTask(agent="nobody-runs-it", prompt="p"))
        assert stuck.status is TaskStatus.QUEUED  # the plan says it waits
        assert not placer.places_submits
        placer.wake()
        with trio.fail_after(5):
            while placer.read < 1:
                await trio.sleep(0.005)
        # the stuck task waits: every submit now goes through the queue, in its order
        after, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert after.status is TaskStatus.QUEUED
        await store.cancel_task(stuck.id)
        placer.wake()
        await until_it_places_submits(placer)  # the round placed `after`, the queue is empty
        assert (await assigned(store, [after.id])) == {after.id: "w1"}
        placer.wake()  # something changed: no submit is placed before the next round
        assert not placer.places_submits
        await until_it_places_submits(placer)
        # a newer primary raised the fence: the insert does not assign (and the task stays)
        assert await store.raise_fence(EPOCH + 1, "c2")
        late, created = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert created and late.status is TaskStatus.QUEUED and late.node_id is None
        assert (await store.get_task(late.id)) is not None
        nursery.cancel_scope.cancel()


async def test_a_replayed_key_is_not_placed_again(store: Store) -> None:
    """An idempotency key used before answers its task as it is; the count of placements
    is not moved by the replay."""
    placer, _, _ = await idle_primary(store, node("w1", 5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        new = NewTask(agent="a", prompt="p", idempotency_key="k")
        task, created = await placer.create_task(new)
        again, created_again = await placer.create_task(new)
        assert created and not created_again and again.id == task.id
        assert again.status is TaskStatus.ASSIGNED and again.node_id == "w1"
        page = await store.list_tasks(TaskFilter(), limit=10)
        assert [t.id for t in page.tasks] == [task.id]
        nursery.cancel_scope.cancel()


class GatedInserts(Reads):
    """Reads, and inserts of placed tasks that wait for ``gate`` (counted as they enter)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.gate = trio.Event()
        self.entered = 0

    async def create_task(
        self, new: NewTask, placement: Placement | None = None
    ) -> tuple[TaskRecord, bool]:
        if placement is not None:
            self.entered += 1
            await self.gate.wait()
        return await self.inner.create_task(new, placement)


async def test_placed_inserts_run_at_once_and_a_round_waits_for_them(store: Store) -> None:
    """Submits placed as they come are inserted concurrently (SQLite's group commit can
    take them in one fsync); a round waits until they are answered before it reads the
    loads, and a submit while it waits takes the queue."""
    assert await store.raise_fence(EPOCH, "c1")
    gated = GatedInserts(store)
    placer = Placer(gated, Scheduler(SchedulerSettings()), Directory(node("w1", 3)), EventBus())
    placer.poll = 60
    done: list[TaskRecord] = []

    async def submit() -> None:
        done.append((await placer.create_task(NewTask(agent="a", prompt="p")))[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        for _ in range(3):
            nursery.start_soon(submit)
        with trio.fail_after(5):
            while gated.entered < 3:
                await trio.sleep(0.005)
        placer.wake()
        await trio.sleep(0.05)
        assert len(gated.limits) == 1  # the round waits for the three in flight
        await submit()  # meanwhile: a plain queued insert
        assert done[-1].status is TaskStatus.QUEUED
        gated.gate.set()
        with trio.fail_after(5):
            while placer.waiting < 1:  # the round ran: the fourth waits for room
                await trio.sleep(0.005)
        assert sorted(t.status.value for t in done) == ["assigned"] * 3 + ["queued"]
        # capacity 3: the round read the three placed ones (a read before they landed would
        # have seen an empty node and placed the fourth too)
        placed = [t.id for t in done if t.status is TaskStatus.ASSIGNED]
        assert sorted(await assigned_ids(store)) == sorted(placed)
        nursery.cancel_scope.cancel()


async def finish(store: Store, task: TaskRecord) -> None:
    """What the worker does with a task assigned to it: claim it, run it, record it."""
    now = await store.get_task(task.id)
    assert now is not None and now.node_id is not None
    if now.status is TaskStatus.ASSIGNED:  # an earlier claim of its node may have taken it
        claimed = await store.claim_assigned(now.node_id, ["a"], 10)
        assert task.id in {t.id for t in claimed}
    assert await store.finish_task(task.id, now.attempt, TaskStatus.SUCCEEDED, result="ok")


async def test_a_completion_frees_its_slot_for_a_submit_placed_as_it_comes(store: Store) -> None:
    """w1 has two slots, both taken by submits placed as they came. When one of them
    finishes (its ``task_completed`` reaches the placer), the next submit is placed at once
    on the slot it left, with no round; a second event for the same task, or one for a task
    the loads do not count, frees nothing: the submit after that waits in the queue."""
    placer, reads, _ = await idle_primary(store, node("w1", 2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        first, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        second, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert {first.status, second.status} == {TaskStatus.ASSIGNED}
        await finish(store, first)
        placer.slot_freed("w1", first.id)
        third, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert third.status is TaskStatus.ASSIGNED and third.node_id == "w1"
        assert len(reads.limits) == 1  # the first round only
        placer.slot_freed("w1", first.id)  # again: already taken off
        placer.slot_freed("w1", "a-task-never-counted")
        placer.slot_freed("w2", second.id)  # not where it runs
        fourth, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert fourth.status is TaskStatus.QUEUED
        nursery.cancel_scope.cancel()


async def test_a_completion_the_last_read_saw_frees_nothing(store: Store) -> None:
    """A task that finished before a round read the loads is not in them: its event,
    arriving after the read, must not free a slot a second time."""
    placer, _, _ = await idle_primary(store, node("w1", 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        first, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert first.status is TaskStatus.ASSIGNED
        await finish(store, first)
        queued, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert queued.status is TaskStatus.QUEUED  # w1 is full by the count
        placer.wake()  # the round reads w1 empty, places `queued` there
        with trio.fail_after(5):
            while (await assigned(store, [queued.id])) != {queued.id: "w1"}:
                await trio.sleep(0.005)
        await until_it_places_submits(placer)
        placer.slot_freed("w1", first.id)  # late: the read already had it finished
        late, _ = await placer.create_task(NewTask(agent="a", prompt="p"))
        assert late.status is TaskStatus.QUEUED  # w1 still runs `queued`
        nursery.cancel_scope.cancel()


async def test_no_node_gets_more_than_its_capacity_whatever_the_events(store: Store) -> None:
    """A seeded random run of submits, finishes, completion events (on time, late,
    repeated, for the wrong node, lost) and wakes against two small nodes: after every step
    the store holds no node with more tasks assigned or running than its capacity."""
    import random

    rng = random.Random(12)
    capacity = {"w1": 2, "w2": 3}
    placer, _, _ = await idle_primary(store, node("w1", 2), node("w2", 3))
    unsent: list[tuple[str, str]] = []  # completions not yet told to the placer
    async with trio.open_nursery() as nursery:
        nursery.start_soon(placer.run, EPOCH)
        await until_it_places_submits(placer)
        for _ in range(150):
            step = rng.random()
            if step < 0.45:
                await placer.create_task(NewTask(agent="a", prompt="p"))
                if rng.random() < 0.5:
                    placer.wake()
            elif step < 0.75:
                on = await store.node_tasks()
                if on:
                    node_id = rng.choice(sorted(on))
                    task = await store.get_task(rng.choice(on[node_id]))
                    assert task is not None
                    await finish(store, task)
                    unsent.append((node_id, task.id))
            elif unsent:
                node_id, task_id = unsent.pop(rng.randrange(len(unsent)))
                kind = rng.random()
                if kind < 0.7:
                    placer.slot_freed(node_id, task_id)
                elif kind < 0.8:
                    placer.slot_freed(node_id, task_id)
                    placer.slot_freed(node_id, task_id)
                elif kind < 0.9:
                    placer.slot_freed("w2" if node_id == "w1" else "w1", task_id)
                # else: lost
            await trio.sleep(rng.choice([0, 0, 0.002]))  # a round may run in between
            loads = {n: len(t) for n, t in (await store.node_tasks()).items()}
            assert all(loads[n] <= capacity[n] for n in loads), loads
        nursery.cancel_scope.cancel()
