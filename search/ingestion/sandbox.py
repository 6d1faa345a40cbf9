"""Parse untrusted files in a child process with a memory and a wall-time limit.

A hostile or merely huge upload (a zip bomb, a PDF of 50,000 pages, a file that sends a
parser into a loop) must fail that file with a reason, never take the worker down with it.
So ``parse_untrusted`` hands the bytes to one long-lived child process per worker process
(``search.ingestion.parsing.child``, protocol described there), which limits its own address
space (``KMS_PARSE_MEMORY_MB``) and CPU time; the parent waits for the answer with a deadline
(``KMS_PARSE_TIMEOUT_SECONDS``) and SIGKILLs a child that misses it. The child is started
lazily, reused across files and replaced after it dies, after any failure that leaves its
state in doubt (memory exhausted, an unexpected exception, a malformed answer) and once its
peak memory passed half its limit, so one big file does not pin that memory for the rest.

It is a ``subprocess`` child rather than ``multiprocessing``, because Celery's prefork pool
processes are daemonic and may not have children of their own that way; and the child sets
its own limits (no ``preexec_fn``, which is unsafe when the parent has threads). Its answer is
JSON, so a compromised child cannot run code here. Calls are serialised by a lock: one file
at a time per process. ``KMS_EXTRA_PARSERS`` (see the child module) adds custom formats.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from search.ingestion.parsing import Block, Page, ParsedDocument, ParseError, ParseLimits
from search.ingestion.parsing.child import FRAME, MAX_HEADER_BYTES
from search.ingestion.parsing.limits import text_too_long
from search.ingestion.parsing.types import BlockKind

__all__ = [
    "ParseError",
    "ParseLimits",
    "SandboxStatus",
    "SandboxUnavailable",
    "parse_untrusted",
    "status",
    "stop",
]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # holds the ``search`` package the child imports
CHILD_MODULE = "search.ingestion.parsing.child"
START_TIMEOUT_SECONDS = 60.0
RESTART_AFTER_RSS_FRACTION = 0.5  # of memory_mb: a child that peaked past it is replaced
_IO_CHUNK = 1 << 20
_KINDS = frozenset(get_args(BlockKind))


class SandboxUnavailable(RuntimeError):
    """The parser process cannot be started: a server problem, not the file's fault."""


@dataclass(frozen=True)
class SandboxStatus:
    pid: int | None  # of the running child, None when none runs
    peak_rss_kb: int | None  # the child's peak resident memory after its last file
    files: int  # parsed (or failed) in this process
    starts: int  # children started in this process


def parse_untrusted(
    data: bytes, filename: str, media_type: str | None = None, limits: ParseLimits | None = None
) -> tuple[ParsedDocument, str]:
    """(parsed document, media type used); raises ParseError whose message is shown to users.

    ``media_type`` is treated as in ``parse``: trusted only when it is a supported type.
    Raises ``SandboxUnavailable`` when no parser process can be started at all.
    """
    limits = limits or ParseLimits.from_settings()
    if not data:
        raise ParseError("The file is empty.")
    return _SANDBOX.parse(data, filename, media_type, limits)


def status() -> SandboxStatus:
    return _SANDBOX.status()


def stop() -> None:
    """Stop this process's parser child (the next file starts a new one)."""
    _SANDBOX.stop()


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class _Malformed(Exception):
    pass


