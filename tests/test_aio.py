"""The trio/asyncio bridge: results, cancellation both ways, timeouts, loop errors."""

from __future__ import annotations

import asyncio
import contextvars
import logging

import pytest
import sniffio
import trio

from brio import aio


async def test_call_returns_the_result(aio_loop: None) -> None:
    assert await aio.call(asyncio.sleep, 0, result=42) == 42


async def test_call_needs_the_loop() -> None:
    assert not aio.loop_is_open()
    with pytest.raises(RuntimeError, match="open_loop"):
        await aio.call(asyncio.sleep, 0)
    async with aio.open_loop():
        assert aio.loop_is_open()
    assert not aio.loop_is_open()


async def test_trio_cancellation_cancels_the_asyncio_side(aio_loop: None) -> None:
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with trio.move_on_after(0.05) as scope:
        await aio.call(slow)
    assert scope.cancelled_caught
    assert seen == ["cancelled"]


async def test_asyncio_side_cancellation_is_an_exception(aio_loop: None) -> None:
    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with pytest.raises(aio.AsyncioCancelled):
        await aio.call(cancels_itself)


async def test_asyncio_timeouts_are_timeout_error(aio_loop: None) -> None:
    with pytest.raises(TimeoutError):
        await aio.call(asyncio.wait_for, asyncio.sleep(1), 0.01)


async def test_loop_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ValueError("callback failed")

    with caplog.at_level(logging.ERROR, logger="brio.aio"):
        async with aio.open_loop() as loop:
            loop.call_soon(broken)
            await trio.sleep(0.01)
            assert await aio.call(asyncio.sleep, 0, result="still running") == "still running"
    assert "callback failed" in caplog.text


# --- run_trio: asyncio code awaiting trio code -----------------------------------------------


async def test_run_trio_returns_the_result_and_sees_the_context(aio_loop: None) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def in_trio(x: int) -> tuple[int, str, str | None]:
        await trio.lowlevel.checkpoint()
        return x * 2, var.get(), sniffio.current_async_library()

    async def in_asyncio() -> tuple[int, str, str | None]:
        var.set("from asyncio")
        return await aio.run_trio(in_trio, 21)

    assert await aio.call(in_asyncio) == (42, "from asyncio", "trio")


async def test_run_trio_raises_what_the_trio_side_raised(aio_loop: None) -> None:
    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("nope")

    async def in_asyncio() -> None:
        await aio.run_trio(fails)

    with pytest.raises(KeyError, match="nope"):
        await aio.call(in_asyncio)


async def test_cancelling_the_asyncio_caller_cancels_and_waits_for_the_trio_side(
    aio_loop: None,
) -> None:
    seen: list[str] = []
    started = trio.Event()

    async def slow() -> None:
        try:
            started.set()
            await trio.sleep(10)
        except trio.Cancelled:
            seen.append("trio side cancelled")
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)  # cleanup that takes a while: the caller waits for it
            seen.append("trio side ended")
            raise

    async def in_asyncio() -> str:
        task = asyncio.ensure_future(aio.run_trio(slow))
        await aio.run_trio(started.wait)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            seen.append("asyncio side cancelled")
        return "done"

    with trio.fail_after(5):
        assert await aio.call(in_asyncio) == "done"
    assert seen == ["trio side cancelled", "trio side ended", "asyncio side cancelled"]


async def test_a_repeated_cancel_still_waits_for_the_trio_side(aio_loop: None) -> None:
    seen: list[str] = []
    started = trio.Event()

    async def slow() -> None:
        try:
            started.set()
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.02)
            seen.append("trio side ended")

    async def in_asyncio() -> None:
        task = asyncio.ensure_future(aio.run_trio(slow))
        await aio.run_trio(started.wait)
        for _ in range(3):
            task.cancel()
            await asyncio.sleep(0.001)
        with pytest.raises(asyncio.CancelledError):
            await task
        seen.append("asyncio side cancelled")

    with trio.fail_after(5):
        await aio.call(in_asyncio)
    assert seen == ["trio side ended", "asyncio side cancelled"]


