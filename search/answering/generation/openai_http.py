"""A generator that talks to any server speaking OpenAI's ``/v1/chat/completions`` protocol.

vLLM, Ollama, llama.cpp's ``llama-server``, LM Studio and hosted APIs all accept the same
streaming request, so one small client covers them. The client is defensive because the
server is another process on another machine: every wait is bounded, transient failures are
retried only while nothing has been shown to the user yet, and every error says which endpoint
and model failed and what to check.

Base-URL rule: ``base_url`` is the server root with or without the ``/v1`` suffix. Trailing
slashes are ignored; if the path does not already end in ``/v1``, ``/v1`` is appended; then
``/chat/completions`` is appended. So ``http://host:8000``, ``http://host:8000/`` and
``http://host:8000/v1/`` all mean ``http://host:8000/v1/chat/completions``, and
``https://api.example.com/openai/v1`` means ``https://api.example.com/openai/v1/chat/completions``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .base import GenerationRequest, GeneratorError

BASE_URL_SETTING = "KMS_OPENAI_BASE_URL"
MODEL_SETTING = "KMS_OPENAI_MODEL"
API_KEY_SETTING = "KMS_OPENAI_API_KEY"

ERROR_BODY_BYTES = 4096  # read at most this much of an error response (it may be huge)
ERROR_BODY_CHARS = 300  # and show at most this much of it
RETRY_AFTER_CAP = 30.0  # a Retry-After longer than this (or than the timeout) is shortened


def chat_completions_url(base_url: str) -> str:
    """The endpoint for ``base_url`` following the module's base-URL rule."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GeneratorError(
            f"The generator base URL {_without_userinfo(base_url)!r} is not an http(s) URL "
            f"with a host: set {BASE_URL_SETTING} to e.g. http://127.0.0.1:8000/v1."
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path + "/chat/completions", parts.query, ""))


