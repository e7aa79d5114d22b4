"""The one bridge between trio and asyncio: every asyncio library is entered through here.

Brio is a trio program, but asyncpg and grpclib live on asyncio. trio-asyncio runs an asyncio
loop inside trio; this module is the only place that imports it, so that the rest of the code
stays plain trio and the bridging rules live in one spot:

- ``open_loop()`` opens the loop and installs an exception handler that logs. The default
  handler re-raises into the surrounding nursery, so one misbehaving asyncio callback (a client
  that fails its TLS handshake, say) would otherwise crash the whole node.
- ``run_trio()`` is the other direction: asyncio code (a grpclib request handler) awaits a trio
  coroutine function, which runs as a trio task; cancelling the asyncio side cancels it, and
  waits for it to end. It starts the task itself, in the loop's own task nursery, instead of
  through ``trio_asyncio.trio_as_aio``: that queues the start as an asyncio callback, and the
  loop then stops taking callbacks until the new task has run once, so every mesh request cost
  the whole loop a trio scheduling round (half the mesh's throughput, bench/mesh_calls.py).
- ``call()`` runs one asyncio coroutine function from trio. Cancelling the trio scope cancels
  the asyncio task and surfaces as ``trio.Cancelled`` as usual. An asyncio-side cancellation
  that trio did not ask for becomes ``AsyncioCancelled``, an ordinary exception, so that it
  cannot be mistaken for (or swallowed like) a trio cancellation. ``asyncio.TimeoutError`` is
  the builtin ``TimeoutError`` on Python 3.11+, so timeouts need no translation.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import trio
import trio_asyncio

__all__ = ["AsyncioCancelled", "call", "loop_is_open", "open_loop", "run_trio"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class AsyncioCancelled(Exception):
    """An asyncio task was cancelled from the asyncio side while trio was still waiting on it."""


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    logger.error(
        "unhandled error in asyncio code: %s",
        context.get("message", "no message"),
        exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None,
    )


@asynccontextmanager
async def open_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Run an asyncio loop inside trio for the body; asyncio objects must be created inside it."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_loop_exception)
        _run_ready_callbacks_together(loop)
        yield loop


#: The most asyncio callbacks one trio scheduling round runs (asyncio runs every ready one).
CALLBACKS_PER_ROUND = 64


def _run_ready_callbacks_together(loop: Any) -> None:
    """Make the loop run the asyncio callbacks that are ready together, then yield to trio
    once, as asyncio's own loop does, instead of yielding after each one.

    trio-asyncio 0.16's ``_main_loop_one`` takes one callback from its queue with a trio
    ``receive()``, a checkpoint: every asyncio callback (a task step, a socket read, a future
    done) cost a whole trio scheduling round, an epoll poll among it, and a PostgreSQL
    operation has several. This replaces the step on the loop object (the pinned version's
    ``_main_loop`` looks it up on each turn) with one that runs the callbacks queued when it
    starts through the library's own ``no_wait`` path, which takes a ready one without
    waiting, and waits as before when none is ready.
    """
    step = loop._main_loop_one  # trio-asyncio's own step: bound before it is replaced
    queue = loop._q_recv
    prune_at = PRUNE_TIMERS_AT

    async def run_ready(no_wait: bool = False) -> None:
        nonlocal prune_at
        if len(loop._timers) >= prune_at:
            prune_at = max(PRUNE_TIMERS_AT, 2 * _drop_cancelled_timers(loop._timers))
        ready = queue.statistics().current_buffer_used
        if no_wait or ready == 0:
            await step(no_wait)
            return
        for _ in range(min(ready, CALLBACKS_PER_ROUND)):
            await step(True)
        await trio.lowlevel.checkpoint()

    loop._main_loop_one = run_ready


#: Timers in the loop's heap at which the cancelled ones are dropped (then at twice the live).
PRUNE_TIMERS_AT = 512


def _drop_cancelled_timers(timers: list[asyncio.TimerHandle]) -> int:
    """Drop the cancelled timers from trio-asyncio's heap, in place; the live ones left.

    trio-asyncio leaves a cancelled timer in its heap until it falls due (asyncio's own loop
    drops them once they are half the heap). Code that sets a timer and cancels it for every
    operation then keeps one object per operation alive for the whole delay: asyncpg renews a
    300 s idle timer at each release of a pooled connection, which left about 300,000 timers in
    a busy coordinator's heap after five minutes, for every full garbage collection to walk
    (pauses of up to a second of its trio loop on a saturated machine). Called when the heap has
    doubled since the last time, which keeps the cost per timer constant.
    """
    live = [timer for timer in timers if not timer.cancelled()]
    timers[:] = live
    heapq.heapify(timers)
    return len(live)


def loop_is_open() -> bool:
    """True when the current trio task can reach an open loop from ``open_loop()``."""
    loop = trio_asyncio.current_loop.get()
    return loop is not None and not loop.is_closed()


async def call(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await the asyncio coroutine function ``fn(*args, **kwargs)`` from trio."""
    if not loop_is_open():
        raise RuntimeError("brio.aio.call() needs an open brio.aio.open_loop() around it")
    try:
        result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    except asyncio.CancelledError as exc:
        # trio-asyncio already turns a cancellation that trio asked for into trio.Cancelled;
        # what arrives here was cancelled by someone on the asyncio side.
        raise AsyncioCancelled(f"{getattr(fn, '__qualname__', fn)!s} was cancelled") from exc
    return result


async def run_trio(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """From asyncio code inside ``open_loop()``, await the trio coroutine function ``fn``.

    ``fn`` runs as a task of the loop's trio nursery (where ``trio_as_aio`` puts it too, so
    it is cancelled and waited for when the loop closes); it sees the caller's contextvars.
    An exception from it is raised here; a trio cancellation of it (the loop closing) is an
    ``asyncio.CancelledError`` here. Cancelling the caller cancels ``fn`` and waits until it
    has ended, as ``trio_as_aio`` does, so that it cannot outlive its caller.
    """
    loop = asyncio.get_running_loop()
    # trio-asyncio's task nursery (set while the loop runs): the one trio_as_aio starts in
    nursery: trio.Nursery | None = getattr(loop, "_nursery", None)
    if nursery is None:
        raise RuntimeError("brio.aio.run_trio() needs a running brio.aio.open_loop() loop")
    answer: asyncio.Future[T] = loop.create_future()
    scope = trio.CancelScope()
    running = True
    ended: asyncio.Future[None] | None = None  # made only if the caller is cancelled

    async def run() -> None:
        nonlocal running
        try:
            with scope:
                result = await fn(*args, **kwargs)
            if not answer.done():
                if scope.cancelled_caught:
                    answer.cancel()
                else:
                    answer.set_result(result)
        except Exception as exc:
            if not answer.done():
                answer.set_exception(exc)
        except BaseException:  # trio.Cancelled (the loop closing): it must reach its scope
            if not answer.done():
                answer.cancel()
            raise
        finally:
            running = False
            if ended is not None and not ended.done():
                ended.set_result(None)

    nursery.start_soon(run, name=fn)
    try:
        return await answer
    except asyncio.CancelledError:
        scope.cancel()
        if running:
            ended = loop.create_future()
            while not ended.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(ended)
        raise
