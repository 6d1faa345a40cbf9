"""The parser sandbox: hostile files fail alone, with a reason, and the worker is never hurt.

Real child processes throughout; hostile parsers come from ``tests/hostile_parsers.py``
through KMS_EXTRA_PARSERS, hostile files are built in memory by the same module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from search.ingestion import sandbox
from search.ingestion.parsing import PDF, TEXT, ParseError
from search.ingestion.parsing.child import EXTRA_MEDIA_TYPE, EXTRA_PARSERS_ENV
from search.ingestion.sandbox import ParseLimits, parse_untrusted
from tests.hostile_parsers import (
    EXTRA_PARSERS,
    docx_declaring_gib,
    docx_understating,
    docx_with_ratio,
    kill_parent,
    pdf_inflating,
    pdf_of_pages,
    raw_pdf,
)

SMALL = ParseLimits(memory_mb=300, timeout_seconds=20)
QUICK = ParseLimits(memory_mb=300, timeout_seconds=1.5)
FRESH_CHILD_KB = 150_000  # a child that parsed nothing much stays far below this


@pytest.fixture(scope="module", autouse=True)
def _hostile_parsers() -> Iterator[None]:
    """Children of this module know the hostile parsers; others never see them."""
    previous = os.environ.get(EXTRA_PARSERS_ENV)
    os.environ[EXTRA_PARSERS_ENV] = EXTRA_PARSERS
    sandbox.stop()
    yield
    sandbox.stop()
    if previous is None:
        del os.environ[EXTRA_PARSERS_ENV]
    else:
        os.environ[EXTRA_PARSERS_ENV] = previous


def hello_pdf() -> bytes:
    content = b"BT /F1 12 Tf 72 700 Td (Hello from a PDF) Tj ET"
    return raw_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        ]
    )


def assert_works(limits: ParseLimits = SMALL) -> None:
    """The sandbox still parses an ordinary file (in a new child if the last one was dropped)."""
    document, media_type = parse_untrusted(b"Still fine.", "after.txt", limits=limits)
    assert (document.text, media_type) == ("Still fine.", TEXT)


def timed(data: bytes, filename: str, limits: ParseLimits = SMALL) -> tuple[str, float]:
    """The ParseError message for this file and how long the sandbox took to give it."""
    started = time.monotonic()
    with pytest.raises(ParseError) as caught:
        parse_untrusted(data, filename, limits=limits)
    return str(caught.value), time.monotonic() - started


# --- the child process --------------------------------------------------------------------------


def test_child_is_started_once_and_reused() -> None:
    assert_works()
    first = sandbox.status()
    assert first.pid is not None
    document, media_type = parse_untrusted(b"custom", "a.plain", limits=SMALL)
    assert (document.text, document.title, media_type) == ("custom", "Plain", EXTRA_MEDIA_TYPE)
    assert sandbox.status().pid == first.pid
    assert sandbox.status().starts == first.starts


def test_child_limits_itself_and_never_imports_django() -> None:
    document, _ = parse_untrusted(b"x", "self.inspect", limits=SMALL)
    facts = json.loads(document.text)
    assert facts["address_space"] == SMALL.memory_mb << 20
    assert 0 < facts["cpu_seconds"] <= time.process_time() + SMALL.timeout_seconds + 60
    assert facts["django"] is False
    assert facts["stdin"] == os.devnull


def test_large_payloads_in_and_out_do_not_deadlock() -> None:
    data = bytes(200 << 20)
    document, _ = parse_untrusted(data, "big.size")
    assert document.text == f"{len(data)} bytes, {len(data)} zeros"
    document, _ = parse_untrusted(b"5000000", "big.large")
    assert len(document.text) > 4_900_000
    assert len(document.blocks) == 5000


def test_stdout_of_a_parser_does_not_corrupt_the_protocol() -> None:
    document, _ = parse_untrusted(b"quiet result", "noisy.chatty", limits=SMALL)
    assert document.text == "quiet result"
    assert_works()


def test_a_child_grown_past_half_its_limit_is_replaced() -> None:
    assert_works()
    pid = sandbox.status().pid
    document, _ = parse_untrusted(b"120", "leak.grow", limits=SMALL)
    assert document.text == "grown"
    assert sandbox.status().peak_rss_kb > SMALL.memory_mb * 1024 // 2
    assert sandbox.status().pid is None, "replaced before the next file"
    assert_works()
    assert sandbox.status().pid not in (None, pid)


def test_limits_come_from_settings(settings) -> None:
    settings.KMS_PARSE_MEMORY_MB = 512
    settings.KMS_PDF_MAX_PAGES = 7
    settings.KMS_MAX_TEXT_CHARS = 1000
    limits = ParseLimits.from_settings()
    assert (limits.memory_mb, limits.pdf_max_pages, limits.max_text_chars) == (512, 7, 1000)
    assert limits.timeout_seconds == ParseLimits().timeout_seconds
    message, _ = timed(pdf_of_pages(8), "eight.pdf", limits=ParseLimits.from_settings())
    assert "The PDF has 8 pages; the limit is 7 (KMS_PDF_MAX_PAGES)" in message


# --- hostile files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(
            lambda: docx_declaring_gib(12),
            r"would unpack to 12,289 MiB; the limit is 1,024 MiB \(KMS_ZIP_MAX_UNCOMPRESSED_MB\)",
            id="declares-12-GiB",
        ),
        pytest.param(
            docx_with_ratio,
            r"'word/media/zeros\.bin' is compressed 1,029 to 1 \(50 MiB\); the limit is 200 to 1 "
            r"\(KMS_ZIP_MAX_RATIO\)",
            id="ratio-1000",
        ),
        pytest.param(
            docx_understating,
            r"'word/document\.xml' unpacks to more than its declared [\d,]+ bytes",
            id="understated-size",
        ),
    ],
)
def test_docx_zip_bombs_fail_fast_without_memory_growth(build, reason: str) -> None:
    data = build()
    sandbox.stop()  # a fresh child, so its peak memory is this file's
    message, _ = timed(data, "bomb.docx", limits=ParseLimits())
    assert re.search(reason, message), message
    assert sandbox.status().peak_rss_kb < FRESH_CHILD_KB
    assert sandbox.status().pid is not None, "a refused file leaves the child running"


@pytest.mark.parametrize(
    ("declared", "reason"),
    [
        (None, r"The PDF has 50,000 pages; the limit is 5,000 \(KMS_PDF_MAX_PAGES\)"),
        (1, r"The PDF has more than 5,000 pages; the limit is 5,000 \(KMS_PDF_MAX_PAGES\)"),
    ],
    ids=["honest-count", "lying-count"],
)
def test_pdf_of_50000_pages_fails_on_the_page_cap(declared: int | None, reason: str) -> None:
    data = pdf_of_pages(50_000, declared=declared)
    message, _ = timed(data, "pages.pdf", limits=ParseLimits())
    assert re.search(reason, message), message


def test_memory_hog_fails_with_the_memory_reason_and_the_next_file_parses() -> None:
    assert_works()
    starts = sandbox.status().starts
    message, _ = timed(b"x", "hog.allocate")
    assert "needs more than 300 MiB of memory to parse (KMS_PARSE_MEMORY_MB)" in message
    assert_works()
    assert sandbox.status().starts == starts + 1, "the child was replaced"


def test_real_pdf_that_inflates_past_the_memory_limit() -> None:
    message, _ = timed(pdf_inflating(streams=3, mib=60), "inflating.pdf")
    assert "needs more than 300 MiB of memory to parse (KMS_PARSE_MEMORY_MB)" in message
    document, media_type = parse_untrusted(hello_pdf(), "hello.pdf", limits=SMALL)
    assert (document.text, media_type) == ("Hello from a PDF", PDF)


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("bug.explode", "The parser failed unexpectedly (KeyError: 'no such part')"),
        ("exit.leave", "The parser failed unexpectedly (SystemExit: leaving)"),
    ],
)
def test_unexpected_exception_fails_only_that_file(filename: str, reason: str) -> None:
    results = []
    for name in ("one.txt", filename, "two.txt"):
        try:
            results.append(parse_untrusted(name.encode(), name, limits=SMALL)[0].text)
        except ParseError as err:
            results.append(str(err))
    assert results[0] == "one.txt" and results[2] == "two.txt"
    assert results[1].startswith(reason)


@pytest.mark.parametrize("filename", ["sleeps.hang", "loops.spin"])
def test_parser_that_never_returns_hits_the_timeout(filename: str) -> None:
    message, seconds = timed(b"x", filename, limits=QUICK)
    assert message.startswith("Parsing stopped after 1.5 s (KMS_PARSE_TIMEOUT_SECONDS)")
    assert 1.5 <= seconds < 4
    assert_works(QUICK)


def test_child_killed_from_outside_mid_parse() -> None:
    assert_works()
    pid = sandbox.status().pid
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    message, _ = timed(b"x", "victim.hang")
    assert message.startswith("The parser stopped (killed by signal 9, SIGKILL) while reading")
    assert_works()


def test_child_killed_while_idle_is_replaced_silently() -> None:
    assert_works()
    pid = sandbox.status().pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while sandbox.status().pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_works()
    assert sandbox.status().pid not in (None, pid)


def test_crashing_parser_names_the_signal() -> None:
    message, _ = timed(b"x", "crash.abort")
    assert message.startswith("The parser stopped (killed by signal 6, SIGABRT)")
    assert_works()


def test_text_longer_than_the_limit_fails() -> None:
    limits = ParseLimits(memory_mb=300, max_text_chars=1_000_000)
    message, _ = timed(b"2000000", "long.large", limits=limits)
    assert "the limit is 1,000,000 (KMS_MAX_TEXT_CHARS)" in message
    message, _ = timed(b"word " * 300_000, "long.txt", limits=limits)
    assert message == (
        "The extracted text has 1,499,999 characters; the limit is 1,000,000 (KMS_MAX_TEXT_CHARS)."
    )


def test_kill_parent_is_available_to_worker_tests() -> None:
    assert callable(kill_parent)  # running it here would kill pytest
