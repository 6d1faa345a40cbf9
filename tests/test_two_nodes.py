"""Two nodes on shared services only: one PostgreSQL, one Redis, one S3-compatible store.

Node A is this test process (it uploads, as its web views would) with worker A; node B is a
separate web process (a search loop) with worker B. Each node has its own media and index
directories and nothing on disk is shared. A document uploaded on A is processed by either
worker, reading the original from the object store, and found on B by BM25 and dense search;
killing worker A mid-batch (before worker B starts) loses nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.db import transaction

from kms.store.models import DocumentVersion, Status
from search.ingestion.documents import add_document
from search.ingestion.progress import progress, wait_for_versions
from search.ingestion.tasks import requeue_stalled
from search.retrieval.tasks import refresh_stale_bm25
from tests.conftest import OPERATOR, ROOT, S3Store, worker_database_url
from tests.test_worker import long_document

pytestmark = [pytest.mark.slow]

TOPICS = {
    "sepsis": ("sepsis screening NEWS2", "Sepsis screening uses NEWS2; a score of five "
               "triggers a review by the sepsis team within thirty minutes."),
    "warfarin": ("warfarin INR target", "Warfarin dosing follows the INR; the target range "
                 "is two to three for most patients on anticoagulation."),
    "insulin": ("insulin infusion glucose", "Insulin infusions need hourly capillary glucose "
                "and potassium monitoring on the ward."),
}

# Node B's web process: watches the versions and, once one is ready, searches for it until
# both BM25 and dense search find it; prints the delays it measured on its own clock.
NODE_B = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, os.environ["KMS_ROOT"])
    import django
    django.setup()
    from kms.access import Access
    from kms.store.models import DocumentVersion
    from search.retrieval.search import search
    wanted = json.loads(sys.argv[1])  # version id -> [document id, query]
    ready_at, found, last = {}, {}, {}
    deadline = time.monotonic() + 300
    while len(found) < len(wanted) and time.monotonic() < deadline:
        statuses = dict(DocumentVersion.objects.filter(pk__in=[int(v) for v in wanted])
                        .values_list("pk", "status"))
        for version, (document, query) in wanted.items():
            if version in found or statuses.get(int(version)) != "ready":
                continue
            ready_at.setdefault(version, time.monotonic())
            hits = {mode: [d.document_id for d in search(
                        query, domain="healthcare", mode=mode, k=3,
                        access=Access.everything("node-b")).documents]
                    for mode in ("bm25", "dense")}
            last[version] = hits
            if all(hits[mode][:1] == [document] for mode in hits):
                found[version] = time.monotonic() - ready_at[version]
        time.sleep(0.05)
    print(json.dumps({"found": found, "last": last}))
""")


def _node_env(node: Path, s3: S3Store) -> dict[str, str]:
    return {"KMS_MEDIA_ROOT": str(node / "media"), "KMS_INDEX_DIR": str(node / "indexes"),
            "KMS_DATA_DIR": str(node), "KMS_TASK_VISIBILITY_SECONDS": "5",
            "KMS_BM25_REFRESH_SECONDS": "1", **s3.env}


def test_a_document_uploaded_on_node_a_is_found_on_node_b_and_a_killed_worker_loses_nothing(
    worker_factory, s3_store: S3Store, domain, settings, tmp_path
) -> None:
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    settings.MEDIA_ROOT = node_a / "media"
    settings.KMS_INDEX_DIR = node_a / "indexes"
    worker_a = worker_factory(**_node_env(node_a, s3_store))
    worker_b = worker_factory(**_node_env(node_b, s3_store))
    started = time.monotonic()
    worker_a.start(concurrency=1)
    workers_up = time.monotonic() - started

    with transaction.atomic():
        long_ones = [add_document(domain, uploader=OPERATOR, source=f"ward-{n}.md",
                                  filename=f"ward-{n}.md",
                                  content=long_document(900) + f"\nWard {n}.\n".encode())
                     for n in range(2)]  # distinct: identical content is stored once
        topics = {name: add_document(domain, uploader=OPERATOR, source=f"{name}.md",
                                     filename=f"{name}.md",
                                     content=f"# {name.title()}\n\n{text}\n".encode())
                  for name, (_, text) in TOPICS.items()}
    wanted = {str(r.version_id): [r.document_id, TOPICS[name][0]] for name, r in topics.items()}
    env = {**{k: v for k, v in os.environ.items() if k != "KMS_EMBEDDED"},
           **_node_env(node_b, s3_store), "KMS_ROOT": str(ROOT),
           "DATABASE_URL": worker_database_url(), "REDIS_URL": settings.REDIS_URL,
           "DJANGO_SETTINGS_MODULE": "kms.settings", "KMS_ENCODER_THREADS": "1"}
    node_b_web = subprocess.Popen([sys.executable, "-c", NODE_B, json.dumps(wanted)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    deadline = time.monotonic() + 120  # kill worker A, the only one, while it holds work
    while time.monotonic() < deadline and not DocumentVersion.objects.filter(
            pk__in=[r.version_id for r in long_ones], status=Status.PROCESSING).exists():
        time.sleep(0.05)
    worker_a.kill()
    killed_at = time.monotonic() - started
    every = [r.version_id for r in long_ones] + [r.version_id for r in topics.values()]
    unfinished = DocumentVersion.objects.filter(pk__in=every).exclude(status=Status.READY)
    assert unfinished.exists(), "worker A finished everything before it was killed"
    worker_b.start(concurrency=1)  # the other host

    # What beat does every KMS_REQUEUE_EVERY_SECONDS: re-send versions left processing by
    # the dead worker (its unacknowledged messages come back only after their visibility).
    settings.KMS_STALLED_AFTER_SECONDS = 10
    requeued = 0
    deadline = time.monotonic() + 240
    while wait_for_versions(every, timeout=3).done < len(every):
        assert time.monotonic() < deadline, (progress(every), requeued, list(
            DocumentVersion.objects.filter(pk__in=every).values_list(
                "pk", "status", "queued_at", "attempts", "status_message")))
        requeued += requeue_stalled()
    all_ready = time.monotonic() - started
    for version in DocumentVersion.objects.filter(pk__in=every):
        assert version.status == Status.READY, (version, version.status_message)
        ordinals = sorted(version.chunks.values_list("ordinal", flat=True))
        assert ordinals == list(range(len(ordinals))) and ordinals
    assert sorted(s3_store.object_keys()) == sorted(
        DocumentVersion.objects.filter(pk__in=every).values_list("file", flat=True))
    assert not (node_a / "media").exists() and not (node_b / "media").exists()

    # Beat's BM25 check too: refreshes queued by worker A died with it.
    deadline = time.monotonic() + 330
    while node_b_web.poll() is None and time.monotonic() < deadline:
        refresh_stale_bm25()
        time.sleep(3)
    out, err = node_b_web.communicate(timeout=30)
    assert node_b_web.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    found = report["found"]
    assert sorted(found) == sorted(wanted), (wanted, report, err[-3000:])
    delays = sorted(found.values())
    print(f"\nworker A up {workers_up:.0f} s, killed at {killed_at:.0f} s, "
          f"all ready at {all_ready:.0f} s ({requeued} versions requeued)")
    print(f"\nready on the workers -> found by BM25 and dense on node B: "
          f"{', '.join(f'{d:.2f}' for d in delays)} s (bound: KMS_BM25_REFRESH_SECONDS=1 "
          "plus one build)")
    assert list((node_b / "indexes" / "bm25" / "healthcare").glob("*/*.npz"))
