"""``brio.api.server._Guarded`` on its own, with a fake ASGI app and hypercorn's side faked
too: which requests the end of the grace period cuts (503), which it leaves alone, and that
the last send of an answer survives a cancellation. Time is trio's ``MockClock``
(``autojump_clock``): it jumps to the next deadline whenever every task waits."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from brio.api.server import _Guarded

GRACE = 3.0


class FakeApp:
    """Reads the body (one message, or until ``more_body`` ends), then answers 200."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.answered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            while True:
                message = await receive()
                if not message.get("more_body", False):
                    break
        except trio.Cancelled:
            self.cancelled += 1
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})
        self.answered += 1


class Client:
    """hypercorn's side of one request: the body's messages, and what the app sent."""

    def __init__(self) -> None:
        send, self.incoming = trio.open_memory_channel[dict[str, Any]](10)
        self.body = send
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.receive()

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()  # as a socket write is: a cancellation lands here
        self.sent.append(message)

    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None


async def serve(guarded: _Guarded, client: Client) -> None:
    await guarded({"type": "http"}, client.receive, client.send)  # type: ignore[arg-type]


async def test_a_body_still_missing_when_the_grace_ends_is_cut_with_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = FakeApp()
    guarded = _Guarded(app, GRACE)  # type: ignore[arg-type]
    waiting, whole = Client(), Client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, guarded, waiting)
        nursery.start_soon(serve, guarded, whole)
        await waiting.body.send({"type": "http.request", "body": b"{", "more_body": True})
        await whole.body.send({"type": "http.request", "body": b"{}", "more_body": False})
        await trio.sleep(100)  # long before the stop: nothing is cut
        assert waiting.sent == []
        stopped = trio.current_time()
        guarded.stop()
    assert trio.current_time() - stopped == GRACE
    assert waiting.status() == 503
    body = json.loads(waiting.sent[-1]["body"])
    assert body["error"]["code"] == "shutting_down"
    assert app.cancelled == 1
    assert whole.status() == 200 and app.answered == 1


async def test_a_request_that_begins_after_the_stop_gets_a_grace_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guarded = _Guarded(FakeApp(), GRACE)  # type: ignore[arg-type]
    guarded.stop()
    await trio.sleep(10)
    late = Client()
    began = trio.current_time()
    await serve(guarded, late)
    assert trio.current_time() - began == GRACE
    assert late.status() == 503


async def test_an_answer_under_way_is_never_cut(autojump_clock: trio.testing.MockClock) -> None:
    """The app answers before it has read the body (an early 401, say): the grace's end
    leaves it alone."""

    async def early(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await trio.sleep(GRACE * 2)
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    guarded = _Guarded(early, GRACE)  # type: ignore[arg-type]
    client = Client()
    guarded.stop()
    await serve(guarded, client)
    assert client.status() == 401
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]


async def test_the_last_send_completes_even_when_the_app_is_being_cancelled() -> None:
    """hypercorn closes the connection inside the app's last send, and quart-trio then
    cancels the app: that send must still finish."""

    async def cancelled_while_answering(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    guarded = _Guarded(cancelled_while_answering, GRACE)  # type: ignore[arg-type]
    client = Client()
    await serve(guarded, client)
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
