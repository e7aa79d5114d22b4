"""Tasks: submit one or a batch (committed before the answer), list, get, cancel."""

from __future__ import annotations

from brio.api import models
from brio.api.deps import ApiDeps
from brio.api.errors import ApiError
from brio.api.inputs import read_item
from brio.api.routes.agents import agent_not_found
from brio.api.routing import Reply, Router
from brio.core.routing import NodeUnavailable, RouteError, UnknownNode
from brio.store.base import NewTask, TaskFilter
from brio.tasks.service import (
    IdempotencyConflict,
    NotAccepting,
    Refusal,
    Submitted,
    UnknownAgent,
    UnknownSession,
)

router = Router()


def _refused(exc: Refusal) -> ApiError:
    """The error ``POST /api/tasks`` answers for a task the service refused."""
    if isinstance(exc, UnknownAgent):
        return agent_not_found(exc)
    if isinstance(exc, UnknownSession):
        return ApiError(404, "session_not_found", str(exc))
    if isinstance(exc, UnknownNode):
        return ApiError(404, "node_not_found", str(exc), {"known": list(exc.known)})
    if isinstance(exc, NodeUnavailable):
        return ApiError(503, "node_unavailable", str(exc), {"state": exc.state})
    if isinstance(exc, IdempotencyConflict):
        return ApiError(
            409, "idempotency_conflict", str(exc), {"task_id": exc.task.id, "fields": exc.fields}
        )
    # BadTarget, or any other malformed target
    return ApiError(
        422,
        "validation_error",
        f"invalid task: agent: {exc}",
        [{"field": "agent", "message": str(exc)}],
    )


def _new_task(body: models.TaskCreate) -> NewTask:
    return NewTask(
        agent=body.agent,
        prompt=body.prompt,
        input=body.input,
        session_id=body.session_id,
        idempotency_key=body.idempotency_key,
        priority=body.priority,
    )


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
    try:
        task, created = await deps.service.submit(_new_task(body))
    except NotAccepting as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    except (UnknownAgent, UnknownSession, RouteError, IdempotencyConflict) as exc:
        raise _refused(exc) from None
    return Reply(202 if created else 200, models.TaskOut.of(task))


def _outcome(result: Submitted | ApiError) -> models.BatchOutcome:
    if isinstance(result, ApiError):
        error = models.ErrorDetail(code=result.code, message=result.message, details=result.details)
        return models.BatchOutcome(outcome="error", status=result.status, error=error)
    if isinstance(result, tuple):
        task, created = result
        return models.BatchOutcome(
            outcome="accepted" if created else "existing",
            status=202 if created else 200,
            task=models.TaskOut.of(task),
        )
    return _outcome(_refused(result))


@router.post(
    "/api/tasks:batch",
    summary=(
        f"Submit up to {models.MAX_BATCH} tasks in one request, each with its own outcome "
        "(all accepted ones committed before the answer)"
    ),
    body=models.TaskBatch,
    responses={
        200: (
            "One outcome per task, in order: accepted, existing (idempotent replay) or error",
            models.BatchResult,
        ),
        503: "This node is stopping (nothing was submitted)",
    },
)
async def submit_batch(deps: ApiDeps, body: models.TaskBatch) -> Reply:
    checked: list[NewTask | ApiError] = []
    for i, item in enumerate(body.tasks):
        try:
            checked.append(_new_task(read_item(models.TaskCreate, item, f"tasks[{i}]")))
        except ApiError as exc:
            checked.append(exc)
    valid = [new for new in checked if isinstance(new, NewTask)]
    try:
        submitted = iter(await deps.service.submit_many(valid))
    except NotAccepting as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    results = [_outcome(next(submitted) if isinstance(new, NewTask) else new) for new in checked]
    counts = {kind: sum(r.outcome == kind for r in results) for kind in ("accepted", "existing")}
    return Reply(
        200,
        models.BatchResult(
            accepted=counts["accepted"],
            existing=counts["existing"],
            failed=len(results) - counts["accepted"] - counts["existing"],
            results=results,
        ),
    )


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
    task = await deps.service.get_task(path.task_id)
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
