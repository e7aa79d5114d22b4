"""Request and response bodies of the HTTP API, validated with pydantic.

These models are also the source of ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from brio.core.tasks import TaskStatus


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(Body):
    agent: str = Field(min_length=1, max_length=200, description="the agent's name")
    prompt: str = Field(max_length=1_000_000)
    input: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = Field(default=None, min_length=1, max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int = Field(default=0, ge=-1000, le=1000)


class TaskListQuery(Body):
    status: TaskStatus | None = None
    agent: str | None = None
    session_id: str | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = None


class SessionCreate(Body):
    title: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionListQuery(Body):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class MessageListQuery(Body):
    limit: int | None = Field(default=None, ge=1, le=10_000)


class TaskOut(BaseModel):
    id: str
    agent: str
    prompt: str
    input: Any
    session_id: str | None
    idempotency_key: str | None
    priority: int
    status: TaskStatus
    node_id: str | None
    attempt: int
    result: Any
    error: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None


class TaskList(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None


class SessionOut(BaseModel):
    id: str
    title: str | None
    metadata: Any
    created_at: str
    updated_at: str


class SessionList(BaseModel):
    sessions: list[SessionOut]


class MessageOut(BaseModel):
    id: int
    session_id: str
    role: str
    content: str
    task_id: str | None
    created_at: str


class MessageList(BaseModel):
    messages: list[MessageOut]


class AgentOut(BaseModel):
    name: str
    kind: str
    description: str
    timeout: float | None
    node_affinity: list[str]


class AgentList(BaseModel):
    agents: list[AgentOut]


class MeshHealth(BaseModel):
    connected_peers: int
    last_heartbeat: str | None
    primary: str | None  # the primary coordinator this node knows of
    lease_remaining: float | None  # seconds of lease (primary) or of promise (voter) left


class AgentsHealth(BaseModel):
    active: int
    queued: int
    max: int


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    node_id: str
    version: str
    role: str  # "primary", "standby", "worker", or "standalone" (a single node)
    epoch: int | None  # the lease term (fencing epoch); None for a single node
    mesh: MeshHealth
    agents: AgentsHealth


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WsSubscribe(Body):
    """A WebSocket client message: subscribe to (or unsubscribe from) events."""

    action: Literal["subscribe", "unsubscribe"]
    tasks: list[str] = Field(default_factory=list, max_length=1000)
    sessions: list[str] = Field(default_factory=list, max_length=1000)
    all: bool = False
