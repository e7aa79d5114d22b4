"""Health: liveness, readiness and the deployment guide's ``/health`` shape."""

from __future__ import annotations

from typing import Literal

import trio

from brio import __version__
from brio.api import models
from brio.api.deps import ApiDeps
from brio.api.routing import Reply, Router
from brio.core.tasks import TaskStatus

router = Router()


@router.get(
    "/health/live",
    summary="Liveness; never needs a token",
    responses={200: ("Alive", models.Alive)},
    store=False,
)
async def live(deps: ApiDeps) -> Reply:
    return Reply(200, models.Alive())


@router.get(
    "/health/ready",
    summary="Readiness: the store answers within 2 s",
    responses={200: ("Ready", models.Ready), 503: ("Not ready", models.NotReady)},
    store=False,  # a failing store is its 503 NotReady, never store_unavailable
)
async def ready(deps: ApiDeps) -> Reply:
    try:
        with trio.fail_after(2):
            await deps.store.ping()
    except Exception as exc:
        return Reply(503, models.NotReady(reason=f"store: {exc}"))
    return Reply(200, models.Ready())


@router.get(
    "/health",
    summary="Node health in the deployment guide's shape",
    responses={
        200: ("Healthy", models.Health),
        503: ("Unhealthy (the store does not answer)", models.Health),
    },
    store=False,
)
async def health(deps: ApiDeps) -> Reply:
    status: Literal["healthy", "draining", "degraded", "unhealthy"] = "healthy"
    queued = 0
    try:
        with trio.fail_after(2):
            queued = await deps.store.count_tasks(TaskStatus.QUEUED)
    except Exception:
        status = "unhealthy"
    problems = deps.mesh.problems()
    if problems and status == "healthy":
        status = "degraded"
    elif status == "healthy" and deps.mesh.draining():
        status = "draining"
    beat = deps.mesh.last_heartbeat()
    lease = deps.mesh.lease_view()
    remaining = lease.lease_remaining
    body = models.Health(
        status=status,
        node_id=deps.config.mesh.node_id,
        version=__version__,
        role=lease.role,
        epoch=lease.epoch,
        mesh=models.MeshHealth(
            connected_peers=deps.mesh.connected_peers(),
            last_heartbeat=beat.isoformat().replace("+00:00", "Z") if beat else None,
            primary=lease.primary,
            lease_remaining=round(remaining, 3) if remaining is not None else None,
            voters=list(lease.voters),
        ),
        agents=models.AgentsHealth(
            active=deps.supervisor.active, queued=queued, max=deps.supervisor.max_agents
        ),
        problems=problems,
    )
    return Reply(503 if status == "unhealthy" else 200, body)