class _Child:
    """One running parser process and its pipes."""

    def __init__(self, limits: ParseLimits) -> None:
        self.memory_mb = limits.memory_mb
        self.peak_rss_kb: int | None = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", CHILD_MODULE, "--memory-mb", str(limits.memory_mb),
            "--cpu-seconds", str(int(START_TIMEOUT_SECONDS + limits.timeout_seconds)),
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env,
                close_fds=True, bufsize=0,
            )  # fmt: skip
        except OSError as err:
            raise SandboxUnavailable(f"The parser process cannot be started ({err}).") from err
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests = self.process.stdin
        self.answers = self.process.stdout
        os.set_blocking(self.requests.fileno(), False)
        self.pid = self.process.pid
        try:
            ready = self._json(self.exchange([], START_TIMEOUT_SECONDS, MAX_HEADER_BYTES))
            if ready.get("ready") is not True:
                raise _Malformed("no ready message")
        except (_Timeout, _Died, _Malformed) as err:
            how = self.kill()
            raise SandboxUnavailable(
                f"The parser process did not start ({how or err}); if it ran out of memory, "
                f"raise KMS_PARSE_MEMORY_MB (now {limits.memory_mb:,} MiB)."
            ) from err

    def parse(
        self, data: bytes, filename: str, media_type: str | None, limits: ParseLimits
    ) -> dict[str, Any]:
        header = json.dumps(
            {"filename": filename, "media_type": media_type, "limits": limits.to_json()}
        ).encode()
        chunks = [FRAME.pack(len(header)), header, FRAME.pack(len(data)), data]
        answer = self._json(
            self.exchange(chunks, limits.timeout_seconds, (1 << 20) + 16 * limits.max_text_chars)
        )
        rss = answer.get("max_rss_kb")
        self.peak_rss_kb = rss if isinstance(rss, int) else None
        return answer

    def exchange(self, chunks: list[bytes], timeout: float, limit: int) -> memoryview:
        """Write ``chunks`` while reading one answer frame, both before the deadline.

        Writing and reading together means neither side can block on a full pipe, whatever
        the sizes; the child starts answering only after it has read the whole request.
        """
        deadline = time.monotonic() + timeout
        pending = deque(memoryview(chunk) for chunk in chunks if chunk)
        answer = bytearray()
        length: int | None = None
        with selectors.DefaultSelector() as selector:
            if pending:
                selector.register(self.requests, selectors.EVENT_WRITE)
            selector.register(self.answers, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Timeout
                for key, _ in selector.select(remaining):
                    if key.fileobj is self.requests:
                        if not self._write(pending):
                            selector.unregister(self.requests)
                        continue
                    piece = os.read(self.answers.fileno(), _IO_CHUNK)
                    if not piece:
                        raise _Died
                    answer += piece
                    if length is None and len(answer) >= FRAME.size:
                        (length,) = FRAME.unpack_from(answer)
                        if length > limit:
                            raise _Malformed(f"an answer of {length:,} bytes")
                    if length is not None and len(answer) >= FRAME.size + length:
                        if len(answer) > FRAME.size + length or pending:
                            raise _Malformed("data beyond the answer")
                        return memoryview(answer)[FRAME.size :]

    def _write(self, pending: deque[memoryview]) -> bool:
        """Write what the pipe takes; False once all is written or the child stopped reading."""
        try:
            while pending:
                written = os.write(self.requests.fileno(), pending[0][:_IO_CHUNK])
                pending[0] = pending[0][written:]
                if not pending[0]:
                    pending.popleft()
        except BlockingIOError:
            return True
        except (BrokenPipeError, ConnectionResetError):
            pending.clear()  # it died: reading its end of the answers pipe tells how
        return False

    @staticmethod
    def _json(payload: memoryview) -> dict[str, Any]:
        try:
            value = json.loads(str(payload, "utf-8", "surrogatepass"))
        except ValueError as err:
            raise _Malformed(f"invalid JSON ({err})") from err
        if not isinstance(value, dict):
            raise _Malformed("not a JSON object")
        return value

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> str | None:
        """SIGKILL (if still running) and reap; how it ended, or None if it was still running."""
        ended = self.process.poll()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self._close()
        return _how(ended) if ended is not None else None

    def ended(self) -> str:
        """How a child that stopped talking ended (it is killed if it lingers)."""
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close()
        return _how(self.process.returncode)

    def close_inherited(self) -> None:
        """In a forked copy of the owner: drop the pipes without touching the process."""
        self._close()
        self.process.returncode = 0  # not ours to wait for

    def _close(self) -> None:
        for stream in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                stream.close()


class _Sandbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._files = 0
        self._starts = 0
        self._peak_rss_kb: int | None = None

    def parse(
        self, data: bytes, filename: str, media_type: str | None, limits: ParseLimits
    ) -> tuple[ParsedDocument, str]:
        with self._lock:
            self._files += 1
            child = self._running(limits)
            answer: dict[str, Any] = {}
            try:
                answer = child.parse(data, filename, media_type, limits)
                self._peak_rss_kb = child.peak_rss_kb
                result = self._result(answer, limits)
            except _Timeout:
                self._retire(child)
                raise ParseError(
                    f"Parsing stopped after {limits.timeout_seconds:g} s "
                    "(KMS_PARSE_TIMEOUT_SECONDS); the file is too large or too complex to "
                    "parse in time."
                ) from None
            except _Died:
                how = child.ended()
                self._retire(child)
                logger.warning("The parser child %s stopped (%s) on %r", child.pid, how, filename)
                raise ParseError(
                    f"The parser stopped ({how}) while reading this file; the file may be "
                    "malformed or need more memory than KMS_PARSE_MEMORY_MB "
                    f"({limits.memory_mb:,} MiB) allows."
                ) from None
            except _Malformed as err:
                self._retire(child)
                logger.error("The parser child %s answered badly: %s", child.pid, err)
                raise ParseError(
                    "The parser returned a malformed result for this file; it was stopped."
                ) from None
            except ParseError:
                if answer.get("kind") != "parse" or self._oversized(child):
                    self._retire(child)  # memory exhausted, an unexpected error: in doubt
                raise
            except BaseException:  # e.g. Celery's soft time limit mid-exchange: pipes in doubt
                self._retire(child)
                raise
            if self._oversized(child):
                self._retire(child)
            return result

    def status(self) -> SandboxStatus:
        child = self._child
        return SandboxStatus(
            pid=child.pid if child and child.alive() else None,
            peak_rss_kb=self._peak_rss_kb,
            files=self._files,
            starts=self._starts,
        )

    def stop(self) -> None:
        with self._lock:
            if self._child is not None:
                self._retire(self._child)

    def after_fork(self) -> None:
        """A forked process has its own lock and starts its own child when it needs one."""
        self._lock = threading.Lock()
        if self._child is not None:
            self._child.close_inherited()
            self._child = None

    def _running(self, limits: ParseLimits) -> _Child:
        child = self._child
        if child is not None and (child.memory_mb != limits.memory_mb or not child.alive()):
            self._retire(child)
            child = None
        if child is None:
            self._starts += 1
            child = self._child = _Child(limits)
        return child

    @staticmethod
    def _oversized(child: _Child) -> bool:
        threshold = child.memory_mb * 1024 * RESTART_AFTER_RSS_FRACTION
        if child.peak_rss_kb is None or child.peak_rss_kb <= threshold:
            return False
        logger.info("Replacing the parser child %s (peak %s KiB)", child.pid, child.peak_rss_kb)
        return True

    def _retire(self, child: _Child) -> None:
        """Stop ``child`` so the next file gets a fresh one."""
        if self._child is child:
            self._child = None
        child.kill()

    @staticmethod
    def _result(answer: dict[str, Any], limits: ParseLimits) -> tuple[ParsedDocument, str]:
        if answer.get("ok") is not True:
            kind, message = answer.get("kind"), answer.get("message")
            if kind == "parse" and isinstance(message, str):
                raise ParseError(message)
            if kind == "memory":
                raise ParseError(
                    f"The file needs more than {limits.memory_mb:,} MiB of memory to parse "
                    "(KMS_PARSE_MEMORY_MB); it is too large or malformed."
                )
            if kind == "unexpected" and isinstance(message, str):
                raise ParseError(
                    f"The parser failed unexpectedly ({message}); the file may be damaged or "
                    "use features this server does not support."
                )
            raise _Malformed(f"an unknown answer kind {kind!r}")
        return _document(answer, limits)


def _document(answer: dict[str, Any], limits: ParseLimits) -> tuple[ParsedDocument, str]:
    """Rebuild the parse result, checking every field: the child is not trusted either."""
    text, title, media_type = answer.get("text"), answer.get("title"), answer.get("media_type")
    if not isinstance(text, str) or not isinstance(media_type, str) or not media_type:
        raise _Malformed("text or media type missing")
    if title is not None and not isinstance(title, str):
        raise _Malformed("title is not a string")
    if len(text) > limits.max_text_chars:
        raise ParseError(text_too_long(len(text), limits))
    try:
        blocks = [Block(*_ints(start, end), kind, *_ints(level)) for start, end, kind, level
                  in answer["blocks"]]  # fmt: skip
        pages = [Page(*_ints(number, start, end)) for number, start, end in answer["pages"]]
    except (KeyError, TypeError, ValueError) as err:
        raise _Malformed(f"blocks or pages ({err})") from err
    length = len(text)
    if any(not 0 <= b.start <= b.end <= length or b.kind not in _KINDS for b in blocks) or any(
        not 0 <= p.start <= p.end <= length for p in pages
    ):
        raise _Malformed("a block or page outside the text")
    return ParsedDocument(text=text, blocks=blocks, pages=pages, title=title), media_type


def _ints(*values: Any) -> tuple[int, ...]:
    if not all(type(value) is int for value in values):
        raise ValueError("not an integer")
    return values


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-returncode}, {name}"
    return f"exited with status {returncode}"


_SANDBOX = _Sandbox()
os.register_at_fork(after_in_child=_SANDBOX.after_fork)
atexit.register(_SANDBOX.stop)