async def test_closing_the_loop_cancels_trio_sides_still_running() -> None:
    seen: list[str] = []
    started = trio.Event()

    async def forever() -> None:
        try:
            started.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            seen.append("trio side cancelled")
            raise

    async def in_asyncio() -> None:
        try:
            await aio.run_trio(forever)
        except asyncio.CancelledError:
            seen.append("asyncio side cancelled")
            raise

    with trio.fail_after(5):
        async with aio.open_loop() as loop:
            loop.create_task(in_asyncio())
            await started.wait()
    assert sorted(seen) == ["asyncio side cancelled", "trio side cancelled"]


async def test_run_trio_needs_a_running_loop() -> None:
    async def nothing() -> None:
        pass

    coro = aio.run_trio(nothing)
    with pytest.raises(RuntimeError):
        coro.send(None)  # no asyncio loop is running here
    coro.close()


class _Rounds:
    """Counts trio scheduling rounds: a task that checkpoints in a loop runs once per round."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.count += 1
            await trio.lowlevel.checkpoint()


async def _asyncio_callbacks(n: int, rounds: _Rounds) -> tuple[list[int], list[int]]:
    """Queue ``n`` asyncio callbacks at once; the order they ran in and the round each saw."""
    ran: list[int] = []
    seen_at: list[int] = []
    done = trio.Event()

    async def queue_them() -> None:
        loop = asyncio.get_running_loop()

        def callback(i: int) -> None:
            ran.append(i)
            seen_at.append(rounds.count)
            if len(ran) == n:
                done.set()

        for i in range(n):
            loop.call_soon(callback, i)

    await aio.call(queue_them)
    await done.wait()
    return ran, seen_at


async def test_ready_asyncio_callbacks_run_in_one_trio_round(aio_loop: None) -> None:
    # trio-asyncio alone yields to trio after every callback: 40 callbacks, 40 rounds.
    rounds = _Rounds()
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        ran, seen_at = await _asyncio_callbacks(40, rounds)
        nursery.cancel_scope.cancel()
    assert ran == list(range(40))
    assert max(seen_at) - min(seen_at) <= 1


async def test_a_long_queue_of_callbacks_still_lets_trio_run(aio_loop: None) -> None:
    n = 4 * aio.CALLBACKS_PER_ROUND
    rounds = _Rounds()
    async with trio.open_nursery() as nursery:
        await nursery.start(rounds.run)
        ran, seen_at = await _asyncio_callbacks(n, rounds)
        nursery.cancel_scope.cancel()
    assert ran == list(range(n))
    # trio shuffles the order of a round's tasks, so two rounds' batches of callbacks may
    # fall between two turns of the counting task; never more
    assert max(seen_at.count(r) for r in set(seen_at)) <= 2 * aio.CALLBACKS_PER_ROUND
    assert max(seen_at) - min(seen_at) >= 2


async def test_timers_fire_while_callbacks_keep_coming(aio_loop: None) -> None:
    # A callback that requeues itself keeps the queue busy; a due timer must still run.
    fired = trio.Event()

    async def busy_then_timer() -> None:
        loop = asyncio.get_running_loop()
        spins = 0

        def spin() -> None:
            nonlocal spins
            spins += 1
            if not fired.is_set() and spins < 100_000:
                loop.call_soon(spin)

        loop.call_soon(spin)
        loop.call_later(0.01, fired.set)

    await aio.call(busy_then_timer)
    with trio.fail_after(5):
        await fired.wait()


async def test_cancelled_timers_do_not_pile_up_in_the_loop(aio_loop: None) -> None:
    # trio-asyncio keeps a cancelled timer until it falls due; set-and-cancel per operation
    # (asyncpg's idle timer, a call's deadline) would keep one object per operation alive.
    fired: list[int] = []

    async def churn() -> int:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, fired.append, 1)  # a live timer among them must still fire
        for _ in range(20 * aio.PRUNE_TIMERS_AT):
            loop.call_later(300, fired.append, 0).cancel()
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        return len(loop._timers)  # type: ignore[attr-defined]

    left = await aio.call(churn)
    assert left <= 2 * aio.PRUNE_TIMERS_AT
    assert fired == [1]
