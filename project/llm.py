"""The OpenAI client, shared by the inbox scanner and the daily briefs.

Any OpenAI-compatible server works: set OPENAI_BASE_URL. Every call goes through the shared
`openai` rate limiter: it acquires an estimate of the call's tokens first and settles the
usage the response reports after, so tokens per minute follow what the service counted.
The SDK's own retries are off; the engine retries transient failures with backoff, and a
429 pauses the limiter for every worker (RateLimited).

Model output is data: with a JSON schema, a reply that is not JSON or does not match the
schema raises InvalidOutput, and nothing of it is returned.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import httpx2
import openai
from django.conf import settings

from project.kinds import RateLimited, TransientError
from project.ratelimit import get_limiter

LIMITER = "openai"
CHARS_PER_TOKEN = 4  # a fair average for English prose; tiktoken needs an online download

_clients: dict[tuple, openai.OpenAI] = {}
_clients_lock = threading.Lock()


class InvalidOutput(TransientError):
    """The model's reply was not JSON matching the schema (asking again may fix it)."""


@dataclass
class Reply:
    """A model's answer: its text, the parsed JSON when a schema was given, and its cost."""

    content: str
    data: Any
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def enabled() -> bool:
    """Whether an API key is configured (the features fall back to rules or templates)."""
    return bool(settings.OPENAI_API_KEY)


class ThreadConnections(httpx2.BaseTransport):
    """HTTP connections kept per thread: each thread has its own small connection pool.

    httpx's pool is shared behind one lock, and each request it places scans every pooled
    connection (with a poll() of each idle one). When a worker's 25 item threads call the
    model at the same moment, as a job's first waves do, a request waited 20-40 ms there
    for its connection. A thread's own pool holds the keep-alive connection it reuses for
    its next call. The pools of threads that ended are closed as the next thread opens its
    own, and all of them by close().
    """

    def __init__(self):
        # One TLS context for all of them: building one loads the CA certificates (45 ms).
        self.ssl_context = httpx2.create_ssl_context()
        self.local = threading.local()
        self.pools: dict[threading.Thread, httpx2.HTTPTransport] = {}
        self.lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        pool = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = self.open()
        return pool.handle_request(request)

    def open(self) -> httpx2.HTTPTransport:
        pool = httpx2.HTTPTransport(verify=self.ssl_context, limits=POOL_LIMITS)
        with self.lock:
            ended = [thread for thread in self.pools if not thread.is_alive()]
            closing = [self.pools.pop(thread) for thread in ended]
            self.pools[threading.current_thread()] = pool
        for old in closing:
            old.close()
        return pool

    def close(self) -> None:
        with self.lock:
            closing, self.pools = list(self.pools.values()), {}
        for pool in closing:
            pool.close()


# A thread makes one call at a time; a second connection covers a reply still being read.
POOL_LIMITS = httpx2.Limits(max_connections=4, max_keepalive_connections=2)


def client() -> openai.OpenAI:
    """The process's client, built on first use (HTTP connections are kept per thread)."""
    config = (settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL, settings.OPENAI_TIMEOUT)
    with _clients_lock:
        if config not in _clients:
            _clients[config] = openai.OpenAI(
                api_key=config[0] or "unset",
                base_url=config[1],
                timeout=config[2],
                max_retries=0,
                http_client=openai.DefaultHttpxClient(transport=ThreadConnections()),
            )
        return _clients[config]


def warm_up(schema: dict | None = None) -> None:
    """Build the client (and `schema`'s check) now: the client loads the system's CA
    certificates, 45 ms that every thread of a worker's first job would otherwise wait for."""
    if enabled():
        client()
    if schema is not None:
        validator(schema)


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def trim(text: str, max_tokens: int) -> str:
    """Cut text to about `max_tokens`, keeping its start (where a thread's oldest message is)."""
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    return text[:limit] + "\n[... trimmed ...]"


