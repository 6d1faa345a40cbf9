"""The OpenAI-compatible generator against a real local HTTP server speaking the protocol.

No mocks of httpx: a ``ThreadingHTTPServer`` on 127.0.0.1 streams server-sent events the way
vLLM, Ollama and llama.cpp do, and can be told per request to fail, hang or send garbage, so
timeouts, retries and error messages are tested over real sockets.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from search.answering.generation.base import GenerationRequest, GeneratorError, Message, generate
from search.answering.generation.openai_http import OpenAICompatibleGenerator, chat_completions_url

API_KEY = "sk-test-secret-4f9a"
PIECES = ["The ", "answer ", "is ", "42."]
REQUEST = GenerationRequest(
    messages=(Message("system", "Answer briefly."), Message("user", "What is the answer?")),
    max_new_tokens=64,
    temperature=0.2,
    stop=("\n\n", "END"),
)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeServer:
    """State shared with the handler: what to do per request, and what was received."""

    port: int = 0
    plan: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_behaviour(self) -> str:
        with self.lock:
            return self.plan.pop(0) if self.plan else "ok"


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    """Speaks streaming ``/v1/chat/completions``; misbehaves as ``server.state.plan`` says."""

    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def do_POST(self) -> None:
        state: FakeServer = self.server.state  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with state.lock:
            state.received.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
        behaviour = state.next_behaviour()
        # the client may give up (timeout) while we write: expected in the hang tests
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            getattr(self, f"reply_{behaviour}")(state)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def reply_ok(self, state: FakeServer) -> None:
        self.start_stream()
        self.wfile.write(b": keep-alive comment\n\n")
        self.wfile.write(chunk(None))  # role-only first chunk, as OpenAI sends
        for piece in PIECES:
            self.wfile.write(chunk(piece))
            self.wfile.flush()
        self.wfile.write(chunk(None, finish="stop"))
        self.wfile.write(b"data: [DONE]\n\n")

    def reply_500(self, state: FakeServer) -> None:
        self.send_json(500, {"error": {"message": "CUDA out of memory", "code": 500}})

    def reply_401(self, state: FakeServer) -> None:
        auth = self.headers.get("Authorization", "")
        self.send_json(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})

    def reply_429(self, state: FakeServer) -> None:
        self.send_json(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})

    def reply_big_400(self, state: FakeServer) -> None:
        self.send_json(400, {"error": {"message": "context too long " + "x" * 10_000}})

    def reply_malformed(self, state: FakeServer) -> None:
        self.start_stream()
        self.wfile.write(chunk(PIECES[0]))
        self.wfile.write(b'data: {"choices": [{"delta": {"content": "unterminated\n\n')

    def reply_no_done(self, state: FakeServer) -> None:
        self.start_stream()
        self.wfile.write(chunk(PIECES[0]))

    def reply_json(self, state: FakeServer) -> None:
        message = {"role": "assistant", "content": "".join(PIECES)}
        self.send_json(200, {"choices": [{"index": 0, "message": message}]})

    def reply_hang(self, state: FakeServer) -> None:
        state.release.wait(10)

    def reply_stall(self, state: FakeServer) -> None:
        self.start_stream()
        self.wfile.write(chunk(PIECES[0]))
        self.wfile.flush()
        state.release.wait(10)

    def reply_trickle(self, state: FakeServer) -> None:
        self.start_stream()
        while not state.release.wait(0.1):
            self.wfile.write(chunk("."))
            self.wfile.flush()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment must not intercept requests to 127.0.0.1."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def make(base_url: str, **options: Any) -> OpenAICompatibleGenerator:
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 2.0)
    options.setdefault("connect_timeout", 1.0)
    return OpenAICompatibleGenerator(base_url, "test-model", **options)


def consume(generator: OpenAICompatibleGenerator) -> tuple[list[str], GeneratorError]:
    """The pieces yielded before the stream failed, and the failure."""
    pieces: list[str] = []
    with pytest.raises(GeneratorError) as failure:
        for piece in generator.stream(REQUEST):
            pieces.append(piece)
    return pieces, failure.value


def test_streams_pieces_and_sends_the_protocol_fields(server: FakeServer) -> None:
    generator = make(server.base_url, api_key=API_KEY)
    assert generator.name == "openai"

    pieces = list(generator.stream(REQUEST))

    assert pieces == PIECES
    [received] = server.received
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.body == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the answer?"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
        "stop": ["\n\n", "END"],
        "stream": True,
    }


def test_without_stop_or_key_sends_neither(server: FakeServer) -> None:
    request = GenerationRequest(messages=(Message("user", "Hi"),))

    assert generate(make(server.base_url + "/v1/"), request) == "".join(PIECES)

    [received] = server.received
    assert received.path == "/v1/chat/completions"
    assert "stop" not in received.body
    assert "authorization" not in received.headers
    assert received.body["max_tokens"] == 256
    assert received.body["temperature"] == 0.0


@pytest.mark.parametrize(
    ("base_url", "endpoint"),
    [
        ("http://host:8000", "http://host:8000/v1/chat/completions"),
        ("http://host:8000/", "http://host:8000/v1/chat/completions"),
        ("http://host:8000/v1", "http://host:8000/v1/chat/completions"),
        ("http://host:8000/v1/", "http://host:8000/v1/chat/completions"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1/chat/completions"),
        ("https://example.com/proxy", "https://example.com/proxy/v1/chat/completions"),
    ],
)
def test_base_url_rule(base_url: str, endpoint: str) -> None:
    assert chat_completions_url(base_url) == endpoint


@pytest.mark.parametrize("base_url", ["", "127.0.0.1:8000", "ftp://host/v1"])
def test_a_base_url_that_is_not_http_is_refused(base_url: str) -> None:
    with pytest.raises(GeneratorError, match="KMS_OPENAI_BASE_URL"):
        OpenAICompatibleGenerator(base_url, "m")


def test_one_500_is_retried_and_succeeds(server: FakeServer) -> None:
    server.plan = ["500", "ok"]

    assert generate(make(server.base_url), REQUEST) == "".join(PIECES)

    assert len(server.received) == 2


def test_429_is_retried_and_succeeds(server: FakeServer) -> None:
    server.plan = ["429", "ok"]

    assert generate(make(server.base_url), REQUEST) == "".join(PIECES)

    assert len(server.received) == 2


def test_persistent_500_gives_up_after_the_retries(server: FakeServer) -> None:
    server.plan = ["500"] * 5

    pieces, error = consume(make(server.base_url, retries=2))

    assert pieces == []
    assert len(server.received) == 3
    message = str(error)
    assert f"{server.base_url}/v1/chat/completions (model test-model)" in message
    assert "HTTP 500" in message and "CUDA out of memory" in message
    assert "3 attempts" in message


def test_401_is_not_retried_and_names_the_endpoint(server: FakeServer) -> None:
    server.plan = ["401", "ok"]

    pieces, error = consume(make(server.base_url, api_key=API_KEY, retries=2))

    assert pieces == []
    assert len(server.received) == 1
    message = str(error)
    assert f"{server.base_url}/v1/chat/completions" in message
    assert "test-model" in message and "HTTP 401" in message
    assert "KMS_OPENAI_API_KEY" in message
    assert "Incorrect API key provided" in message  # the server's explanation is kept
    assert API_KEY not in message  # but the key it echoed is not


def test_a_hanging_server_fails_within_the_timeout(server: FakeServer) -> None:
    server.plan = ["hang"] * 5
    timeout, retries = 0.5, 1

    started = time.monotonic()
    pieces, error = consume(make(server.base_url, timeout=timeout, retries=retries))
    elapsed = time.monotonic() - started

    assert pieces == []
    assert elapsed < timeout * (retries + 1) + 2
    assert len(server.received) == retries + 1
    message = str(error)
    assert "did not answer within 0.5 s" in message
    assert f"{server.base_url}/v1/chat/completions" in message
    assert "KMS_OPENAI_BASE_URL" in message


def test_a_dead_port_fails_quickly_naming_the_url() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"

    started = time.monotonic()
    _, error = consume(make(base_url, retries=2))

    assert time.monotonic() - started < 2
    message = str(error)
    assert f"{base_url}/chat/completions (model test-model)" in message
    assert "is the server running?" in message


def test_a_malformed_event_is_an_error_and_not_retried(server: FakeServer) -> None:
    server.plan = ["malformed", "ok"]

    pieces, error = consume(make(server.base_url))

    assert pieces == PIECES[:1]
    assert len(server.received) == 1
    assert "malformed stream event" in str(error)


def test_no_retry_once_output_has_started(server: FakeServer) -> None:
    server.plan = ["stall", "ok"]

    started = time.monotonic()
    pieces, error = consume(make(server.base_url, timeout=0.5, retries=2))

    assert time.monotonic() - started < 0.5 + 2
    assert pieces == PIECES[:1]
    assert len(server.received) == 1
    assert "stopped sending for more than 0.5 s mid-answer" in str(error)


def test_a_trickling_stream_is_cut_at_the_total_deadline(server: FakeServer) -> None:
    server.plan = ["trickle"]
    timeout = 0.6

    started = time.monotonic()
    pieces, error = consume(make(server.base_url, timeout=timeout))
    elapsed = time.monotonic() - started

    assert pieces and set(pieces) == {"."}  # chunks kept coming, each within the read timeout
    assert timeout <= elapsed < timeout + 2
    assert "did not finish the answer within 0.6 s" in str(error)


def test_a_stream_ending_without_done_is_an_error(server: FakeServer) -> None:
    server.plan = ["no_done"]

    pieces, error = consume(make(server.base_url))

    assert pieces == PIECES[:1]
    assert "no [DONE]" in str(error)


def test_a_server_that_ignores_stream_true_still_answers(server: FakeServer) -> None:
    server.plan = ["json"]

    assert generate(make(server.base_url), REQUEST) == "".join(PIECES)


def test_a_long_error_body_is_truncated_and_4xx_not_retried(server: FakeServer) -> None:
    server.plan = ["big_400", "ok"]

    _, error = consume(make(server.base_url))

    assert len(server.received) == 1
    message = str(error)
    assert "HTTP 400" in message and "context too long" in message
    assert len(message) < 800


@pytest.mark.parametrize("behaviour", ["401", "500", "429", "big_400", "malformed", "no_done"])
def test_the_api_key_never_appears_in_an_error(server: FakeServer, behaviour: str) -> None:
    server.plan = [behaviour]
    host = f"user:{API_KEY}@127.0.0.1:{server.port}"

    _, error = consume(make(f"http://{host}", api_key=API_KEY, retries=0))

    assert API_KEY not in str(error)
    assert API_KEY not in repr(make(f"http://{host}", api_key=API_KEY))
