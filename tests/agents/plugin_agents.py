"""Objects the registry tests load as if they were installed plugins."""

from brio.agents.base import AgentContext


async def shout(ctx: AgentContext) -> str:
    """Answer in capitals."""
    return ctx.prompt.upper()


NOT_CALLABLE = 42
