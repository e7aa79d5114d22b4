"""The two agents every node has: ``echo`` and ``sleep`` (for tests and benchmarks)."""

from __future__ import annotations

import trio

from brio.agents.base import AgentContext, AgentError


async def echo(ctx: AgentContext) -> str:
    """Return the prompt unchanged, streaming it as one output chunk."""
    await ctx.emit(ctx.prompt)
    return ctx.prompt


# A day: long enough for any test or benchmark, short enough that ``ms = 1e308`` cannot hold
# one of the node's agent slots for ever.
MAX_SLEEP_MS = 86_400_000


async def sleep(ctx: AgentContext) -> dict[str, float]:
    """Wait input.ms milliseconds (default 0), then report how long it slept."""
    raw = ctx.input.get("ms", 0)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= MAX_SLEEP_MS:
        raise AgentError(
            f"input.ms: expected a number of milliseconds from 0 to {MAX_SLEEP_MS}, got {raw!r}"
        )
    await trio.sleep(raw / 1000)
    return {"slept_ms": float(raw)}
