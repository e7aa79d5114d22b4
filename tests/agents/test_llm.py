"""The llm agent against a fake OpenAI server on a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stamina
import stamina.instrumentation
import trio

from brio.agents.base import Agent, AgentContext, AgentError, HistoryMessage
from brio.agents.llm import DEFAULT_TUNABLES, LLMTunables, make_llm_agent
from brio.config.model import AgentConfig, BrioConfig, ProviderConfig
from tests.fakes.openai_server import FakeOpenAI, open_fake_openai

# Real but short waits, without jitter: 10 ms, 20 ms, then 40 ms at most.
QUICK = LLMTunables(backoff_base=0.01, backoff_max=0.04, backoff_jitter=0.0, retry_after_max=0.05)


@pytest.fixture
def waits() -> Iterator[list[float]]:
    """The waits stamina schedules before each retry, seen through its on-retry hook.

    stamina derives them from running totals, so compare with ``pytest.approx``.
    """
    scheduled: list[float] = []
    before = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([lambda details: scheduled.append(details.wait_for)])
    try:
        yield scheduled
    finally:
        stamina.instrumentation.set_on_retry_hooks(before)


def provider_for(fake: FakeOpenAI, **overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {"base_url": fake.base_url, "default_model": "gpt-fake"}
    fields.update(overrides)
    return ProviderConfig(**fields)


def llm_agent(
    fake: FakeOpenAI,
    tunables: LLMTunables = QUICK,
    provider: dict[str, Any] | None = None,
    **settings: Any,
) -> Agent:
    config = BrioConfig(providers={"fake": provider_for(fake, **(provider or {}))})
    return make_llm_agent("bot", AgentConfig(kind="llm", **settings), config, tunables)


def context(
    prompt: str = "hello",
    chunks: list[str] | None = None,
    history: list[HistoryMessage] | None = None,
) -> AgentContext:
    sink = chunks if chunks is not None else []

    async def emit(chunk: str) -> None:
        sink.append(chunk)

    return AgentContext(
        task_id="t1",
        agent="bot",
        prompt=prompt,
        input={},
        history=history or [],
        session_id=None,
        attempt=1,
        cancel_scope=trio.CancelScope(),
        emit_fn=emit,
    )


async def test_streamed_tokens_are_emitted_in_order_and_concatenated() -> None:
    async with open_fake_openai() as fake:
        fake.reply("The ", "quick ", "brown ", "fox", delay=0.01)
        chunks: list[str] = []
        result = await llm_agent(fake)(context(chunks=chunks))
    assert chunks == ["The ", "quick ", "brown ", "fox"]
    assert result == "The quick brown fox"


async def test_request_carries_system_prompt_history_and_prompt_in_order() -> None:
    history = [
        HistoryMessage("user", "first question"),
        HistoryMessage("assistant", "first answer"),
    ]
    async with open_fake_openai() as fake:
        agent = llm_agent(fake, system_prompt="Be brief.", temperature=0.2, max_tokens=50)
        await agent(context("second question", history=history))
    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.json == {
        "model": "gpt-fake",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_optional_fields_are_left_out() -> None:
    async with open_fake_openai() as fake:
        await llm_agent(fake)(context("hi"))
    assert fake.requests[0].json == {
        "model": "gpt-fake",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


async def test_agent_model_overrides_provider_default() -> None:
    async with open_fake_openai() as fake:
        await llm_agent(fake, model="gpt-special")(context())
    assert fake.requests[0].json["model"] == "gpt-special"


async def test_trailing_slash_in_base_url() -> None:
    async with open_fake_openai() as fake:
        fake.reply("ok")
        agent = llm_agent(fake, provider={"base_url": fake.base_url + "/"})
        assert await agent(context()) == "ok"
    assert fake.requests[0].path == "/v1/chat/completions"


async def test_api_key_is_sent_as_bearer_token() -> None:
    async with open_fake_openai(api_key="sk-secret") as fake:
        fake.reply("welcome")
        agent = llm_agent(fake, provider={"api_key": "sk-secret"})
        assert await agent(context()) == "welcome"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-secret"


async def test_an_empty_api_key_sends_no_authorization_header() -> None:
    async with open_fake_openai() as fake:
        fake.reply("ok")
        agent = llm_agent(fake, provider={"api_key": ""})
        assert await agent(context()) == "ok"
    assert "authorization" not in fake.requests[0].headers


async def test_wrong_api_key_fails_without_retry(waits: list[float]) -> None:
    async with open_fake_openai(api_key="sk-secret") as fake:
        agent = llm_agent(fake, provider={"api_key": "sk-wrong-key"})
        with pytest.raises(AgentError, match=r"HTTP 401: Incorrect API key provided"):
            await agent(context())
    assert len(fake.requests) == 1
    assert waits == []


async def test_429_is_retried_honouring_retry_after(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        fake.fail(429, retry_after=0.03)
        fake.fail(429)
        fake.reply("finally")
        chunks: list[str] = []
        result = await llm_agent(fake)(context(chunks=chunks))
    assert result == "finally"
    assert chunks == ["finally"]
    assert len(fake.requests) == 3
    # Retry-After wins over backoff; then the backoff for retry 2: 0.01 * 2**1.
    assert waits == pytest.approx([0.03, 0.02])


async def test_retry_after_is_capped(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        fake.fail(429, retry_after=7)
        fake.reply("soon")
        with trio.fail_after(2):
            assert await llm_agent(fake)(context()) == "soon"
    assert waits == pytest.approx([QUICK.retry_after_max])


async def test_500_is_retried(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        fake.fail(500)
        fake.fail(503, "overloaded")
        fake.reply("up again")
        assert await llm_agent(fake)(context()) == "up again"
    assert waits == pytest.approx([0.01, 0.02])


async def test_backoff_doubles_from_base_up_to_max_plus_jitter(waits: list[float]) -> None:
    pacing = LLMTunables(backoff_base=0.01, backoff_max=0.03, backoff_jitter=0.005)
    async with open_fake_openai() as fake:
        for _ in range(4):
            fake.fail(500)
        fake.reply("at last")
        agent = llm_agent(fake, pacing, provider={"max_retries": 4})
        assert await agent(context()) == "at last"
    assert len(waits) == 4
    assert 0.01 <= waits[0] <= 0.015
    assert 0.02 <= waits[1] <= 0.025
    assert waits[2:] == pytest.approx([0.03, 0.03])


async def test_gives_up_after_max_retries_naming_the_status(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        for _ in range(3):
            fake.fail(502, "bad gateway today")
        agent = llm_agent(fake, provider={"max_retries": 2})
        with pytest.raises(AgentError, match=r"after 3 attempt\(s\): HTTP 502: bad gateway today"):
            await agent(context())
    assert len(fake.requests) == 3
    assert len(waits) == 2


async def test_400_is_not_retried_and_its_message_surfaces(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        fake.fail(400, "max_tokens is too large: 999999.", param="max_tokens")
        fake.reply("never sent")
        with pytest.raises(AgentError, match=r"HTTP 400: max_tokens is too large: 999999\."):
            await llm_agent(fake)(context())
        assert fake.pending == 1
    assert len(fake.requests) == 1
    assert waits == []


async def test_timeout() -> None:
    async with open_fake_openai() as fake:
        fake.reply("too late", latency=2)
        agent = llm_agent(fake, provider={"timeout": 0.2, "max_retries": 0})
        with trio.fail_after(5), pytest.raises(AgentError, match=r"no answer within 0\.2s"):
            await agent(context())


async def test_timeout_is_retried_while_nothing_was_emitted(waits: list[float]) -> None:
    """With the production pacing: stamina's test mode turns the waits off, not the attempts."""
    async with open_fake_openai() as fake:
        fake.reply("too late", latency=2)
        fake.reply("in time")
        agent = llm_agent(fake, DEFAULT_TUNABLES, provider={"timeout": 0.2})
        with stamina.set_testing(True, attempts=10, cap=True):
            assert await agent(context()) == "in time"
    assert waits == [0.0]