def _without_userinfo(url: str) -> str:
    """The URL without ``user:password@`` so credentials in it never reach a message."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


class _Failure(Exception):
    """One attempt failed; the retry loop decides whether to try again."""

    def __init__(
        self, what: str, hint: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.retryable = retryable
        self.retry_after = retry_after


class OpenAICompatibleGenerator:
    """Streams a chat completion from an OpenAI-compatible server.

    ``timeout`` bounds both the longest silence of the server (before the answer starts and
    between chunks) and the total time of one attempt, so a hanging or trickling server cannot
    hold a request forever; ``connect_timeout`` bounds opening the connection. Up to
    ``retries`` more attempts follow connection errors, timeouts, 429 and 5xx, waiting
    ``backoff * 2**n`` seconds, but only before the first piece of text has been yielded.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.5,
    ) -> None:
        if not model or not model.strip():
            raise GeneratorError(
                f"No model name given for the generator endpoint {_without_userinfo(base_url)}: "
                f"set {MODEL_SETTING} to a model the server serves."
            )
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be positive")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.url = chat_completions_url(base_url)
        self.model = model.strip()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self._api_key = api_key or None
        self._shown_url = _without_userinfo(self.url)

    def __repr__(self) -> str:
        return f"OpenAICompatibleGenerator(url={self._shown_url!r}, model={self.model!r})"

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as the server produces them; raises GeneratorError on any failure."""
        payload = self._payload(request)
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeouts = httpx.Timeout(self.timeout, connect=self.connect_timeout)
        attempts = self.retries + 1
        with httpx.Client(timeout=timeouts, follow_redirects=False) as client:
            for attempt in range(attempts):
                started = False
                try:
                    for piece in self._attempt(client, payload, headers):
                        started = True
                        yield piece
                    return
                except _Failure as failure:
                    if started or not failure.retryable or attempt == attempts - 1:
                        note = f" (gave up after {attempt + 1} attempts)" if attempt else ""
                        raise self._error(failure.what + note, failure.hint) from None
                    delay = self.backoff * 2**attempt
                    if failure.retry_after is not None:
                        delay = max(delay, min(failure.retry_after, RETRY_AFTER_CAP, self.timeout))
                    time.sleep(delay)

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "stream": True,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    def _attempt(
        self, client: httpx.Client, payload: dict[str, Any], headers: dict[str, str]
    ) -> Iterator[str]:
        """One request; raises _Failure, whose ``retryable`` the caller honours only pre-output."""
        deadline = time.monotonic() + self.timeout
        yielded = False
        try:
            with client.stream("POST", self.url, json=payload, headers=headers) as response:
                if response.status_code != 200:
                    raise self._http_failure(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    yield from self._whole_answer(response)
                    return
                for piece in self._events(response, deadline):
                    yielded = True
                    yield piece
        except httpx.ConnectTimeout:
            raise _Failure(
                f"did not accept a connection within {self.connect_timeout:g} s",
                f"is the server running and reachable? Check {BASE_URL_SETTING}.",
                retryable=True,
            ) from None
        except httpx.ConnectError as exc:
            raise _Failure(
                f"refused or failed the connection ({self._reason(exc)})",
                f"is the server running? Check {BASE_URL_SETTING}.",
                retryable=True,
            ) from None
        except httpx.TimeoutException:
            if yielded:
                raise _Failure(
                    f"stopped sending for more than {self.timeout:g} s mid-answer",
                    "is the server overloaded or stuck? Raise the timeout or check its logs.",
                    retryable=False,
                ) from None
            raise _Failure(
                f"did not answer within {self.timeout:g} s",
                f"is the server running and not overloaded? Check {BASE_URL_SETTING}.",
                retryable=True,
            ) from None
        except httpx.TransportError as exc:
            raise _Failure(
                f"dropped the connection ({self._reason(exc)})"
                + (" in the middle of the answer" if yielded else ""),
                "check the server's logs; it may have crashed or restarted.",
                retryable=not yielded,
            ) from None
        except httpx.HTTPError as exc:
            raise _Failure(
                f"sent a response that could not be read ({self._reason(exc)})",
                "is this an OpenAI-compatible /v1/chat/completions server?",
                retryable=False,
            ) from None

    def _http_failure(self, response: httpx.Response) -> _Failure:
        status = response.status_code
        body = self._error_body(response)
        what = f"answered HTTP {status}" + (f": {body}" if body else "")
        retry_after = None
        if status == 429:
            retry_after = _seconds(response.headers.get("retry-after"))
            hint = "the server is rate limiting; retry later or lower the request rate."
        elif status >= 500:
            hint = "the server failed; check its logs (is the model loaded?)."
        elif status in (401, 403):
            hint = f"the API key was rejected; check {API_KEY_SETTING}."
        elif status == 404:
            hint = f"check {BASE_URL_SETTING} and that {MODEL_SETTING} names a served model."
        else:
            hint = "the server rejected the request; check the model name and its limits."
        retryable = status == 429 or status >= 500
        return _Failure(what, hint, retryable=retryable, retry_after=retry_after)

    def _error_body(self, response: httpx.Response) -> str:
        """The server's explanation, shortened; its ``error.message`` when it sends JSON."""
        raw = b""
        try:
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) >= ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass
        text = raw[:ERROR_BODY_BYTES].decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            text = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        return self._foreign(" ".join(text.split()))

    def _whole_answer(self, response: httpx.Response) -> Iterator[str]:
        """Some servers ignore ``stream: true`` and send one JSON completion; accept that."""
        try:
            data = json.loads(response.read())
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._malformed(response.text) from None
        if not isinstance(content, str):
            raise self._malformed(response.text)
        if content:
            yield content

    def _events(self, response: httpx.Response, deadline: float) -> Iterator[str]:
        """Parse server-sent events: ``data:`` lines, a blank line ends an event."""
        data: list[str] = []
        finished = False
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise _Failure(
                    f"did not finish the answer within {self.timeout:g} s",
                    "raise the timeout or lower max_new_tokens.",
                    retryable=False,
                )
            if line == "":
                if data:
                    piece, done, ended = self._event("\n".join(data))
                    data = []
                    if piece:
                        yield piece
                    finished = finished or ended
                    if done:
                        return
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            elif field not in ("event", "id", "retry"):
                raise self._malformed(line)
        if data:
            piece, done, ended = self._event("\n".join(data))
            if piece:
                yield piece
            finished = finished or ended or done
        if not finished:
            raise _Failure(
                "ended the stream before the answer was finished (no [DONE])",
                "check the server's logs; it may have crashed.",
                retryable=False,
            )

    def _event(self, data: str) -> tuple[str, bool, bool]:
        """(text piece, stream done, a choice finished) for one event's data."""
        if data.strip() == "[DONE]":
            return "", True, True
        try:
            event = json.loads(data)
        except ValueError:
            raise self._malformed(data) from None
        if not isinstance(event, dict):
            raise self._malformed(data)
        if "error" in event:
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise _Failure(
                f"reported an error mid-stream: {self._foreign(str(message))}",
                "check the server's logs and the request limits.",
                retryable=False,
            )
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise self._malformed(data)
        if not choices:
            return "", False, False
        choice = choices[0]
        if not isinstance(choice, dict):
            raise self._malformed(data)
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise self._malformed(data)
        return content or "", False, choice.get("finish_reason") is not None

    def _malformed(self, text: str) -> _Failure:
        return _Failure(
            f"sent a malformed stream event: {self._foreign(text)!r}",
            "is this an OpenAI-compatible /v1/chat/completions server?",
            retryable=False,
        )

    def _error(self, what: str, hint: str) -> GeneratorError:
        return GeneratorError(
            f"The generator endpoint {self._shown_url} (model {self.model}) {what}: {hint}"
        )

    def _reason(self, exc: Exception) -> str:
        return self._foreign(str(exc) or type(exc).__name__)

    def _foreign(self, text: str) -> str:
        """Text from the server or the network, shortened and with the API key masked.

        Servers echo credentials back ("Incorrect API key provided: ..."); masking only
        foreign text keeps our own wording intact even for a short test key.
        """
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text if len(text) <= ERROR_BODY_CHARS else text[:ERROR_BODY_CHARS] + "…"


def _seconds(value: str | None) -> float | None:
    """A numeric Retry-After header in seconds (the HTTP-date form is ignored)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None