def chat(
    messages: list[dict[str, str]],
    *,
    schema: dict | None = None,
    max_tokens: int = 800,
    timeout: float | None = None,
) -> Reply:
    """Ask the model; with `schema`, return its reply parsed and validated against it.

    Raises RateLimited on a 429 (which pauses the limiter for everyone), the SDK's errors
    for the rest (the engine retries timeouts and 5xx), InvalidOutput for a reply that
    breaks the schema.
    """
    limiter = get_limiter(LIMITER)
    estimate = sum(estimate_tokens(m["content"]) for m in messages) + max_tokens
    limiter.acquire(estimate, timeout=timeout)
    body = {"model": settings.OPENAI_MODEL, "messages": messages, "max_tokens": max_tokens}
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "result", "strict": True, "schema": schema},
        }
    started = time.monotonic()
    try:
        # Reference: https://platform.openai.com/docs/api-reference/chat/create
        # The SDK's plain `post` (its README, "Undocumented endpoints"): the same client,
        # authentication, timeout and errors as `chat.completions.create`, without the typed
        # layer that walks the request against its types and builds models of the reply.
        # That layer took half of the call's CPU, and a brief or scan spends most of its
        # CPU on this call; the reply is checked here (`answer`), as data.
        http = client().post(
            "/chat/completions",
            cast_to=httpx2.Response,
            body=body,
            options={"timeout": timeout or settings.OPENAI_TIMEOUT},
        )
        response = json.loads(http.content)
    except openai.RateLimitError as exc:
        limiter.settle(estimate, 0)  # a refused call used no tokens
        raise RateLimited(
            f"OpenAI rate limit: {exc.message}", retry_after=_retry_after(exc), limiter=LIMITER
        ) from exc
    except openai.APIError:
        limiter.settle(estimate, 0)
        raise
    except ValueError as exc:
        limiter.settle(estimate, 0)
        raise InvalidOutput(f"the service's response is not JSON: {exc}") from None
    latency = time.monotonic() - started
    content, model, prompt, completion = answer(response)
    if prompt is None:  # a server that reports no usage: the estimate stands
        prompt = estimate - max_tokens
    limiter.settle(estimate, prompt + completion)
    data = None
    if schema is not None:
        data = parse(content, schema)
    return Reply(content, data, model, prompt, completion, latency)


def answer(response: Any) -> tuple[str, str, int | None, int]:
    """(content, model, prompt tokens or None, completion tokens) of a chat completion, as
    the API reference shapes it; InvalidOutput for anything else."""
    try:
        content = response["choices"][0]["message"]["content"] or ""
        model = response.get("model") or settings.OPENAI_MODEL
        usage = response.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens") or 0
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InvalidOutput("the service's response holds no choice with a message") from None
    counts = (completion,) if prompt is None else (prompt, completion)
    if not isinstance(content, str) or not all(type(n) is int and n >= 0 for n in counts):
        raise InvalidOutput("the service's response is not a chat completion")
    return content, str(model), prompt, completion


def parse(content: str, schema: dict) -> Any:
    """The reply as JSON, if it matches `schema`; else InvalidOutput."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise InvalidOutput(f"the model's reply is not JSON: {exc}") from None
    try:
        validator(schema)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = "/".join(exc.path[1:]) or "reply"  # path[0] is "data", the reply itself
        message = f"the model's reply breaks the schema at {where}: {exc.message}"
        raise InvalidOutput(message) from None
    return data


def validator(schema: dict) -> Callable[[Any], Any]:
    """`schema` compiled to a Python function, once per schema (it raises
    JsonSchemaValueException for data that breaks the schema). Twenty times quicker than
    walking the schema for every reply, as a generic validator does; the schemas are the
    product's own constants, never user input."""
    return _compiled(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=32)
def _compiled(schema: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(json.loads(schema))


def cost_usd(prompt_tokens: int, completion_tokens: int) -> float:
    """Estimated price of a call, from OPENAI_PRICE_INPUT/OUTPUT (USD per million tokens)."""
    return (
        prompt_tokens * settings.OPENAI_PRICE_INPUT
        + completion_tokens * settings.OPENAI_PRICE_OUTPUT
    ) / 1_000_000


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
