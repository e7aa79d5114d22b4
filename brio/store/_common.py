"""Pieces both backends share besides their SQL (which is ``brio.store.sql``): argument
checks, cursors, row decoding, URL redaction.

Keeping them here means the two backends differ only in how they talk to their database, not
in what they accept or hand out.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from brio.core.tasks import TaskStatus
from brio.store.base import (
    JSON,
    MAX_CREATE_BATCH,
    AgentRecord,
    FenceRecord,
    MessageRecord,
    NewTask,
    NodeRecord,
    NodeStateRecord,
    NotFound,
    QueuedRecord,
    SessionRecord,
    TaskRecord,
)

MESSAGE_ROLES = frozenset({"user", "assistant", "system"})

_CURSOR_PREFIX = "brio-task-seq:"


def new_id() -> str:
    return str(uuid.uuid4())


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The ``seq`` a cursor from ``encode_cursor`` carries; ValueError for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    number = text.removeprefix(_CURSOR_PREFIX)
    if number == text or not number.isdecimal() or int(number) < 1:
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(number)


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def check_page(limit: int, offset: int) -> None:
    check_limit(limit)
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")


def check_messages(messages: list[tuple[str, str]]) -> None:
    for role, _content in messages:
        if role not in MESSAGE_ROLES:
            raise ValueError(f"message role must be one of {sorted(MESSAGE_ROLES)}, not {role!r}")


def check_terminal(status: TaskStatus) -> None:
    if not status.terminal:
        raise ValueError(f"finish_task needs a terminal status, not {status.value!r}")


def check_cluster_view(epoch: int, states: list[tuple[str, str]]) -> None:
    if epoch < 1:
        raise ValueError(f"a primary's epoch is at least 1 (0 is the unraised fence), not {epoch}")
    seen: set[str] = set()
    for node_id, _state in states:
        if not node_id:
            raise ValueError("cluster view: a node id must not be empty")
        if node_id in seen:
            raise ValueError(f"cluster view: node {node_id!r} is listed twice")
        seen.add(node_id)


Created = tuple[TaskRecord, bool] | NotFound  # one outcome of create_tasks


@dataclass(frozen=True, slots=True)
class _Insert:
    task_id: str  # the item is inserted under this new id


@dataclass(frozen=True, slots=True)
class _SameAs:
    key: str  # the item gets the task that holds this key once the batch is written


@dataclass(slots=True)
class TaskBatch:
    """What ``create_tasks`` decides outside SQL, the same for both backends.

    A backend reads the tasks that already hold the batch's keys and which of its sessions
    exist (``keys``, ``session_ids``), inserts what ``plan`` gives, and hands the inserted
    rows (and, on PostgreSQL, the tasks of keys a concurrent writer took meanwhile) to
    ``outcomes``. Items decide in ``create_task``'s order: a used key first (in the store,
    then earlier in the batch), then the session.
    """

    items: list[NewTask]
    _slots: list[Created | _Insert | _SameAs] = field(default_factory=list)
    _owner: dict[str, str] = field(default_factory=dict)  # key -> id of the item inserting it

    @classmethod
    def of(cls, batch: Sequence[NewTask]) -> TaskBatch:
        if len(batch) > MAX_CREATE_BATCH:
            raise ValueError(
                f"create_tasks takes at most {MAX_CREATE_BATCH} tasks at once, not {len(batch)}"
            )
        return cls(list(batch))

    @property
    def keys(self) -> list[str]:
        return sorted({n.idempotency_key for n in self.items if n.idempotency_key is not None})

    @property
    def session_ids(self) -> list[str]:
        return sorted({n.session_id for n in self.items if n.session_id is not None})

    def plan(
        self, existing: Mapping[str, TaskRecord], sessions: set[str]
    ) -> list[tuple[str, NewTask]]:
        """The (new id, task) pairs to insert, given the tasks holding keys already and the
        sessions that exist."""
        inserts: list[tuple[str, NewTask]] = []
        for new in self.items:
            key = new.idempotency_key
            if key is not None and key in existing:
                self._slots.append((existing[key], False))
            elif key is not None and key in self._owner:
                self._slots.append(_SameAs(key))
            elif new.session_id is not None and new.session_id not in sessions:
                self._slots.append(NotFound(f"session {new.session_id!r} does not exist"))
            else:
                task_id = new_id()
                inserts.append((task_id, new))
                if key is not None:
                    self._owner[key] = task_id
                self._slots.append(_Insert(task_id))
        return inserts

    def lost_keys(self, inserted: Mapping[str, TaskRecord]) -> list[str]:
        """The keys whose insert did nothing: a concurrent writer committed them first."""
        return sorted(key for key, task_id in self._owner.items() if task_id not in inserted)

    def outcomes(
        self, inserted: Mapping[str, TaskRecord], raced: Mapping[str, TaskRecord]
    ) -> list[Created]:
        """One outcome per item, in order. ``inserted`` maps new ids to their rows; ``raced``
        maps each of ``lost_keys`` to the task that holds it."""
        by_key = {key: inserted.get(task_id) or raced[key] for key, task_id in self._owner.items()}
        out: list[Created] = []
        for slot, new in zip(self._slots, self.items, strict=True):
            if isinstance(slot, _SameAs):
                out.append((by_key[slot.key], False))
            elif not isinstance(slot, _Insert):
                out.append(slot)
            elif slot.task_id in inserted:
                out.append((inserted[slot.task_id], True))
            else:  # lost to a concurrent writer: only items with a key can be
                out.append((raced[str(new.idempotency_key)], False))
        return out


def task_input(value: JSON) -> JSON:
    """A task's input as stored: ``None`` means no input, which is an empty object."""
    return {} if value is None else value


