"""What the API needs from the node, passed in explicitly (built by ``brio.node.root``)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import trio
from werkzeug.datastructures import Headers

from brio.agents.registry import RegisteredAgent
from brio.config.model import BrioConfig
from brio.store.base import Store
from brio.tasks.events import EventBus
from brio.tasks.mesh_view import MeshView
from brio.tasks.service import TaskService
from brio.tasks.supervisor import Supervisor


@dataclass
class ApiDeps:
    """Everything the API needs, passed in explicitly."""

    config: BrioConfig
    store: Store
    service: TaskService
    supervisor: Supervisor
    bus: EventBus
    agents: dict[str, RegisteredAgent]
    mesh: MeshView
    stopping: trio.Event  # set once running agents are done: WebSockets then close

    @property
    def token(self) -> str | None:
        secret = self.config.server.auth_token
        return secret.get_secret_value() if secret else None


def token_ok(expected: str | None, headers: Headers, args: Mapping[str, str]) -> bool:
    """The bearer header, or ``?token=`` where given (browsers cannot set WebSocket headers);
    compared in constant time. No configured token: everything passes."""
    if expected is None:
        return True
    given = ""
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    elif "token" in args:
        given = args["token"]
    return hmac.compare_digest(given.encode(), expected.encode())
