"""Tasks: submit (committed before the answer), list, get, cancel."""

from __future__ import annotations

from brio.api import models
from brio.api.deps import ApiDeps
from brio.api.errors import ApiError
from brio.api.routes.agents import agent_not_found
from brio.api.routing import Reply, Router
from brio.core.routing import BadTarget, NodeUnavailable, UnknownNode
from brio.store.base import NewTask, TaskFilter
from brio.tasks.service import (
    IdempotencyConflict,
    NotAccepting,
    UnknownAgent,
    UnknownSession,
)

router = Router()


@router.post(
    "/api/tasks",
    summary="Submit a task (committed before the answer)",
    body=models.TaskCreate,
    responses={
        202: ("Accepted: a new task", models.TaskOut),
        200: ("The task already made with this idempotency key", models.TaskOut),
        404: "Unknown agent, session, or node in a node-id/agent target",
        409: "Idempotency key reused with a different request",
        422: "Not a valid target (agent)",
        503: "The target node is failed or removed, or this node is stopping",
    },
)
async def submit_task(deps: ApiDeps, body: models.TaskCreate) -> Reply:
    new = NewTask(
        agent=body.agent,
        prompt=body.prompt,
        input=body.input,
        session_id=body.session_id,
        idempotency_key=body.idempotency_key,
        priority=body.priority,
    )
    try:
        task, created = await deps.service.submit(new)
    except UnknownAgent as exc:
        raise agent_not_found(exc) from None
    except UnknownSession as exc:
        raise ApiError(404, "session_not_found", str(exc)) from None
    except NotAccepting as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    except UnknownNode as exc:
        raise ApiError(404, "node_not_found", str(exc), {"known": list(exc.known)}) from None
    except NodeUnavailable as exc:
        raise ApiError(503, "node_unavailable", str(exc), {"state": exc.state}) from None
    except BadTarget as exc:
        raise ApiError(
            422,
            "validation_error",
            f"invalid task: agent: {exc}",
            [{"field": "agent", "message": str(exc)}],
        ) from None
    except IdempotencyConflict as exc:
        raise ApiError(
            409,
            "idempotency_conflict",
            str(exc),
            {"task_id": exc.task.id, "fields": exc.fields},
        ) from None
    return Reply(202 if created else 200, models.TaskOut.of(task))


@router.get(
    "/api/tasks",
    summary="List tasks, newest first",
    query=models.TaskListQuery,
    responses={200: ("A page of tasks", models.TaskList)},
)
async def list_tasks(deps: ApiDeps, query: models.TaskListQuery) -> Reply:
    try:
        page = await deps.store.list_tasks(
            TaskFilter(status=query.status, agent=query.agent, session_id=query.session_id),
            limit=query.limit,
            cursor=query.cursor,
        )
    except ValueError as exc:  # the pattern already refuses these; the store agrees
        raise ApiError(422, "invalid_cursor", str(exc), {"field": "cursor"}) from None
    tasks = [models.TaskOut.of(t) for t in page.tasks]
    return Reply(200, models.TaskList(tasks=tasks, next_cursor=page.next_cursor))


def _not_found(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"unknown task {task_id!r}")


@router.get(
    "/api/tasks/{task_id}",
    summary="One task",
    path_params=models.TaskRef,
    responses={200: ("The task", models.TaskOut), 404: "Unknown task"},
)
async def get_task(deps: ApiDeps, path: models.TaskRef) -> Reply:
    task = await deps.store.get_task(path.task_id)
    if task is None:
        raise _not_found(path.task_id)
    return Reply(200, models.TaskOut.of(task))


@router.post(
    "/api/tasks/{task_id}/cancel",
    summary="Cancel a queued, assigned or running task (any body is ignored)",
    path_params=models.TaskRef,
    responses={
        200: ("Cancelled", models.TaskOut),
        404: "Unknown task",
        409: "Already finished (task_finished)",
    },
)
async def cancel_task(deps: ApiDeps, path: models.TaskRef) -> Reply:
    task_id = path.task_id
    if await deps.store.get_task(task_id) is None:
        raise _not_found(task_id)
    cancelled = await deps.service.cancel(task_id)
    if cancelled is None:
        task = await deps.store.get_task(task_id)
        status = task.status.value if task else "unknown"
        raise ApiError(
            409, "task_finished", f"task {task_id!r} is already {status}", {"status": status}
        )
    return Reply(200, models.TaskOut.of(cancelled))
