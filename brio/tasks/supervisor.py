"""Runs agents: claims queued tasks for this node and runs each in its own cancel scope.

The supervisor is the one place that turns a task record into a running agent. It claims a
task only when it has a free slot (``mesh.max_agents``), so the rest stay ``queued`` in the
store where any node may take them. An agent that raises or overruns its timeout marks its
task failed; the supervisor itself never dies of an agent. On shutdown it stops claiming,
lets running agents finish within a grace period, then cancels them and puts their tasks
back to ``queued`` so that none is lost.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import trio

from brio.agents.base import AgentContext, AgentError, HistoryMessage
from brio.agents.registry import RegisteredAgent
from brio.core.tasks import TaskStatus
from brio.store.base import Store, StoreError, TaskRecord
from brio.tasks.events import EventBus

log = logging.getLogger(__name__)

# Store writes that record an outcome must finish even while the node is being cancelled.
_FINAL_WRITE_TIMEOUT = 10.0
#: At most this many assigned tasks are taken (straight into running) in one claim.
CLAIM_BATCH = 64
#: How often the supervisor looks for tasks the store says run here but that do not.
RECONCILE_EVERY = 5.0


class StopReason(Enum):
    CANCELLED = "cancelled"  # a user asked
    SHUTDOWN = "shutdown"  # the node is stopping: requeue


@dataclass(eq=False)
class _Running:
    task: TaskRecord
    scope: trio.CancelScope
    reason: StopReason | None = None


def result_text(result: Any) -> str:
    """How a result enters the conversation history."""
    return result if isinstance(result, str) else json.dumps(result)


def _no_nul(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold U+0000; keep the rest of the text readable.
    return text.replace("\x00", "\ufffd")


def storable(value: Any) -> Any:
    """``value`` as the store can keep it: strict JSON (no NaN or Infinity), no NUL characters.

    Raises ValueError or TypeError (the task then fails with that text) for anything else.
    """
    json.dumps(value, allow_nan=False)
    return _without_nul(value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _no_nul(value)
    if isinstance(value, dict):
        return {_no_nul(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _json_size(value: Any) -> int:
    """About the size of ``value`` as JSON text; a string or a scalar costs no encoding."""
    if isinstance(value, str):
        return len(value) + 2
    if not value or not isinstance(value, dict | list):
        return 8
    return len(json.dumps(value))


class RecentlyFinished:
    """The last tasks that ended here, as the store returned them when it committed their end.

    A client that waits for ``task_completed`` and then reads the task (``GET
    /api/tasks/{id}``) gets it from here instead of a store read in a worker thread: a task in
    a terminal state never changes again (every transition checks the status it leaves), so
    the committed record is the store's for good. Bounded in count and in bytes (a large
    prompt, input or result is not kept); a miss is simply read from the store.
    """

    def __init__(self, max_tasks: int = 1024, max_bytes: int = 8 << 20) -> None:
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self._tasks: OrderedDict[str, tuple[TaskRecord, int]] = OrderedDict()
        self._bytes = 0

    def add(self, task: TaskRecord) -> None:
        if not task.status.terminal:
            raise ValueError(f"task {task.id} is {task.status.value}, not finished")
        size = (
            256
            + len(task.prompt)
            + len(task.error or "")
            + _json_size(task.input)
            + _json_size(task.result)
        )
        if size > self.max_bytes // 16:
            return
        old = self._tasks.pop(task.id, None)
        if old is not None:
            self._bytes -= old[1]
        self._tasks[task.id] = (task, size)
        self._bytes += size
        while len(self._tasks) > self.max_tasks or self._bytes > self.max_bytes:
            _, (_, dropped) = self._tasks.popitem(last=False)
            self._bytes -= dropped

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._tasks.get(task_id)
        return None if found is None else found[0]

    def __len__(self) -> int:
        return len(self._tasks)


class Busy(RuntimeError):
    """No agent slot is free (or the node is draining) for work that must not wait."""


class Supervisor:
    def __init__(
        self,
        store: Store,
        agents: dict[str, RegisteredAgent],
        bus: EventBus,
        node_id: str,
        max_agents: int,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._agents = agents
        self._bus = bus
        self._node_id = node_id
        self._slots = trio.Semaphore(max_agents)
        self._max_agents = max_agents
        self._poll_interval = poll_interval
        self._wake = trio.Event()
        self._running: dict[str, _Running] = {}
        self._accepting = True
        self._idle = trio.Event()
        self._idle.set()
        self.recent = RecentlyFinished()  # what ended here, for reads right after the event
        # The primary's placer, when it runs here: a slot is free (it places more if tasks
        # wait for room), and a task went back to the queue (it places it again).
        self.on_finished: Callable[[str, str], None] = _finished  # (node id, task id)
        self.on_queued: Callable[[], None] = _nothing

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def max_agents(self) -> int:
        return self._max_agents

    @property
    def accepting(self) -> bool:
        """False once ``drain`` began: the node takes no new tasks."""
        return self._accepting

    def wake(self) -> None:
        """A task may be waiting: look now rather than at the next poll."""
        self._wake.set()

    def cancel_local(self, task_id: str) -> bool:
        """Cancel the agent running ``task_id`` here, if any. The caller records the state."""
        running = self._running.get(task_id)
        if running is None:
            return False
        running.reason = StopReason.CANCELLED
        running.scope.cancel()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run tasks until ``drain`` is called; then wait for the agents to end."""
        for task in await self._store.requeue_node_tasks(self._node_id):
            log.warning("task %s was left unfinished by a previous run; requeued", task.id)
            self._publish_update(task)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reconcile)
            task_status.started()
            more = True  # look at once: tasks may have been assigned here before we started
            while self._accepting:
                if not more:
                    with trio.move_on_after(self._poll_interval):
                        await self._wake.wait()
                # A wake from now on (a notice while we claim) is kept for the next claim.
                self._wake = trio.Event()
                await self._slots.acquire()  # one slot held while we claim
                if not self._accepting:
                    self._slots.release()
                    break
                # Claim for every free slot, but hold only one meanwhile: agent.invoke takes
                # the others without waiting, and must not find them all taken by a claim.
                limit = min(CLAIM_BATCH, 1 + self._slots.value)
                claimed: list[TaskRecord] = []
                t_claim = trio.current_time()
                try:
                    claimed = await self._store.claim_assigned(
                        self._node_id, sorted(self._agents), limit
                    )
                except Exception:
                    log.exception("claiming tasks failed; retrying")
                log.debug(
                    "claimed %d of %d in %.1f ms",
                    len(claimed),
                    limit,
                    (trio.current_time() - t_claim) * 1e3,
                )
                # Fewer than asked: nothing more is assigned here, so wait for the next
                # notice (or poll) instead of a claim that would find nothing. As many as
                # asked: more may be waiting for a slot; claim again once one is free.
                more = len(claimed) == limit
                if not claimed:
                    self._slots.release()
                    continue
                for n, task in enumerate(claimed):
                    if n and not self._slot_now():  # an invoke took the slot meanwhile
                        await self._requeue(task)
                        continue
                    if not self._accepting:  # drain began while we were claiming
                        self._slots.release()
                        await self._requeue(task)
                        continue
                    entry = _Running(task, trio.CancelScope())
                    self._running[task.id] = entry
                    self._idle = trio.Event()
                    self._publish_update(task)
                    nursery.start_soon(self._run_one, task, entry)

    def _slot_now(self) -> bool:
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    async def _reconcile(self) -> None:
        """Put back tasks the store says run here but that no agent here runs.

        A claim commits in the store before its answer reaches us; if the answer is lost (the
        connection drops), its tasks stay ``running`` on this healthy node, and nobody else
        would move them. Seen so twice in a row, ``RECONCILE_EVERY`` apart and for the same
        attempt, such a task is requeued (attempt + 1): a claim in flight is never that old.
        """
        suspects: set[tuple[str, int]] = set()
        while self._accepting:
            await trio.sleep(RECONCILE_EVERY)
            try:
                rows = await self._store.running_on_node(self._node_id)
            except Exception as exc:
                log.debug("looking for orphaned tasks failed: %s", exc)
                continue
            now = {(t.id, t.attempt) for t in rows if t.id not in self._running}
            for task in rows:
                if (task.id, task.attempt) in suspects & now and self._accepting:
                    log.warning(
                        "task %s is running here in the store, but no agent here runs it "
                        "(a claim whose answer was lost); requeued",
                        task.id,
                    )
                    await self._requeue(task)
            suspects = now

    async def invoke(self, agent_name: str, prompt: str, input_: dict[str, Any]) -> Any:
        """Run an agent once, outside the task queue (a mesh ``agent.invoke`` call).

        Nothing is stored; it takes one of the ``max_agents`` slots like a task, and is refused
        (``Busy``) rather than queued when none is free, so a caller cannot pile work up here.
        """
        agent = self._agents.get(agent_name)
        if agent is None:
            raise KeyError(agent_name)
        if not self._accepting:
            raise Busy("the node is draining")
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            raise Busy(f"all {self._max_agents} agent slots are in use") from None
        try:
            scope = trio.CancelScope()
            if agent.settings.timeout is not None:
                scope.deadline = trio.current_time() + agent.settings.timeout

            async def discard(chunk: str) -> None:
                pass

            ctx = AgentContext(
                task_id=f"invoke-{uuid.uuid4().hex[:12]}",
                agent=agent_name,
                prompt=prompt,
                input=input_,
                history=[],
                session_id=None,
                attempt=1,
                cancel_scope=scope,
                emit_fn=discard,
                settings=agent.settings,
            )
            with scope:
                return storable(await agent.run(ctx))
            raise AgentError(f"timed out after {agent.settings.timeout:g}s")
        finally:
            self._slots.release()

    async def drain(self, grace: float) -> None:
        """Stop claiming; give running agents ``grace`` seconds, then cancel and requeue them."""
        self._accepting = False
        self._wake.set()
        with trio.move_on_after(grace):
            await self._idle.wait()
        for running in list(self._running.values()):
            if running.reason is None:
                running.reason = StopReason.SHUTDOWN
            running.scope.cancel()
        await self._idle.wait()

    # --- one task -----------------------------------------------------------------------

    async def _run_one(self, claimed: TaskRecord, entry: _Running) -> None:
        try:
            await self._run_agent(claimed, entry)
        except BaseException as exc:
            # Whatever failed around the agent (the store, or the whole node being cancelled),
            # the task must not stay assigned or running: put it back for another attempt.
            if isinstance(exc, Exception):
                log.exception("supervising task %s failed; requeueing it", claimed.id)
            try:
                await self._requeue(entry.task)
            except Exception as requeue_exc:
                log.error(
                    "task %s could not be requeued (%s); it will be at this node's next start",
                    claimed.id,
                    requeue_exc,
                )
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._running.get(claimed.id) is entry:
                del self._running[claimed.id]
            self._slots.release()
            if not self._running:
                self._idle.set()

    async def _run_agent(self, claimed: TaskRecord, entry: _Running) -> None:
        scope = entry.scope
        agent = self._agents.get(claimed.agent)
        if agent is None:
            await self._finish(claimed, TaskStatus.FAILED, error=f"unknown agent {claimed.agent!r}")
            return
        task = claimed  # claim_assigned took it straight into running
        history: list[HistoryMessage] = []
        if task.session_id is not None:
            history = [
                HistoryMessage(m.role, m.content)
                for m in await self._store.list_messages(task.session_id)
            ]
        timeout = agent.settings.timeout
        if timeout is not None:
            scope.deadline = trio.current_time() + timeout
        chunks = 0

        async def emit(chunk: str) -> None:
            nonlocal chunks
            self._bus.publish(
                "task_output", task.id, task.session_id, {"chunk": chunk, "index": chunks}
            )
            chunks += 1

        ctx = AgentContext(
            task_id=task.id,
            agent=task.agent,
            prompt=task.prompt,
            input=task.input if isinstance(task.input, dict) else {"value": task.input},
            history=history,
            session_id=task.session_id,
            attempt=task.attempt,
            cancel_scope=scope,
            emit_fn=emit,
            settings=agent.settings,
        )
        result: Any = None
        error: str | None = None
        try:
            with scope:
                result = storable(await agent.run(ctx))
        except AgentError as exc:
            error = str(exc) or type(exc).__name__
        except (Exception, SystemExit) as exc:  # sys.exit() in an agent must not stop the node
            log.info("agent %s failed on task %s: %r", task.agent, task.id, exc)
            error = f"{type(exc).__name__}: {exc}"

        if scope.cancelled_caught:
            if entry.reason is StopReason.SHUTDOWN:
                await self._requeue(task)
            elif entry.reason is StopReason.CANCELLED:
                await self._finish(task, TaskStatus.CANCELLED, error="cancelled")
            else:
                limit = "unknown" if timeout is None or math.isinf(timeout) else f"{timeout:g}s"
                await self._finish(task, TaskStatus.FAILED, error=f"timed out after {limit}")
        elif error is not None:
            await self._finish(task, TaskStatus.FAILED, error=_no_nul(error))
        else:
            messages = None
            if task.session_id is not None:
                messages = [("user", task.prompt), ("assistant", result_text(result))]
            await self._finish(task, TaskStatus.SUCCEEDED, result=result, messages=messages)

    async def _finish(
        self,
        task: TaskRecord,
        status: TaskStatus,
        *,
        result: Any = None,
        error: str | None = None,
        messages: list[tuple[str, str]] | None = None,
    ) -> None:
        """Record the outcome, even while the node is being cancelled."""
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(_FINAL_WRITE_TIMEOUT):
                    done = await self._store.finish_task(
                        task.id, task.attempt, status, result=result, error=error, messages=messages
                    )
            except (StoreError, trio.TooSlowError) as exc:
                reason = str(exc) or "the store did not answer in time"
                log.error("task %s: recording %s failed: %s", task.id, status.value, reason)
                if status is not TaskStatus.SUCCEEDED:
                    raise
                # The result itself may be what the store refused; the failure must still land.
                await self._finish(
                    task, TaskStatus.FAILED, error=f"the result could not be stored: {reason}"
                )
                return
            if done is not None:
                self.recent.add(done)
                publish_completed(self._bus, done)
                self.on_finished(self._node_id, done.id)

    async def _requeue(self, task: TaskRecord) -> None:
        with trio.CancelScope(shield=True), trio.fail_after(_FINAL_WRITE_TIMEOUT):
            back = await self._store.requeue_task(task.id, task.attempt)
            if back is not None:
                log.info("task %s requeued (attempt %d next)", back.id, back.attempt)
                self._publish_update(back)
                self.on_queued()

    def _publish_update(self, task: TaskRecord) -> None:
        publish_update(self._bus, task)


def _nothing() -> None:
    pass


def _finished(node_id: str, task_id: str) -> None:
    pass


def publish_update(bus: EventBus, task: TaskRecord, *, reason: str | None = None) -> None:
    """A task changed state (``reason``: why, when it is not the obvious next step)."""
    data: dict[str, Any] = {
        "status": task.status.value,
        "attempt": task.attempt,
        "node_id": task.node_id,
    }
    if reason is not None:
        data["reason"] = reason
    bus.publish("task_update", task.id, task.session_id, data)


def publish_completed(bus: EventBus, task: TaskRecord) -> None:
    """The last event of a task: its terminal status with the result or error."""
    bus.publish(
        "task_completed",
        task.id,
        task.session_id,
        {
            "status": task.status.value,
            "result": task.result,
            "error": task.error,
            "attempt": task.attempt,
            "node_id": task.node_id,
        },
    )
