"""A scriptable fake of the OpenAI chat-completions API, served on a real socket.

It speaks the real wire format (HTTP/1.1 via trio + h11), so the code under test uses its
ordinary HTTP client and the real SSE parsing path. Use it inside a trio test::

    async with open_fake_openai(api_key="sk-test") as fake:
        fake.reply("Hel", "lo", delay=0.05)          # next request: stream "Hel", "lo"
        fake.fail(429, retry_after=2)                # the one after: rate-limited
        provider = ProviderConfig(base_url=fake.base_url, api_key="sk-test")
        ...                                          # run the code under test
        assert fake.requests[0].json["messages"][-1]["content"] == "hi"

Interface:

* ``open_fake_openai(*, api_key=None)`` -- async context manager yielding a ``FakeOpenAI``
  listening on ``127.0.0.1`` (random port); it stops when the block exits. With ``api_key``,
  requests without ``Authorization: Bearer <api_key>`` get OpenAI's 401.
* ``fake.base_url`` -- ``"http://127.0.0.1:<port>/v1"``; the endpoint is
  ``POST {base_url}/chat/completions``.
* ``fake.reply(*chunks, delay=0.0, latency=0.0, drop_after=None)`` -- queue a successful
  answer. A request with ``"stream": true`` gets an SSE stream (``text/event-stream``): a
  role chunk, one ``chat.completion.chunk`` per item of ``chunks`` (``delay`` seconds apart),
  a final chunk with ``finish_reason: "stop"``, then ``data: [DONE]``. A request without it
  gets one ``chat.completion`` JSON object whose content is ``"".join(chunks)``.
  ``latency`` waits before the response starts (to provoke client timeouts);
  ``drop_after=n`` closes the connection abruptly after ``n`` content chunks.
* ``fake.fail(status, message=None, *, type=None, code=None, param=None, retry_after=None,
  latency=0.0)`` -- queue an OpenAI-shaped error ``{"error": {"message", "type", "param",
  "code"}}`` with that status (and a ``Retry-After`` header when given).
* ``fake.script(*planned)`` -- queue prebuilt ``Reply`` / ``ErrorReply`` objects.
* Planned replies are consumed one per chat-completions request, in order. With the queue
  empty the fake answers with the last user message echoed back, split into word chunks,
  so tests that do not care about the text need no script.
* ``fake.requests`` -- every request received, as ``RecordedRequest(method, path, headers,
  body, json)`` (header names lower-case, ``json`` the parsed body or ``None``), including
  those refused with 401/404/400. ``fake.pending`` is the number of unused planned replies.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

import h11
import trio

_MAX_REQUEST_BYTES = 1_048_576
_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body, or None if it was not JSON


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful completion, streamed or not depending on the request."""

    chunks: tuple[str, ...]
    delay: float = 0.0  # seconds between streamed chunks
    latency: float = 0.0  # seconds before the response starts
    drop_after: int | None = None  # close the connection after this many content chunks

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An OpenAI-shaped error response."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    latency: float = 0.0


Planned = Reply | ErrorReply


class FakeOpenAI:
    """State of one fake server: the script of replies and the requests received."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._plan: deque[Planned] = deque()
        self._ids = count(1)

    # -- scripting -----------------------------------------------------------------------

    def reply(
        self,
        *chunks: str,
        delay: float = 0.0,
        latency: float = 0.0,
        drop_after: int | None = None,
    ) -> None:
        """Queue a successful answer made of ``chunks`` (see the module docstring)."""
        self._plan.append(Reply(chunks, delay=delay, latency=latency, drop_after=drop_after))

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        latency: float = 0.0,
    ) -> None:
        """Queue an error; type, code and message default to what OpenAI sends for ``status``."""
        default_type, default_code, default_message = _error_defaults(status)
        self._plan.append(
            ErrorReply(
                status=status,
                message=message or default_message,
                type=type or default_type,
                code=code if code is not None else default_code,
                param=param,
                retry_after=retry_after,
                latency=latency,
            )
        )

    def script(self, *planned: Planned) -> None:
        self._plan.extend(planned)

    @property
    def pending(self) -> int:
        return len(self._plan)

    # -- serving -------------------------------------------------------------------------

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """Answer requests on one keep-alive connection until either side closes it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        try:
            while True:
                request = await _read_request(conn, stream)
                if request is None:
                    return
                self.requests.append(request)
                keep_open = await self._respond(conn, stream, request)
                if not keep_open or (conn.our_state, conn.their_state) != (h11.DONE, h11.DONE):
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass  # the client went away or spoke nonsense: drop the connection
        finally:
            await stream.aclose()

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> bool:
        """Send the response; ``False`` means the connection must be dropped."""
        if request.method != "POST" or request.path != _ENDPOINT:
            await _send_error(
                conn,
                stream,
                ErrorReply(
                    404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
                ),
            )
            return True
        refusal = self._auth_error(request.headers.get("authorization"))
        if refusal is not None:
            await _send_error(conn, stream, refusal)
            return True
        body = request.json
        if not isinstance(body, dict):
            await _send_error(
                conn,
                stream,
                ErrorReply(
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely "
                    "means you aren't using your HTTP library correctly.)",
                    "invalid_request_error",
                ),
            )
            return True
        for field in ("model", "messages"):
            if field not in body:
                await _send_error(
                    conn,
                    stream,
                    ErrorReply(
                        400,
                        f"Missing required parameter: '{field}'.",
                        "invalid_request_error",
                        code="missing_required_parameter",
                        param=field,
                    ),
                )
                return True

        planned = self._plan.popleft() if self._plan else _echo(body)
        if planned.latency:
            await trio.sleep(planned.latency)
        if isinstance(planned, ErrorReply):
            await _send_error(conn, stream, planned)
            return True
        model = str(body["model"])
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if body.get("stream"):
            return await _send_stream(conn, stream, planned, completion_id, model)
        await _send_json(conn, stream, 200, _completion(planned, completion_id, model, body))
        return True

    def _auth_error(self, authorization: str | None) -> ErrorReply | None:
        if self.api_key is None or authorization == f"Bearer {self.api_key}":
            return None
        if authorization is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            given = authorization.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {given[:3]}***{given[-4:]}."
        return ErrorReply(401, message, "invalid_request_error", code="invalid_api_key")


