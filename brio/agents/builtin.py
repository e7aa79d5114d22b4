"""The two agents every node has: ``echo`` and ``sleep`` (for tests and benchmarks)."""

from __future__ import annotations

import trio

from brio.agents.base import AgentContext, AgentError


async def echo(ctx: AgentContext) -> str:
    """Return the prompt unchanged, streaming it as one output chunk."""
    await ctx.emit(ctx.prompt)
    return ctx.prompt


async def sleep(ctx: AgentContext) -> dict[str, float]:
    """Wait input.ms milliseconds (default 0), then report how long it slept."""
    raw = ctx.input.get("ms", 0)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise AgentError(f"input.ms: expected a non-negative number of milliseconds, got {raw!r}")
    await trio.sleep(raw / 1000)
    return {"slept_ms": float(raw)}
