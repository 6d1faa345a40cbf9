"""The parser child process: parses untrusted files under its own memory and CPU limits.

Started by ``search.ingestion.sandbox`` as ``python -m search.ingestion.parsing.child
--memory-mb N --cpu-seconds S``; it never imports Django. First thing, it limits its own
address space (``RLIMIT_AS``) and CPU time, then answers requests until its stdin closes.

Protocol (stdin/stdout pipes): every frame is an 8-byte big-endian length and the payload.

* child -> parent, once at start: JSON ``{"ready": true, "pid": ...}``;
* parent -> child, per file: a JSON header ``{"filename", "media_type", "limits"}``, then the
  file's bytes as a second frame;
* child -> parent, per file: JSON, either ``{"ok": true, "media_type", "text", "title",
  "blocks": [[start, end, kind, level], ...], "pages": [[number, start, end], ...]}`` or
  ``{"ok": false, "kind": "parse" | "memory" | "unexpected", "message"}``; both carry
  ``max_rss_kb``, the child's peak resident memory so far (KiB).

The answer is JSON, never pickle, so a parser compromised by a hostile file cannot run code
in the worker. After a ``MemoryError`` the child answers and exits: its heap is in doubt.

Extra parsers (custom formats, and the hostile parsers of the tests) come from the
environment variable ``KMS_EXTRA_PARSERS``: comma-separated ``extension=module:function``,
e.g. ``.hostile=tests.hostile_parsers:allocate``. A file whose name ends with the extension
(case-insensitive) is parsed by ``function(data: bytes) -> ParsedDocument``, whatever its
media type; the result must pass the same checks (some text, ``max_text_chars``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

# Importing the package has loaded every parser already (``-m`` imports it first); that is
# trusted code. The limits apply to the whole address space, mapped before or after.
from search.ingestion.parsing import (
    ParsedDocument,
    ParseError,
    ParseLimits,
    check_document,
    normalise_media_type,
    parse_with_media_type,
)

FRAME = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 20
MAX_DATA_BYTES = 4 << 30
EXTRA_PARSERS_ENV = "KMS_EXTRA_PARSERS"
EXTRA_MEDIA_TYPE = "application/octet-stream"  # for a custom format named by no media type
_MESSAGE_CHARS = 500  # of an unexpected exception's text, in the error shown to users


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    _limit_resources(arguments.memory_mb, arguments.cpu_seconds)
    requests, answers = _protocol_streams()
    _watch_parent(os.getppid())
    _configure_logging()
    _write_json(answers, {"ready": True, "pid": os.getpid()})
    extra = _extra_parsers(os.environ.get(EXTRA_PARSERS_ENV, ""))
    while True:
        header = _read_frame(requests, MAX_HEADER_BYTES)
        if header is None:
            return 0  # the parent closed the pipe: it is done with us
        request = json.loads(header)
        data = _read_frame(requests, MAX_DATA_BYTES)
        if data is None:
            return 0
        limits = ParseLimits.from_json(request.get("limits") or {})
        _allow_cpu(limits.timeout_seconds)
        answer = _answer(data, str(request.get("filename") or ""), request.get("media_type"),
                         limits, extra)  # fmt: skip
        del data
        try:
            _write_json(answers, {**answer, "max_rss_kb": _max_rss_kb()})
        except MemoryError:
            answer = {"ok": False, "kind": "memory", "message": "encoding the result"}
            _write_json(answers, {**answer, "max_rss_kb": _max_rss_kb()})
        if answer.get("kind") == "memory":
            return 3


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    return parser.parse_args(argv)


def _limit_resources(memory_mb: int, cpu_seconds: int) -> None:
    """Hard address-space limit (cannot be raised again); CPU soft limit moved per file."""
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files of hostile input
    _set_cpu_limit(cpu_seconds)


def _set_cpu_limit(seconds: float) -> None:
    """A backstop behind the parent's wall-time limit, for a child whose parent is gone."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    used = time.process_time()
    soft = int(used + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _allow_cpu(timeout_seconds: float) -> None:
    _set_cpu_limit(timeout_seconds + 10)


def _protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """Private copies of the pipes; fds 0 and 1 become /dev/null and stderr.

    A library that prints (or reads stdin) then cannot corrupt the protocol.
    """
    requests = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    answers = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return requests, answers


def _watch_parent(parent: int) -> None:
    """Exit when the parent dies, even mid-parse (a hung parser never reads stdin's EOF)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.stack_size(256 * 1024)  # its stack counts against RLIMIT_AS
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _configure_logging() -> None:
    """To stderr, which the parent's log collects; pypdf's recoverable-defect noise is kept out."""
    level = logging.getLevelName(os.environ.get("KMS_LOG_LEVEL", "INFO").upper())
    logging.basicConfig(
        level=level if isinstance(level, int) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [parser %(process)d]: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pypdf").setLevel(logging.ERROR)


def _read_frame(stream: BinaryIO, limit: int) -> bytes | None:
    """One frame, or None at end of input (also a frame cut short: the parent went away)."""
    prefix = stream.read(FRAME.size)
    if len(prefix) < FRAME.size:
        return None
    (length,) = FRAME.unpack(prefix)
    if length > limit:
        raise SystemExit(f"frame of {length} bytes exceeds {limit}")
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _write_json(stream: BinaryIO, value: dict[str, Any]) -> None:
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    encoded = payload.encode("utf-8", "surrogatepass")
    del payload
    stream.write(FRAME.pack(len(encoded)))
    stream.write(encoded)
    stream.flush()


def _answer(
    data: bytes, filename: str, media_type: Any, limits: ParseLimits, extra: dict[str, str]
) -> dict[str, Any]:
    """Parse one file; every failure becomes an answer, so one file never ends the batch."""
    try:
        document, used = _parse(data, filename, media_type, limits, extra)
        return {
            "ok": True,
            "media_type": used,
            "text": document.text,
            "title": document.title,
            "blocks": [[b.start, b.end, b.kind, b.level] for b in document.blocks],
            "pages": [[p.number, p.start, p.end] for p in document.pages],
        }
    except MemoryError:
        pass  # answered below, once the frames holding the big objects are gone
    except ParseError as err:
        return {"ok": False, "kind": "parse", "message": str(err)}
    except BaseException as err:  # a parser bug or a hostile file; SystemExit too
        text = f"{type(err).__name__}: {err}"
        if len(text) > _MESSAGE_CHARS:
            text = text[:_MESSAGE_CHARS] + "…"
        return {"ok": False, "kind": "unexpected", "message": text}
    return {"ok": False, "kind": "memory", "message": "parsing"}


def _parse(
    data: bytes, filename: str, media_type: Any, limits: ParseLimits, extra: dict[str, str]
) -> tuple[ParsedDocument, str]:
    media_type = media_type if isinstance(media_type, str) else None
    name = filename.lower()
    for extension, target in extra.items():
        if name.endswith(extension):
            if not data:
                raise ParseError("The file is empty.")
            document = _load(target)(data)
            return check_document(document, filename, limits), (
                normalise_media_type(media_type) or EXTRA_MEDIA_TYPE
            )
    return parse_with_media_type(data, filename, media_type, limits)


def _extra_parsers(spec: str) -> dict[str, str]:
    """``".ext=module:function,..."`` -> {".ext": "module:function"}; bad entries are logged."""
    parsers: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        extension, _, target = entry.partition("=")
        if not extension.strip() or ":" not in target:
            logging.getLogger(__name__).error("Ignoring %s entry %r", EXTRA_PARSERS_ENV, entry)
            continue
        parsers[extension.strip().lower()] = target.strip()
    return parsers


def _load(target: str) -> Callable[[bytes], ParsedDocument]:
    """Imported when first used, so a broken entry fails its files, not the child's start."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _max_rss_kb() -> int:
    """Peak resident memory of this process image (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so in a
    worker holding a model it would report the worker's size, not the parser's.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    sys.exit(main())