@asynccontextmanager
async def open_fake_openai(*, api_key: str | None = None) -> AsyncIterator[FakeOpenAI]:
    """Serve a fake OpenAI API on 127.0.0.1 (random port) for the duration of the block."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    fake = FakeOpenAI(f"http://127.0.0.1:{port}/v1", api_key)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, fake.serve_connection, listeners)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


# -- wire format -------------------------------------------------------------------------


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> RecordedRequest | None:
    """The next complete request, or ``None`` once the client has closed the connection."""
    event = await _next_event(conn, stream)
    if not isinstance(event, h11.Request):
        return None
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > _MAX_REQUEST_BYTES:
                raise h11.RemoteProtocolError("request body too large")
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return RecordedRequest(
        method=event.method.decode("ascii"),
        path=event.target.decode("ascii"),
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers},
        body=bytes(body),
        json=parsed,
    )


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65_536))  # b"" tells h11 about EOF


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _send_json(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    payload: Any,
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *(extra_headers or []),
    ]
    await _send(conn, stream, h11.Response(status_code=status, headers=headers))
    await _send(conn, stream, h11.Data(data=body))
    await _send(conn, stream, h11.EndOfMessage())


async def _send_error(conn: h11.Connection, stream: trio.SocketStream, error: ErrorReply) -> None:
    payload = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    extra = [] if error.retry_after is None else [("retry-after", f"{error.retry_after:g}")]
    await _send_json(conn, stream, error.status, payload, extra)


async def _send_stream(
    conn: h11.Connection, stream: trio.SocketStream, reply: Reply, completion_id: str, model: str
) -> bool:
    headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    await _send(conn, stream, h11.Response(status_code=200, headers=headers))  # chunked

    async def event(delta: dict[str, str], finish_reason: str | None) -> None:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        await _send(conn, stream, h11.Data(data=f"data: {json.dumps(chunk)}\n\n".encode()))

    await event({"role": "assistant", "content": ""}, None)
    for index, text in enumerate(reply.chunks):
        if index == reply.drop_after:
            await stream.aclose()  # mid-body: the client sees an incomplete chunked response
            return False
        if index and reply.delay:
            await trio.sleep(reply.delay)
        await event({"content": text}, None)
    await event({}, "stop")
    await _send(conn, stream, h11.Data(data=b"data: [DONE]\n\n"))
    await _send(conn, stream, h11.EndOfMessage())
    return True


def _completion(reply: Reply, completion_id: str, model: str, body: dict[str, Any]) -> Any:
    prompt_tokens = sum(
        len(str(message.get("content", "")).split())
        for message in body.get("messages", [])
        if isinstance(message, dict)
    )
    completion_tokens = len(reply.chunks)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _echo(body: dict[str, Any]) -> Reply:
    """The unscripted answer: the last user message, in word-sized chunks."""
    messages = body.get("messages")
    text = ""
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                text = str(message.get("content", ""))
    return Reply(tuple(re.findall(r"\s*\S+", text)) or (text,))


def _error_defaults(status: int) -> tuple[str, str | None, str]:
    """(type, code, message) as OpenAI sends them for common statuses."""
    if status == 429:
        return "requests", "rate_limit_exceeded", "Rate limit reached for requests."
    if status >= 500:
        return (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        )
    if status == 401:
        return "invalid_request_error", "invalid_api_key", "Incorrect API key provided."
    if status == 404:
        return "invalid_request_error", "model_not_found", "The model does not exist."
    return "invalid_request_error", None, "Invalid request."
