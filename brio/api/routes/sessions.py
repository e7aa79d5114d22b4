"""Sessions (conversations) and their message history."""

from __future__ import annotations

from brio.api import models
from brio.api.deps import ApiDeps
from brio.api.errors import ApiError
from brio.api.routing import Reply, Router

router = Router()


@router.post(
    "/api/sessions",
    summary="Create a session (conversation); the body is optional",
    body=models.SessionCreate,
    body_required=False,
    responses={201: ("Created", models.SessionOut)},
)
async def create_session(deps: ApiDeps, body: models.SessionCreate) -> Reply:
    session = await deps.store.create_session(body.title, body.metadata)
    return Reply(201, models.SessionOut.of(session))


@router.get(
    "/api/sessions",
    summary="List sessions, newest first (offset paging)",
    query=models.SessionListQuery,
    responses={200: ("Sessions", models.SessionList)},
)
async def list_sessions(deps: ApiDeps, query: models.SessionListQuery) -> Reply:
    sessions = await deps.store.list_sessions(limit=query.limit, offset=query.offset)
    return Reply(200, models.SessionList(sessions=[models.SessionOut.of(s) for s in sessions]))


def _not_found(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"unknown session {session_id!r}")


@router.get(
    "/api/sessions/{session_id}",
    summary="One session",
    path_params=models.SessionRef,
    responses={200: ("The session", models.SessionOut), 404: "Unknown session"},
)
async def get_session(deps: ApiDeps, path: models.SessionRef) -> Reply:
    session = await deps.store.get_session(path.session_id)
    if session is None:
        raise _not_found(path.session_id)
    return Reply(200, models.SessionOut.of(session))


@router.get(
    "/api/sessions/{session_id}/messages",
    summary="The session's conversation history, oldest first (with limit: the newest N)",
    path_params=models.SessionRef,
    query=models.MessageListQuery,
    responses={200: ("Messages", models.MessageList), 404: "Unknown session"},
)
async def list_messages(
    deps: ApiDeps, path: models.SessionRef, query: models.MessageListQuery
) -> Reply:
    if await deps.store.get_session(path.session_id) is None:
        raise _not_found(path.session_id)
    messages = await deps.store.list_messages(path.session_id, limit=query.limit)
    return Reply(200, models.MessageList(messages=[models.MessageOut.of(m) for m in messages]))
