"""Request and response bodies of the HTTP API, and the limits they carry.

These models are what handlers parse and answer with, and ``/openapi.json`` is generated from
them, so a limit written here is both enforced and documented. Where pydantic cannot express a
rule that the API enforces (free-form JSON objects must be storable by both backends), the rule
is written here once as a type (``JsonValue``) whose schema the document carries, beside the
code that enforces it (``brio.api.inputs.unstorable``).
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import TypeAliasType

from brio.agents.registry import RegisteredAgent
from brio.core.tasks import TaskStatus
from brio.store.base import MAX_CREATE_BATCH, MessageRecord, SessionRecord, TaskRecord
from brio.tasks.events import EVENT_TYPES, EventType
from brio.tasks.service import task_json

REF = "#/components/schemas/{model}"

# PostgreSQL cannot store a NUL character in text or jsonb, so no string may hold one.
NO_NUL = r"^[^\x00]*$"
# The largest magnitude a JSON number may have: beyond a double, Python reads ``1e400`` as
# infinity, which SQLite would store and hand back as the non-JSON ``Infinity``.
MAX_NUMBER = sys.float_info.max
# SQLite and PostgreSQL take 64-bit integers; far below that, and more sessions than any node
# will hold.
MAX_OFFSET = 2**31 - 1
# The longest task or session id (and idempotency key) the API takes anywhere: in a body, a
# path, or a WebSocket subscription. The node makes UUIDs (36 characters).
MAX_ID = 200

# Exactly the cursors ``brio.store._common.encode_cursor`` hands out for seq 1 … 10**18 - 1: the
# URL-safe unpadded base64 of ``brio-task-seq:<decimal without leading zeros>``. Decimal digits
# are the bytes 0x30-0x39, so each base64 group of three digits has a fixed shape. A pattern,
# not a "string", so that a fuzzer's valid cursor is one the store accepts (and nothing larger
# than a 64-bit integer reaches SQL). tests/api/test_models.py checks it against the encoder.
_DIGIT_PAIR = "(?:[MN][DTjz]|O[DT])"  # the first two base64 characters of a digit then a digit
CURSOR_PATTERN = (
    "^YnJpby10YXNrLXNlcTo[x-z0-5]"  # "brio-task-seq:" and the first digit, 1-9
    f"(?:{_DIGIT_PAIR}[AEIMQUYcgk][w-z0-5]){{0,5}}"  # up to five groups of three digits
    f"(?:(?:[MN][AQgw]|O[AQ])|{_DIGIT_PAIR}[AEIMQUYcgk])?$"  # a last one or two digits
)
_CURSOR = re.compile(CURSOR_PATTERN)

# Any JSON value both stores keep as given: strings (and keys) without NUL characters, numbers
# within a double's range. Lone surrogates are not Unicode text, so no valid string holds one.
# Only the schema: ``brio.api.inputs.unstorable`` enforces it on the parsed body, faster and with
# the path of the bad value, so validation passes the object through unchanged.
_NoNul = Annotated[str, Field(pattern=NO_NUL)]
JsonValue = TypeAliasType(
    "JsonValue",
    "bool | Annotated[float, Field(ge=-MAX_NUMBER, le=MAX_NUMBER)] | _NoNul"
    " | list[JsonValue] | dict[_NoNul, JsonValue] | None",
)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return value


JsonObject = Annotated[
    dict[str, Any], PlainValidator(_object, json_schema_input_type=dict[_NoNul, JsonValue])
]


class SchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON Schema, with constrained dict keys as ``propertyNames``.

    pydantic writes ``dict[_NoNul, V]`` as ``patternProperties``, which lets any other key
    through as an additional property; ``propertyNames`` says what the API enforces.
    """

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        out = super().dict_schema(schema)
        patterns = out.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            (pattern, values), *_ = patterns.items()
            del out["patternProperties"]
            out["propertyNames"] = {"pattern": pattern}
            out["additionalProperties"] = values
        return out


def _check_cursor(value: str) -> str:
    if not _CURSOR.fullmatch(value):
        # The type is the API's error code: see brio.api.errors.validation_error.
        raise PydanticCustomError("invalid_cursor", "invalid cursor {cursor!r}", {"cursor": value})
    return value


Cursor = Annotated[
    str,
    AfterValidator(_check_cursor),
    Field(
        description="the next_cursor of the previous page",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    ),
]