async def test_connection_refused_is_retried_then_reported(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        dead_url = fake.base_url
    config = BrioConfig(providers={"gone": ProviderConfig(base_url=dead_url, max_retries=2)})
    agent = make_llm_agent("bot", AgentConfig(kind="llm", model="m"), config, DEFAULT_TUNABLES)
    with (
        stamina.set_testing(True, attempts=10, cap=True),
        pytest.raises(AgentError, match=r"after 3 attempt.*connection error"),
    ):
        await agent(context())
    assert waits == [0.0, 0.0]


async def test_broken_stream_after_output_is_not_retried(waits: list[float]) -> None:
    async with open_fake_openai() as fake:
        fake.reply("partial ", "reply ", "lost", drop_after=2)
        fake.reply("must not be used")
        chunks: list[str] = []
        with pytest.raises(AgentError, match="after output was sent"):
            await llm_agent(fake)(context(chunks=chunks))
    assert chunks == ["partial ", "reply "]
    assert len(fake.requests) == 1
    assert waits == []


async def test_unscripted_fake_echoes_the_prompt() -> None:
    async with open_fake_openai() as fake:
        chunks: list[str] = []
        assert await llm_agent(fake)(context("say it back", chunks=chunks)) == "say it back"
    assert chunks == ["say", " it", " back"]


async def test_cancellation_stops_the_request() -> None:
    async with open_fake_openai() as fake:
        fake.reply("slow", "stream", delay=10)
        chunks: list[str] = []
        with trio.move_on_after(0.3) as scope:
            await llm_agent(fake)(context(chunks=chunks))
    assert scope.cancelled_caught
    assert chunks == ["slow"]


async def test_single_provider_is_chosen_by_default() -> None:
    """No ``provider`` and no ``model``: the only provider's URL, key, model and name are used."""
    async with open_fake_openai(api_key="sk-only") as fake:
        only = provider_for(fake, api_key="sk-only", default_model="only-model", max_retries=0)
        config = BrioConfig(providers={"only": only})
        agent = make_llm_agent("bot", AgentConfig(kind="llm"), config, QUICK)
        fake.reply("from the only one")
        fake.fail(503)
        assert await agent(context()) == "from the only one"
        with pytest.raises(AgentError, match=r"^only: giving up after 1 attempt\(s\): HTTP 503"):
            await agent(context())
    assert [(r.path, r.headers["authorization"], r.json["model"]) for r in fake.requests] == [
        ("/v1/chat/completions", "Bearer sk-only", "only-model"),
    ] * 2


def test_unknown_provider_is_refused() -> None:
    config = BrioConfig(providers={"a": ProviderConfig(base_url="http://x/v1", default_model="m")})
    with pytest.raises(ValueError, match=r"agents\.bot\.provider.*\[providers\.b\].*a"):
        make_llm_agent("bot", AgentConfig(kind="llm", provider="b"), config)


def test_several_providers_need_a_choice() -> None:
    providers = {
        name: ProviderConfig(base_url="http://x/v1", default_model="m") for name in ("a", "b")
    }
    config = BrioConfig(providers=providers)
    with pytest.raises(ValueError, match=r"agents\.bot\.provider must choose.*a, b"):
        make_llm_agent("bot", AgentConfig(kind="llm"), config)
    make_llm_agent("bot", AgentConfig(kind="llm", provider="b"), config)


def test_no_provider_configured() -> None:
    with pytest.raises(ValueError, match=r"agents\.bot\.provider: no \[providers"):
        make_llm_agent("bot", AgentConfig(kind="llm"), BrioConfig())


def test_a_model_is_required() -> None:
    config = BrioConfig(providers={"p": ProviderConfig(base_url="http://x/v1")})
    with pytest.raises(ValueError, match=r"agents\.bot\.model.*providers\.p\.default_model"):
        make_llm_agent("bot", AgentConfig(kind="llm"), config)


# -- the fake itself speaks the real wire format (other suites rely on it) ----------------


async def test_fake_streams_openai_sse_chunks() -> None:
    async with open_fake_openai() as fake, httpx.AsyncClient() as http:
        fake.reply("a", "b")
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        response = await http.post(f"{fake.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "a"},
        {"content": "b"},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, None, "stop"]


async def test_fake_answers_non_streaming_requests_with_one_completion() -> None:
    async with open_fake_openai() as fake, httpx.AsyncClient() as http:
        fake.reply("Hello", " there")
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        response = await http.post(f"{fake.base_url}/chat/completions", json=body)
    payload = response.json()
    assert payload["object"] == "chat.completion"
    assert payload["model"] == "m"
    assert payload["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "finish_reason": "stop",
        }
    ]
    assert set(payload["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


async def test_fake_errors_are_openai_shaped() -> None:
    async with open_fake_openai() as fake, httpx.AsyncClient() as http:
        fake.fail(429, retry_after=3)
        body = {"model": "m", "messages": []}
        limited = await http.post(f"{fake.base_url}/chat/completions", json=body)
        missing = await http.post(f"{fake.base_url}/chat/completions", json={"messages": []})
        unknown = await http.get(f"{fake.base_url}/nope")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json()["error"] == {
        "message": "Rate limit reached for requests.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    assert unknown.status_code == 404
    assert [request.path for request in fake.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/nope",
    ]
