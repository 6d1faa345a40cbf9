"""Hostile files against a real worker: each fails with its reason, the rest of its batch goes
on, and the worker keeps serving.

Each hostile file goes into a batch (one task chain) between two good files. The test prints,
for each, the time from queueing to its failure and the peak resident memory of the worker's
pool processes and of its parser child, sampled every 20 ms.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

import psutil
import pytest
from django.db import transaction

from kms.store.models import DocumentVersion, Domain, Status
from search.ingestion.documents import add_document, queue_processing
from search.ingestion.progress import wait_for_versions
from tests import hostile_parsers
from tests.conftest import OPERATOR

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MEMORY_LIMIT_MB = 512
EXTRA_PARSERS = (".memhog=tests.hostile_parsers:allocate,"
                 ".unexpected=tests.hostile_parsers:explode,"
                 ".killer=tests.hostile_parsers:kill_parent,"
                 ".hang=tests.hostile_parsers:hang")


def real_zip_bomb(gib: int) -> bytes:
    """A DOCX with ``gib`` members that really inflate to 1 GiB of zeros each (about 1 MiB
    compressed each), beside the parts of a real document."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros, crc = bytes(64 << 20), 0
    compressed = bytearray()
    for _ in range(16):
        compressed += deflate.compress(zeros)
        crc = zlib.crc32(zeros, crc)
    compressed += deflate.flush()
    size = 1 << 30
    archive = bytearray(hostile_parsers.small_docx("The bomb's cover page."))
    end = archive.rfind(b"PK\x05\x06")
    entries, directory_size, directory_at = struct.unpack_from("<HII", archive, end + 10)
    directory = bytes(archive[directory_at:directory_at + directory_size])
    del archive[directory_at:]
    for i in range(gib):
        name = f"word/media/zeros{i}.bin".encode()
        offset = len(archive)
        archive += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc,
                               len(compressed), size, len(name), 0) + name + compressed
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                                 len(compressed), size, len(name), 0, 0, 0, 0, 0,
                                 offset) + name
    at = len(archive)
    archive += directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries + gib,
                                       entries + gib, len(directory), at, 0)
    return bytes(archive)


@dataclass
class Peaks:
    """Peak RSS of the worker's pool processes and of the parser children below them."""

    pool_mb: float = 0.0
    parser_mb: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, main_pid: int) -> None:
        while not self.stop.is_set():
            try:
                pool = psutil.Process(main_pid).children()
            except psutil.NoSuchProcess:
                return
            for process in pool:
                try:
                    self.pool_mb = max(self.pool_mb, process.memory_info().rss / 2**20)
                    for child in process.children():
                        self.parser_mb = max(self.parser_mb, child.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)


@dataclass
class Batch:
    goods: list[DocumentVersion]
    bad: DocumentVersion
    seconds_to_failure: float
    peaks: Peaks


def good_file(domain: Domain, name: str):
    return add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                        content=f"# {name}\n\nEvery ward checks {name} daily.\n".encode(),
                        queue=False)


def run_batch(domain: Domain, worker, name: str, content: bytes) -> Batch:
    """One task chain: a good file, the hostile one, another good file."""
    with transaction.atomic():
        before = good_file(domain, f"before-{name}")
        bad = add_document(domain, uploader=OPERATOR, source=name, filename=name,
                           content=content, queue=False)
        after = good_file(domain, f"after-{name}")
        goods = [before.version_id, after.version_id]
        queue_processing([before.version_id, bad.version_id, after.version_id])
    peaks = Peaks()
    sampler = threading.Thread(target=peaks.sample, args=(worker.process.pid,), daemon=True)
    started = time.monotonic()
    sampler.start()
    failed_after = None
    deadline = started + 300
    while time.monotonic() < deadline:
        bad_status = DocumentVersion.objects.get(pk=bad.version_id).status
        if failed_after is None and bad_status in (Status.FAILED, Status.READY):
            failed_after = time.monotonic() - started
        if failed_after is not None and not DocumentVersion.objects.filter(
                pk__in=goods, status__in=(Status.PENDING, Status.PROCESSING)).exists():
            break
        time.sleep(0.02)
    peaks.stop.set()
    sampler.join()
    return Batch(list(DocumentVersion.objects.filter(pk__in=goods)),
                 DocumentVersion.objects.get(pk=bad.version_id), failed_after or -1.0, peaks)


