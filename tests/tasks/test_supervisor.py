"""The supervisor against a real SQLite store, with store faults injected around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from brio.agents.base import AgentContext
from brio.agents.registry import RegisteredAgent
from brio.config.model import AgentConfig
from brio.core.scheduler import Scheduler, SchedulerSettings
from brio.core.tasks import TaskStatus
from brio.store import open_store
from brio.store.base import NewTask, Store, StoreError, TaskRecord
from brio.tasks import supervisor as supervisor_module
from brio.tasks.events import EventBus
from brio.tasks.placer import Placer
from brio.tasks.service import TaskService
from brio.tasks.single import LocalPrimary, SingleNodeDirectory
from brio.tasks.supervisor import RecentlyFinished, Supervisor


class FlakyStore:
    """A real store whose chosen methods fail a given number of times."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failures: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.failures:
            return attr

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if self.failures[name] > 0:
                self.failures[name] -= 1
                raise StoreError(f"injected failure of {name}")
            return await attr(*args, **kwargs)

        return flaky


async def nan(ctx: AgentContext) -> Any:
    return {"x": float("nan")}


async def nul(ctx: AgentContext) -> Any:
    return {"out\x00": "a\x00b", "list": ["\x00"]}


def agents(**fns: Any) -> dict[str, RegisteredAgent]:
    return {name: RegisteredAgent(name, "test", "", fn, AgentConfig()) for name, fn in fns.items()}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path / 'brio.db'}")
    yield s
    await s.close()


def single_node(
    store: Any, reg: dict[str, RegisteredAgent], slots: int, *, poll: float, claim_poll: float
) -> tuple[Supervisor, Placer]:
    """A supervisor and the placer that assigns to it, wired as on a node without a mesh
    (``brio.node.root``): a finished task is a freed slot, a requeued one a queued task."""
    bus = EventBus()
    sup = Supervisor(store, reg, bus, "n1", slots, poll_interval=claim_poll)
    placer = Placer(
        store,
        Scheduler(SchedulerSettings()),
        SingleNodeDirectory("n1", "coordinator", reg, sup),
        bus,
        poll=poll,
    )
    sup.on_finished = placer.slot_freed
    sup.on_queued = placer.wake
    return sup, placer


