"""An OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It answers `POST /v1/chat/completions` like the real API (same JSON shapes, `usage`
included) after a configurable latency, and can misbehave on purpose: 429 with
Retry-After, 500, a body that is not JSON, a reply that breaks the requested schema, or
no answer within the client's timeout. The real `openai` client reaches it over HTTP.

    with OpenAIServer(latency=0.2, answer=my_answer) as server:
        settings.OPENAI_BASE_URL = server.url
        ...
        server.requests  # every request: arrival time, body, the status answered

Faults come from a script (`server.script(["429", "500"])`: the next requests get these,
in order) or at random (`faults={"429": 0.05}`: that share of requests, seeded).

Run it alone for a manual try: `python -m tests.openai_server --port 8100 --latency 0.2`.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# bad_output (a reply that breaks the schema) and no_choices: OpenAI only
FAULTS = ("429", "500", "malformed", "bad_output", "no_choices", "timeout")
ANSWERLESS = ("429", "500", "malformed")  # answered by send_fault instead


@dataclass
class Request:
    at: float  # time.monotonic() on arrival (its request line read)
    body: dict
    status: int = 0
    fault: str = ""
    port: int = 0  # the client's port: requests on one keep-alive connection share it


def default_answer(body: dict) -> str:
    """A plain-text reply, or `{}` when a JSON schema was asked for."""
    if body.get("response_format", {}).get("type") == "json_schema":
        return "{}"
    last = body["messages"][-1]["content"]
    return f"Summary: {last[:200]}"


def user_text(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")


class FakeService:
    """A local HTTP server that records requests and fails on purpose (see FAULTS)."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        latency: float = 0.0,
        faults: dict[str, float] | None = None,
        retry_after: str = "1",
        hang: float = 30.0,
        seed: int = 0,
        port: int = 0,
    ):
        self.latency = latency
        self.faults = faults or {}
        self.retry_after = retry_after
        self.hang = hang
        self.requests: list[Request] = []
        self.open_connections = 0
        self._script: deque[str] = deque()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        handler.service = self
        self._httpd = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def script(self, faults: list[str]) -> None:
        """Make the next requests fail like this, in order (see FAULTS)."""
        with self._lock:
            self._script.extend(faults)

    def max_in_window(self, seconds: float) -> int:
        """The most requests that arrived within any `seconds`-long window."""
        times = sorted(r.at for r in self.requests)
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def arrive(self, body: dict, port: int = 0, at: float | None = None) -> Request:
        """Record a request that arrived `at` (time.monotonic(), by default now) and choose
        its fault. The handler answers it after `wait`."""
        request = Request(at=time.monotonic() if at is None else at, body=body, port=port)
        with self._lock:
            self.requests.append(request)
            if self._script:
                request.fault = self._script.popleft()
            else:
                for fault, share in self.faults.items():
                    if self._random.random() < share:
                        request.fault = fault
                        break
        return request

    def wait(self, request: Request) -> None:
        """Sleep until the request's answer is due: `latency` after it arrived, so the time
        this server takes to read it and build the answer is part of the latency, as a real
        service's is (and a hang more for a `timeout` fault)."""
        time.sleep(max(0.0, request.at + self.latency - time.monotonic()))
        if request.fault == "timeout":
            time.sleep(self.hang)


class OpenAIServer(FakeService):
    def __init__(self, latency: float = 0.0, answer: Callable[[dict], str] = default_answer, **kw):
        super().__init__(_handler(), latency=latency, **kw)
        self.answer = answer

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"


class JSONHandler(BaseHTTPRequestHandler):
    """Shared by the fake services: keep-alive HTTP/1.1, JSON answers, the common faults."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    # Answers go out at once: with Nagle's algorithm the body waits for the client's delayed
    # ACK of the headers, about 40 ms on every reply.
    disable_nagle_algorithm = True
    service: FakeService

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.service._lock:
            self.service.open_connections += 1

    def finish(self) -> None:
        with self.service._lock:
            self.service.open_connections -= 1
        super().finish()

    def parse_request(self) -> bool:
        # A request has arrived once its first line is read: its latency counts from here.
        self.arrived = time.monotonic()
        return super().parse_request()

    def send_fault(self, request: Request, error: dict) -> bool:
        """Answer the request's fault, if it has one that ends it here; True if it did."""
        if request.fault == "429":
            request.status = 429
            self.send_json(429, error, {"retry-after": self.service.retry_after})
        elif request.fault == "500":
            request.status = 500
            self.send_json(500, {"error": {"message": "The server had an error"}})
        elif request.fault == "malformed":
            request.status = 200
            self.send_raw(200, b'{"_results": [{"id": "cnv_1", "subj')
        else:
            return False
        return True

    def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self.send_raw(status, json.dumps(payload).encode(), headers)

    def send_raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _handler() -> type[JSONHandler]:
    class Handler(JSONHandler):
        service: OpenAIServer

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self.send_json(404, {"error": {"message": "not found"}})
                return
            if self.headers.get("authorization", "") in ("", "Bearer "):
                self.send_json(401, {"error": {"message": "no API key"}})
                return
            body = json.loads(raw)
            request = self.service.arrive(body, port=self.client_address[1], at=self.arrived)
            # The answer is built first and sent when due (see FakeService.wait).
            answer = None if request.fault in ANSWERLESS else self.completion(request, body)
            self.service.wait(request)
            if self.send_fault(request, {"error": {"message": "Rate limit reached"}}):
                return
            request.status = 200
            self.send_raw(200, answer)

        def completion(self, request: Request, body: dict) -> bytes:
            if request.fault == "no_choices":
                return json.dumps({"object": "chat.completion", "choices": []}).encode()
            if request.fault == "bad_output":
                content = '{"unexpected": true'
            else:
                content = self.service.answer(body)
            prompt = sum(len(m["content"]) for m in body["messages"]) // 4 + 1
            completion = len(content) // 4 + 1
            return json.dumps(
                {
                    "id": f"chatcmpl-{len(self.service.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "test-model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                },
            ).encode()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of first connections from many worker threads

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out closed its end: nothing to report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    server = OpenAIServer(latency=args.latency, port=args.port).start()
    print(f"OPENAI_BASE_URL={server.url} (any OPENAI_API_KEY)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