def _integral(value: Any) -> Any:
    """JSON has one number type, and JSON Schema counts 5.0 as the integer 5; 5.5 stays a
    float, which a strict ``int`` refuses, as it refuses ``true`` and ``"5"``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def text(max_length: int | None = None, min_length: int | None = None, **kw: Any) -> Any:
    """A string field without NUL characters (PostgreSQL cannot store one)."""
    return Field(pattern=NO_NUL, min_length=min_length, max_length=max_length, **kw)


class Body(BaseModel):
    """A request body: unknown fields and type coercion are refused, as the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query parameters: strings from the URL, converted to the declared types; no extras."""

    model_config = ConfigDict(extra="forbid")


class TaskCreate(Body):
    agent: str = text(200, 1, description="the agent's name, or node-id/agent in a mesh")
    prompt: str = text(1_000_000)
    input: JsonObject = Field(default_factory=dict)
    session_id: str | None = text(MAX_ID, 1, default=None)
    idempotency_key: str | None = text(MAX_ID, 1, default=None)
    priority: JsonInt = Field(default=0, ge=-1000, le=1000)


# The most tasks one POST /api/tasks:batch carries: as many as the store commits in one
# transaction.
MAX_BATCH = MAX_CREATE_BATCH

TaskItem = Annotated[
    dict[str, Any],
    PlainValidator(_object, json_schema_input_type=dict[str, Any]),
    Field(description="a TaskCreate, checked on its own: a bad one is that item's error"),
]


class TaskBatch(Body):
    """Many tasks in one request, each a ``TaskCreate``; the body is at most ``[server]
    max_body_bytes``. Each item is checked on its own (so here it is any object): one bad item
    is its own outcome, and the others are still submitted."""

    checks_items_apart: ClassVar[bool] = True  # see brio.api.inputs.read_body

    tasks: list[TaskItem] = Field(min_length=1, max_length=MAX_BATCH)


class TaskListQuery(Query):
    status: TaskStatus | None = None
    agent: str | None = text(default=None)
    session_id: str | None = text(default=None)
    limit: int = Field(default=50, ge=1, le=500)
    cursor: Cursor | None = None


class SessionCreate(Body):
    title: str | None = text(500, default=None)
    metadata: JsonObject = Field(default_factory=dict)


class SessionListQuery(Query):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class MessageListQuery(Query):
    limit: int | None = Field(default=None, ge=1, le=10_000)


class TaskRef(Query):
    task_id: str = text(MAX_ID, 1)


class SessionRef(Query):
    session_id: str = text(MAX_ID, 1)


class AgentRef(Query):
    name: str = text(min_length=1)


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

    @classmethod
    def of(cls, task: TaskRecord) -> TaskOut:
        """The shape ``task_json`` gives events too, so HTTP and WebSocket never differ."""
        return cls.model_validate(task_json(task))


class TaskList(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None


class SessionOut(BaseModel):
    id: str
    title: str | None
    metadata: Any
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, s: SessionRecord) -> SessionOut:
        return cls(
            id=s.id,
            title=s.title,
            metadata=s.metadata,
            created_at=s.created_at.isoformat(),
            updated_at=s.updated_at.isoformat(),
        )


class SessionList(BaseModel):
    sessions: list[SessionOut]


class MessageOut(BaseModel):
    id: int
    session_id: str
    role: str
    content: str
    task_id: str | None
    created_at: str

    @classmethod
    def of(cls, m: MessageRecord) -> MessageOut:
        return cls(
            id=m.id,
            session_id=m.session_id,
            role=m.role,
            content=m.content,
            task_id=m.task_id,
            created_at=m.created_at.isoformat(),
        )


class MessageList(BaseModel):
    messages: list[MessageOut]


class AgentOut(BaseModel):
    name: str
    kind: str
    description: str
    timeout: float | None
    node_affinity: list[str]

    @classmethod
    def of(cls, a: RegisteredAgent) -> AgentOut:
        return cls(
            name=a.name,
            kind=a.kind,
            description=a.description,
            timeout=a.settings.timeout,
            node_affinity=a.settings.node_affinity,
        )


class AgentList(BaseModel):
    agents: list[AgentOut]


class MeshHealth(BaseModel):
    connected_peers: int
    last_heartbeat: str | None
    primary: str | None  # the primary coordinator this node knows of
    lease_remaining: float | None  # seconds of lease (primary) or of promise (voter) left
    voters: list[str]  # the lease's voter set; "@store" is the store (the witness voter)


class AgentsHealth(BaseModel):
    active: int
    queued: int
    max: int


class Health(BaseModel):
    # draining: it takes no new tasks (brio mesh drain); degraded: it runs, but a
    # misconfiguration keeps it from its part (``problems``)
    status: Literal["healthy", "draining", "degraded", "unhealthy"]
    node_id: str
    version: str
    role: str  # "primary", "standby", "worker", or "standalone" (a single node)
    epoch: int | None  # the lease term (fencing epoch); None for a single node
    mesh: MeshHealth
    agents: AgentsHealth
    problems: list[str] = []  # what is wrong, as sentences for the operator


class Alive(BaseModel):
    status: Literal["alive"] = "alive"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


class NotReady(BaseModel):
    status: Literal["not_ready"] = "not_ready"
    reason: str


class OpenApiDocument(BaseModel):
    """``/openapi.json`` itself; its contents are described by the OpenAPI 3.1 standard."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchOutcome(BaseModel):
    """One item's outcome, in the request's order. ``status`` is what ``POST /api/tasks``
    would have answered for the item alone: 202 accepted, 200 existing (its idempotency key
    named a task already: that task), or an error status with ``error``."""

    outcome: Literal["accepted", "existing", "error"]
    status: int
    task: TaskOut | None = None
    error: ErrorDetail | None = None


class BatchResult(BaseModel):
    accepted: int
    existing: int
    failed: int
    results: list[BatchOutcome]


WsId = Annotated[str, text(MAX_ID, 1)]


class WsSubscribe(BaseModel):
    """A WebSocket client message: subscribe to (or unsubscribe from) events.

    Lax like it always was (``"all": 1`` is true): it is not an HTTP body.
    """

    model_config = ConfigDict(extra="forbid")

    action: Literal["subscribe", "unsubscribe"]
    tasks: list[WsId] = Field(default_factory=list, max_length=1000)
    sessions: list[WsId] = Field(default_factory=list, max_length=1000)
    all: bool = False
    types: list[EventType] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="event types: subscribe receives only these from now on, unsubscribe "
        "stops these; absent: unchanged (at first, every type)",
    )
    coalesce: bool | None = Field(
        default=None,
        description="true: several events per frame, as {type: events, events: [...]}; "
        "absent: unchanged (at first, one event per frame)",
    )
