"""Agents used by the API tests, loaded through ``[agents.NAME] entrypoint``."""

from typing import Any

import trio

from brio.agents.base import AgentContext


async def history(ctx: AgentContext) -> list[str]:
    """Return the session history it was given."""
    return [f"{m.role}:{m.content}" for m in ctx.history]


async def boom(ctx: AgentContext) -> Any:
    """Always fails."""
    raise RuntimeError("kaboom")


async def slow(ctx: AgentContext) -> str:
    """Sleeps forever unless its timeout stops it."""
    await trio.sleep_forever()
    return "never"


async def exits(ctx: AgentContext) -> Any:
    """Calls sys.exit, as careless code does."""
    raise SystemExit(3)


async def unserialisable(ctx: AgentContext) -> Any:
    """Returns something JSON cannot hold."""
    return {1, 2}
