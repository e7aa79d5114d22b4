"""The ``llm`` agent: one streamed chat completion against an OpenAI-compatible endpoint.

The provider comes from ``agents.<name>.provider`` or, when only one ``[providers.*]`` is
configured, that one; the model from ``agents.<name>.model`` or the provider's
``default_model``. Both are resolved when the agent is built so a bad config fails at start,
not on the first task.

Each task sends ``[system_prompt] + history + prompt`` as ``messages`` with ``stream: true``,
forwards every delta's text through ``ctx.emit`` and returns the whole reply as a string.

Failures: 429, 5xx, timeouts and connection errors are retried by stamina with exponential
backoff and jitter (or the server's ``Retry-After`` seconds), up to ``max_retries`` times -- but
only while nothing has been emitted, because subscribers cannot un-see tokens of a half-finished
reply.
Other 4xx are not retried; their ``{"error": {"message": ...}}`` becomes the task error.
``timeout`` bounds each wait on the server (connect, each read, each write), not the whole
generation, so a long but steadily streaming reply is never cut off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import stamina

from brio.agents.base import Agent, AgentContext, AgentError
from brio.config.model import AgentConfig, BrioConfig, ProviderConfig


@dataclass(frozen=True, slots=True)
class LLMTunables:
    """Retry pacing handed to stamina; injectable so tests can wait milliseconds, not seconds.

    The wait before retry ``n`` (1-based) is stamina's ``min(backoff_max, backoff_base *
    2**(n-1) + uniform(0, backoff_jitter))``; a ``Retry-After`` header replaces it, capped at
    ``retry_after_max`` so a hostile server cannot park a task forever.
    """

    backoff_base: float = 0.5
    backoff_max: float = 20.0
    backoff_jitter: float = 0.5
    retry_after_max: float = 60.0


DEFAULT_TUNABLES = LLMTunables()


def make_llm_agent(
    name: str,
    settings: AgentConfig,
    config: BrioConfig,
    tunables: LLMTunables = DEFAULT_TUNABLES,
) -> Agent:
    """Build the llm agent for ``[agents.<name>]``; config errors raise ``ValueError``."""
    provider_name, provider = _select_provider(name, settings, config)
    model = settings.model or provider.default_model
    if not model:
        raise ValueError(
            f"agents.{name}.model is not set and providers.{provider_name}.default_model "
            "is empty: one of them must name the model"
        )
    client = _Client(provider_name, provider, tunables)

    async def llm_agent(ctx: AgentContext) -> str:
        """Answer the prompt with a streamed chat completion from the configured model."""
        body: dict[str, Any] = {
            "model": model,
            "messages": _messages(settings.system_prompt, ctx),
            "stream": True,
        }
        if settings.temperature is not None:
            body["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            body["max_tokens"] = settings.max_tokens
        return await client.complete(body, ctx.emit)

    return llm_agent


def _select_provider(
    name: str, settings: AgentConfig, config: BrioConfig
) -> tuple[str, ProviderConfig]:
    known = ", ".join(sorted(config.providers)) or "none"
    if settings.provider is not None:
        provider = config.providers.get(settings.provider)
        if provider is None:
            raise ValueError(
                f"agents.{name}.provider: no [providers.{settings.provider}] section "
                f"(configured providers: {known})"
            )
        return settings.provider, provider
    if len(config.providers) == 1:
        [(provider_name, provider)] = config.providers.items()
        return provider_name, provider
    if not config.providers:
        raise ValueError(f"agents.{name}.provider: no [providers.*] section is configured")
    raise ValueError(
        f"agents.{name}.provider must choose one of the configured providers ({known})"
    )


def _messages(system_prompt: str | None, ctx: AgentContext) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": m.role, "content": m.content} for m in ctx.history]
    messages.append({"role": "user", "content": ctx.prompt})
    return messages


class _Retryable(Exception):
    """A failure worth another attempt (if nothing was emitted yet)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Client:
    provider_name: str
    provider: ProviderConfig
    tunables: LLMTunables

    @property
    def url(self) -> str:
        return self.provider.base_url.rstrip("/") + "/chat/completions"

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.provider.api_key is not None and self.provider.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self.provider.api_key.get_secret_value()}"
        return headers

    async def complete(self, body: dict[str, Any], emit: Callable[[str], Awaitable[None]]) -> str:
        """POST, retried by stamina; ``parts`` records what was emitted, which forbids a retry."""
        parts: list[str] = []
        tried = 0

        def retry_on(exc: Exception) -> bool | float:
            """stamina's hook: retry or not, and the server's ``Retry-After`` as the wait."""
            if not isinstance(exc, _Retryable) or parts:
                return False
            return True if exc.retry_after is None else exc.retry_after

        pacing = self.tunables
        # One client per task: connections are not shared across tasks (or trio runs), and
        # closing it on the way out also closes the stream if the task is cancelled.
        async with httpx.AsyncClient(timeout=self.provider.timeout) as http:
            try:
                async for attempt in stamina.retry_context(
                    on=retry_on,
                    attempts=self.provider.max_retries + 1,
                    timeout=None,  # the task's own timeout bounds the whole run
                    wait_initial=pacing.backoff_base,
                    wait_max=pacing.backoff_max,
                    wait_jitter=pacing.backoff_jitter,
                ):
                    tried = attempt.num
                    with attempt:
                        return await self._attempt(http, body, emit, parts)
            except _Retryable as exc:  # stamina let the last one through
                if parts:
                    raise AgentError(
                        f"{self.provider_name}: reply broken off after output was sent: {exc}"
                    ) from exc
                raise AgentError(
                    f"{self.provider_name}: giving up after {tried} attempt(s): {exc}"
                ) from exc
        raise AssertionError("unreachable: stamina returns or raises")

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        body: dict[str, Any],
        emit: Callable[[str], Awaitable[None]],
        parts: list[str],
    ) -> str:
        try:
            async with http.stream("POST", self.url, json=body, headers=self.headers) as response:
                if not response.is_success:
                    await response.aread()
                    self._raise_for_status(response)
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    # A server that ignored "stream": true answered in one piece.
                    await response.aread()
                    text = _completion_text(_json(response.text))
                    if text:
                        await emit(text)
                        parts.append(text)
                    return text
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, "event:" lines
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        break
                    delta = _delta_text(_json(data))
                    if delta:
                        await emit(delta)
                        parts.append(delta)
                return "".join(parts)
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"no answer within {self.provider.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from exc

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        reason = f"HTTP {status}: {_error_message(response)}"
        if status == 429 or status >= 500:
            raise _Retryable(reason, _retry_after(response, self.tunables.retry_after_max))
        raise AgentError(f"{self.provider_name}: {reason}")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AgentError(f"malformed reply from the provider: {text[:200]!r}") from exc


def _delta_text(chunk: Any) -> str:
    """The text of one ``chat.completion.chunk`` (first choice), refusing in-band errors."""
    if not isinstance(chunk, dict):
        raise AgentError(f"malformed stream chunk: {chunk!r:.200}")
    if "error" in chunk:
        message = _message_of(chunk) or repr(chunk)[:200]
        raise AgentError(f"provider error mid-stream: {message}")
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return ""  # e.g. the usage-only chunk sent with stream_options.include_usage
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _completion_text(payload: Any) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise AgentError(f"malformed completion: {payload!r:.200}") from exc
    return content if isinstance(content, str) else ""


def _message_of(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        message = payload["error"].get("message")
        if isinstance(message, str) and message:
            return message
    return None


def _error_message(response: httpx.Response) -> str:
    """The API's ``error.message`` if the body has one, else the start of the body."""
    try:
        message = _message_of(response.json())
    except ValueError:
        message = None
    return message or response.text.strip()[:300] or response.reason_phrase


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored), capped at ``cap``."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, cap)
