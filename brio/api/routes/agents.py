"""The agents this node runs."""

from __future__ import annotations

from brio.api import models
from brio.api.deps import ApiDeps
from brio.api.errors import ApiError
from brio.api.routing import Reply, Router
from brio.tasks.service import UnknownAgent

router = Router()


def agent_not_found(exc: UnknownAgent) -> ApiError:
    return ApiError(404, "agent_not_found", str(exc), {"known": exc.known})


@router.get(
    "/api/agents",
    summary="Agents this node runs",
    responses={200: ("Agents", models.AgentList)},
    store=False,
)
async def list_agents(deps: ApiDeps) -> Reply:
    agents = [models.AgentOut.of(a) for _, a in sorted(deps.agents.items())]
    return Reply(200, models.AgentList(agents=agents))


@router.get(
    "/api/agents/{name}",
    summary="One agent",
    path_params=models.AgentRef,
    responses={200: ("The agent", models.AgentOut), 404: "Unknown agent (agent_not_found)"},
    store=False,
)
async def get_agent(deps: ApiDeps, path: models.AgentRef) -> Reply:
    agent = deps.agents.get(path.name)
    if agent is None:
        raise agent_not_found(UnknownAgent(path.name, sorted(deps.agents)))
    return Reply(200, models.AgentOut.of(agent))
