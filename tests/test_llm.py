"""The shared OpenAI client against a local OpenAI-compatible server, over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest

from project import llm
from project.kinds import RateLimited, is_transient, pause_seconds
from project.ratelimit import get_limiter
from scanner import extract
from tests.openai_server import OpenAIServer

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture
def server(settings, redis_db):
    with OpenAIServer(answer=lambda body: json.dumps({"answer": "42"})) as server:
        settings.OPENAI_API_KEY = "test-key"
        settings.OPENAI_BASE_URL = server.url
        settings.OPENAI_TIMEOUT = 2
        settings.RATE_LIMITS = {"openai": {"rpm": 6000, "tpm": 1_000_000}}
        yield server


def ask(**options) -> llm.Reply:
    return llm.chat([{"role": "user", "content": "What is the answer?"}], **options)


def test_it_returns_the_parsed_reply_and_its_usage(server):
    reply = ask(schema=SCHEMA)
    assert reply.data == {"answer": "42"}
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    sent = server.requests[0].body
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent["model"] == "gpt-4o-mini"


def test_a_429_pauses_the_limiter_for_its_retry_after(server):
    server.script(["429"])
    with pytest.raises(RateLimited) as caught:
        ask()
    assert caught.value.limiter == "openai"
    assert caught.value.retry_after == 1.0
    assert pause_seconds(caught.value) == 1.0


def test_server_errors_and_timeouts_are_transient(server):
    server.script(["500", "timeout"])
    server.hang = 5
    with pytest.raises(openai.InternalServerError) as caught:
        ask()
    assert is_transient(caught.value)
    with pytest.raises(openai.APITimeoutError) as caught:
        ask()
    assert is_transient(caught.value)


def test_a_body_that_is_not_json_is_transient(server):
    server.script(["malformed"])
    with pytest.raises(llm.InvalidOutput, match="not JSON") as caught:
        ask(schema=SCHEMA)
    assert is_transient(caught.value)


def test_a_response_that_is_not_a_chat_completion_is_transient(server):
    server.script(["no_choices"])
    with pytest.raises(llm.InvalidOutput, match="no choice") as caught:
        ask()
    assert is_transient(caught.value)


def test_a_reply_that_breaks_the_schema_is_never_returned(server):
    server.script(["bad_output"])
    with pytest.raises(llm.InvalidOutput):
        ask(schema=SCHEMA)
    server.answer = lambda body: json.dumps({"answer": 42})
    with pytest.raises(llm.InvalidOutput, match="answer"):
        ask(schema=SCHEMA)


SHIPPED = {
    "tracking_number": "1Z999AA10123456784",
    "carrier": "ups",
    "po_number": "",
    "shipped_date": "",
    "confidence": 0.9,
}


@pytest.mark.parametrize(
    "reply, where",
    [
        ({"supplier": "Acme", "shipments": [{"number": "1Z"}]}, "shipments/0"),
        (
            {"supplier": "Acme", "shipments": [SHIPPED | {"confidence": True}]},
            "shipments/0/confidence",
        ),
        (
            {"supplier": "Acme", "shipments": [SHIPPED | {"carrier": "royal"}]},
            "shipments/0/carrier",
        ),
        ({"supplier": 7, "shipments": []}, "supplier"),
        ({"supplier": "Acme", "shipments": "none"}, "shipments"),
        (["Acme"], "reply"),
    ],
)
def test_a_reply_that_breaks_the_schema_says_where(server, reply, where):
    server.answer = lambda body: json.dumps(reply)
    with pytest.raises(llm.InvalidOutput, match=f"breaks the schema at {where}:"):
        ask(schema=extract.SCHEMA)


def test_the_limiter_is_charged_what_the_service_counted(server, settings):
    settings.RATE_LIMITS = {"openai": {"rpm": 0, "tpm": 6000}}
    limiter = get_limiter("openai")
    reply = ask(max_tokens=3000)
    # The estimate included 3,000 completion tokens; the settle refunded what was unused,
    # so the next small call waits a fraction of a second, not ~30 s for the estimate.
    assert reply.total_tokens < 100
    assert limiter.try_acquire(100) < 1


def test_each_thread_keeps_its_own_connection_to_the_service(server):
    def calls(times: int) -> None:
        for _ in range(times):
            ask()

    # Two threads at once: each sends its calls over one keep-alive connection of its own.
    threads = [threading.Thread(target=calls, args=(3,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ports = [request.port for request in server.requests]
    assert len(ports) == 6 and len(set(ports)) == 2
    assert sorted(ports.count(port) for port in set(ports)) == [3, 3]
    # Their connections are closed when the next thread opens its own.
    later = threading.Thread(target=calls, args=(1,))
    later.start()
    later.join()
    deadline = time.monotonic() + 5
    while server.open_connections > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.open_connections == 1
    assert server.requests[-1].port not in ports


def test_the_test_service_counts_its_latency_from_the_request_line():
    """A request is answered `latency` after its first line came in: the time the service
    takes to read it (here, a body sent late) is part of the latency, as a real service's."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with OpenAIServer(latency=0.4) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            line_sent = time.monotonic()
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
            time.sleep(0.2)
            sock.sendall(
                b"Host: test\r\nAuthorization: Bearer key\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            body_sent = time.monotonic()
            reply = sock.makefile("rb").readline()
            answered = time.monotonic()
    (request,) = server.requests
    assert reply.startswith(b"HTTP/1.1 200")
    assert line_sent <= request.at < body_sent
    assert answered >= request.at + 0.4
