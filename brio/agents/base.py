"""What an agent is: an async callable that takes an ``AgentContext`` and returns a result.

The result must be JSON-serialisable (a string for conversational agents). Raising marks the
task failed with the error text; the node itself never dies of an agent. Streaming output goes
through ``ctx.emit`` and reaches WebSocket subscribers as ``task_output`` events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from brio.config.model import AgentConfig, BrioConfig


class AgentError(Exception):
    """An agent failed in an expected way; the message becomes the task's error text."""


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    role: str  # "user" | "assistant" | "system"
    content: str


@dataclass(slots=True)
class AgentContext:
    task_id: str
    agent: str
    prompt: str
    input: dict[str, Any]
    history: list[HistoryMessage]
    session_id: str | None
    attempt: int
    cancel_scope: trio.CancelScope
    emit_fn: Callable[[str], Awaitable[None]]
    settings: AgentConfig = field(default_factory=AgentConfig)

    async def emit(self, chunk: str) -> None:
        """Stream a piece of output to subscribers (``task_output`` events)."""
        await self.emit_fn(chunk)


Agent = Callable[[AgentContext], Awaitable[Any]]


class AgentFactory(Protocol):
    """Builds an agent for a configured ``kind`` from its section and the whole config."""

    def __call__(self, name: str, settings: AgentConfig, config: BrioConfig) -> Agent: ...