@asynccontextmanager
async def running(store: Any, sup: Supervisor, placer: Placer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(LocalPrimary("n1", store, placer).run)
        await nursery.start(sup.run)
        yield
        await sup.drain(1)
        nursery.cancel_scope.cancel()


async def wait_terminal(store: Store, ids: list[str]) -> None:
    with trio.fail_after(10):
        for task_id in ids:
            while (task := await store.get_task(task_id)) is None or not task.status.terminal:
                await trio.sleep(0.01)


async def run_until_done(store: Any, reg: dict[str, RegisteredAgent], task_id: str) -> TaskRecord:
    """Run a supervisor and, as a node without a mesh does, the placer that assigns to it."""
    sup, placer = single_node(store, reg, 2, poll=0.02, claim_poll=0.02)
    async with running(store, sup, placer):
        await wait_terminal(store, [task_id])
    task: TaskRecord | None = await store.get_task(task_id)
    assert task is not None
    return task


class LosesOneAnswer(FlakyStore):
    """The first claim that takes a task commits, and its answer is lost."""

    lost = 0

    async def claim_assigned(self, *args: Any) -> list[TaskRecord]:
        claimed: list[TaskRecord] = await self.inner.claim_assigned(*args)
        if claimed and not self.lost:
            self.lost += 1
            raise StoreError("the connection dropped before the answer")
        return claimed


async def test_a_result_json_cannot_hold_fails_the_task(store: Store) -> None:
    task, _ = await store.create_task(NewTask(agent="nan", prompt=""))
    done = await run_until_done(store, agents(nan=nan), task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error is not None and "JSON" in done.error


async def test_nul_characters_are_replaced_not_fatal(store: Store) -> None:
    task, _ = await store.create_task(NewTask(agent="nul", prompt=""))
    done = await run_until_done(store, agents(nul=nul), task.id)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result == {"out\ufffd": "a\ufffdb", "list": ["\ufffd"]}


async def test_a_refused_result_still_ends_the_task_failed(store: Store) -> None:
    async def echo(ctx: AgentContext) -> str:
        return "fine"

    flaky = FlakyStore(store)
    flaky.failures["finish_task"] = 1  # the success write fails, the failure write lands
    task, _ = await store.create_task(NewTask(agent="echo", prompt=""))
    done = await run_until_done(flaky, agents(echo=echo), task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error == "the result could not be stored: injected failure of finish_task"


async def test_a_store_failure_before_the_agent_requeues_the_task(store: Store) -> None:
    ran: list[int] = []

    async def record(ctx: AgentContext) -> str:
        ran.append(ctx.attempt)
        return "ok"

    flaky = FlakyStore(store)
    flaky.failures["list_messages"] = 1  # reading the session's history, before the agent
    session = await store.create_session("s", {})
    task, _ = await store.create_task(NewTask(agent="record", prompt="", session_id=session.id))
    done = await run_until_done(flaky, agents(record=record), task.id)
    assert done.status is TaskStatus.SUCCEEDED
    assert ran == [2]  # the first attempt never started; the task came back and ran again


async def test_a_finished_task_wakes_the_placer_for_the_next(store: Store) -> None:
    """With one slot and polls a minute apart, a backlog still drains at once: each finish
    wakes the placer, whose assignment wakes the supervisor."""

    async def quick(ctx: AgentContext) -> str:
        return ctx.prompt

    sup, placer = single_node(store, agents(quick=quick), 1, poll=60, claim_poll=60)
    ids = [(await store.create_task(NewTask(agent="quick", prompt=str(i))))[0].id for i in range(5)]
    async with running(store, sup, placer):
        await wait_terminal(store, ids)
    assert placer.placed == 5


async def test_a_claim_whose_answer_was_lost_is_put_back_and_runs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim commits, then its answer is lost: the task is running in the store on a
    healthy node that does not run it. The supervisor finds it and requeues it."""
    monkeypatch.setattr(supervisor_module, "RECONCILE_EVERY", 0.05)
    ran: list[int] = []

    async def record(ctx: AgentContext) -> str:
        ran.append(ctx.attempt)
        return "ok"

    task, _ = await store.create_task(NewTask(agent="record", prompt=""))
    done = await run_until_done(LosesOneAnswer(store), agents(record=record), task.id)
    assert (done.status, done.attempt) == (TaskStatus.SUCCEEDED, 2)
    assert ran == [2]  # attempt 1 was never run: its claim's answer never arrived


class CountingStore(FlakyStore):
    """A real store that counts the calls of chosen methods."""

    def __init__(self, inner: Store, *names: str) -> None:
        super().__init__(inner)
        self.calls = dict.fromkeys(names, 0)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.calls:
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return counted


async def test_a_freed_slot_costs_a_round_only_when_tasks_wait_for_room(store: Store) -> None:
    """With room for every task, a finish reads nothing; with tasks waiting for room, each
    finish brings the next one in (polls a minute apart, so only wakes can do it)."""

    async def quick(ctx: AgentContext) -> str:
        return ctx.prompt

    counting = CountingStore(store, "queued_tasks", "claim_assigned")
    sup, placer = single_node(counting, agents(quick=quick), 2, poll=60, claim_poll=60)
    async with running(store, sup, placer):
        await trio.sleep(0.1)  # the first round (empty queue) and the first claim are done
        rounds = counting.calls["queued_tasks"]
        task, _ = await store.create_task(NewTask(agent="quick", prompt="one"))
        placer.wake()
        await wait_terminal(store, [task.id])
        await trio.sleep(0.1)
        # one round placed it; its finish (nothing waiting) did not start another
        assert counting.calls["queued_tasks"] == rounds + 1
        # the claim got fewer tasks than it asked for: no second claim that finds nothing
        assert counting.calls["claim_assigned"] == 2

        ids = [
            (await store.create_task(NewTask(agent="quick", prompt=str(i))))[0].id for i in range(5)
        ]
        placer.wake()
        await wait_terminal(store, ids)
    assert placer.placed == 6


async def test_a_task_requeued_by_the_supervisor_wakes_the_placer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task put back here (a claim whose answer was lost) is placed again at once, not at
    the next poll a minute later."""
    monkeypatch.setattr(supervisor_module, "RECONCILE_EVERY", 0.05)

    async def quick(ctx: AgentContext) -> str:
        return ctx.prompt

    sup, placer = single_node(
        LosesOneAnswer(store), agents(quick=quick), 2, poll=60, claim_poll=0.05
    )
    task, _ = await store.create_task(NewTask(agent="quick", prompt="x"))
    async with running(store, sup, placer):
        await wait_terminal(store, [task.id])
    done = await store.get_task(task.id)
    assert done is not None and (done.status, done.attempt) == (TaskStatus.SUCCEEDED, 2)
    assert placer.placed == 2


async def test_a_failed_read_of_the_placer_raises_the_stores_own_error(store: Store) -> None:
    """The placer reads the load and the queue at once; a failure of either is the store's
    error itself (what the lease's primary work and LocalPrimary handle), not a group."""
    for method in ("node_tasks", "queued_tasks"):
        flaky = FlakyStore(store)
        flaky.failures[method] = 1
        _, placer = single_node(flaky, agents(), 1, poll=60, claim_poll=60)
        with pytest.raises(StoreError, match=f"injected failure of {method}"):
            await placer.round(1)
        assert await placer.round(1) is False  # the next round reads again


async def echo(ctx: AgentContext) -> Any:
    return ctx.prompt


async def test_a_finished_task_is_kept_as_the_store_committed_it(store: Store) -> None:
    """``Supervisor.recent`` holds the record finish_task returned, the store's own, which
    ``TaskService.get_task`` then answers without a store read."""
    task, _ = await store.create_task(NewTask(agent="echo", prompt="hello"))
    sup, placer = single_node(store, agents(echo=echo), 2, poll=0.02, claim_poll=0.02)
    async with running(store, sup, placer):
        await wait_terminal(store, [task.id])
    stored = await store.get_task(task.id)
    assert stored is not None and stored.result == "hello"
    assert sup.recent.get(task.id) == stored

    class NoReads(FlakyStore):
        async def get_task(self, task_id: str) -> TaskRecord | None:
            raise AssertionError("read from the store")

    service = TaskService(NoReads(store), agents(echo=echo), EventBus(), sup)
    assert await service.get_task(task.id) == stored


def _finished(task_id: str, *, prompt: str = "", result: Any = None) -> TaskRecord:
    now = datetime.now(UTC)
    return TaskRecord(
        id=task_id,
        seq=1,
        agent="echo",
        prompt=prompt,
        input={},
        session_id=None,
        idempotency_key=None,
        priority=0,
        status=TaskStatus.SUCCEEDED,
        node_id="n1",
        attempt=1,
        result=result,
        error=None,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
    )


def test_recently_finished_is_bounded_in_count_and_bytes() -> None:
    recent = RecentlyFinished(max_tasks=3, max_bytes=16 * 1024)
    for i in range(5):
        recent.add(_finished(f"t{i}"))
    assert len(recent) == 3
    assert recent.get("t0") is None and recent.get("t1") is None
    assert recent.get("t4") is not None
    recent.add(_finished("big", result="x" * 2000))  # over a sixteenth of the bytes: not kept
    assert recent.get("big") is None and len(recent) == 3

    recent = RecentlyFinished(max_tasks=100, max_bytes=16 * 1024)
    for i in range(20):  # about 870 bytes each: the 19th goes over 16 KiB
        recent.add(_finished(f"mid{i}", prompt="p" * 300, result={"r": "y" * 300}))
    assert 16 <= len(recent) < 20
    assert recent.get("mid0") is None and recent.get("mid19") is not None


def test_recently_finished_refuses_a_task_that_has_not_ended() -> None:
    running_task = replace(_finished("t"), status=TaskStatus.RUNNING)
    with pytest.raises(ValueError, match="not finished"):
        RecentlyFinished().add(running_task)
