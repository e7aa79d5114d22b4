"""The trio/asyncio bridge: results, cancellation both ways, timeouts, loop errors."""

from __future__ import annotations

import asyncio
import logging

import pytest
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