def test_hostile_files_fail_alone_and_the_worker_keeps_serving(worker_factory, domain) -> None:
    worker = worker_factory(KMS_PARSE_MEMORY_MB=str(MEMORY_LIMIT_MB),
                            KMS_EXTRA_PARSERS=EXTRA_PARSERS, KMS_MAX_PROCESSING_ATTEMPTS="3")
    worker.start(concurrency=1)
    cases = [
        ("bomb.docx", real_zip_bomb(11), "KMS_ZIP_MAX_UNCOMPRESSED_MB"),
        ("pages.pdf", hostile_parsers.pdf_of_pages(50_000), "50,000 pages"),
        ("hog.memhog", b"allocate", f"{MEMORY_LIMIT_MB:,} MiB"),
        ("bug.unexpected", b"raise", "failed unexpectedly"),
        ("crash.killer", b"kill the worker", "stopped the parser 3 times"),
    ]
    warm = run_batch(domain, worker, "warm-up.md", b"# Warm up\n\nThe parser child starts.\n")
    assert {v.status for v in [*warm.goods, warm.bad]} == {Status.READY}
    rows = []
    for name, content, reason in cases:
        batch = run_batch(domain, worker, name, content)
        bad = batch.bad
        assert bad.status == Status.FAILED and reason in bad.status_message, (name, bad)
        for good in batch.goods:
            assert good.status == Status.READY, (name, good.status_message)
        rows.append((name, len(content), batch.seconds_to_failure, batch.peaks,
                     bad.status_message))
    from kms.celery import app

    assert app.control.ping(timeout=5.0), "the worker stopped answering"
    with transaction.atomic():
        last = add_document(domain, uploader=OPERATOR, source="after.md", filename="after.md",
                            content=b"# After\n\nThe worker still works.\n")
    assert wait_for_versions([last.version_id], timeout=120).ready == 1
    print("\nhostile file            bytes      to failure  pool peak RSS  parser peak RSS")
    for name, size, seconds, peaks, message in rows:
        print(f"{name:<20} {size:>12,} {seconds:>9.2f} s {peaks.pool_mb:>10.0f} MiB "
              f"{peaks.parser_mb:>12.0f} MiB   {message[:90]}")


def test_a_task_past_its_soft_time_limit_is_split_and_fails_only_the_slow_file(
    worker_factory, domain, settings
) -> None:
    """The per-file timeout is longer than the task's soft limit here, so Celery's limit ends
    the task: the batch is re-sent one version per task, and only the slow file fails."""
    # The limits travel in each message from where it is sent: this process sends the batch.
    settings.CELERY_TASK_SOFT_TIME_LIMIT, settings.CELERY_TASK_TIME_LIMIT = 6, 30
    worker = worker_factory(KMS_EXTRA_PARSERS=EXTRA_PARSERS, KMS_PARSE_TIMEOUT_SECONDS="600",
                            KMS_TASK_SOFT_TIME_LIMIT_SECONDS="6", KMS_TASK_TIME_LIMIT_SECONDS="30")
    worker.start(concurrency=1)
    batch = run_batch(domain, worker, "stuck.hang", b"wait")
    assert batch.bad.status == Status.FAILED
    assert "KMS_TASK_SOFT_TIME_LIMIT_SECONDS" in batch.bad.status_message
    assert [good.status for good in batch.goods] == [Status.READY, Status.READY]