def by_node(rows: Sequence[Any]) -> dict[str, list[str]]:
    """``node_tasks``' rows (``node_id``, ``id``) as node id -> its task ids."""
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["node_id"], []).append(row["id"])
    return found


def queued_record(row: Any) -> QueuedRecord:
    return QueuedRecord(
        id=row["id"],
        agent=row["agent"],
        attempt=row["attempt"],
        priority=row["priority"],
        seq=row["seq"],
        session_id=row["session_id"],
        target_node=row["target_node"],
    )


@dataclass(frozen=True, slots=True)
class RowDecoder:
    """Builds records from one backend's rows (``row["column"]``: a ``sqlite3.Row`` or an
    ``asyncpg.Record``). ``ts`` turns a stored timestamp into a datetime and ``json`` a stored
    JSON value (or None) into its value; everything else arrives as it is."""

    ts: Callable[[Any], datetime]
    json: Callable[[Any], JSON]

    def opt_ts(self, value: Any) -> datetime | None:
        return None if value is None else self.ts(value)

    def task(self, row: Any) -> TaskRecord:
        return TaskRecord(
            id=row["id"],
            seq=row["seq"],
            agent=row["agent"],
            prompt=row["prompt"],
            input=self.json(row["input"]),
            session_id=row["session_id"],
            idempotency_key=row["idempotency_key"],
            priority=row["priority"],
            status=TaskStatus(row["status"]),
            node_id=row["node_id"],
            attempt=row["attempt"],
            result=self.json(row["result"]),
            error=row["error"],
            created_at=self.ts(row["created_at"]),
            updated_at=self.ts(row["updated_at"]),
            started_at=self.opt_ts(row["started_at"]),
            finished_at=self.opt_ts(row["finished_at"]),
        )

    def session(self, row: Any) -> SessionRecord:
        return SessionRecord(
            id=row["id"],
            title=row["title"],
            metadata=self.json(row["metadata"]),
            created_at=self.ts(row["created_at"]),
            updated_at=self.ts(row["updated_at"]),
        )

    def message(self, row: Any) -> MessageRecord:
        return MessageRecord(
            id=row["id"],
            session_id=row["session_id"],
            role=row["role"],
            content=row["content"],
            task_id=row["task_id"],
            created_at=self.ts(row["created_at"]),
        )

    def node(self, row: Any) -> NodeRecord:
        return NodeRecord(
            id=row["id"],
            role=row["role"],
            address=row["address"],
            version=row["version"],
            status=row["status"],
            last_seen=self.ts(row["last_seen"]),
        )

    def fence(self, row: Any) -> FenceRecord:
        return FenceRecord(
            epoch=int(row["epoch"]), holder=row["holder"], updated_at=self.ts(row["updated_at"])
        )

    def node_state(self, row: Any) -> NodeStateRecord:
        return NodeStateRecord(
            node_id=row["node_id"],
            state=row["state"],
            epoch=int(row["epoch"]),
            holder=row["holder"],
            updated_at=self.ts(row["updated_at"]),
        )

    def agent(self, row: Any) -> AgentRecord:
        return AgentRecord(
            name=row["name"],
            kind=row["kind"],
            description=row["description"],
            node_id=row["node_id"],
            updated_at=self.ts(row["updated_at"]),
        )


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable database URL>"
    if not password and "password=" not in parts.query:
        return url  # unchanged (urlunsplit would also drop the empty host of sqlite:///)
    if password:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    query = re.sub(r"password=[^&]*", "password=***", parts.query)
    return urlunsplit(parts._replace(query=query))
