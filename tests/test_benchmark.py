"""bench_search on a small corpus: growth, idempotency, latency figures, rank-bm25 equality."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection

from kms.store.models import Chunk, ChunkVector, Document, Domain
from search.evaluation import index_memory
from search.evaluation.benchmark import (
    format_table,
    grow_domain,
    load_queries,
    percentiles,
    replica_word,
    run_benchmark,
    searchable_count,
)
from search.evaluation.index_memory import MemoryProbeError
from search.ingestion import spaces
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_store as bm25_store
from tests.conftest import OPERATOR

TOPICS = {
    "sepsis": "Sepsis screening uses NEWS2. A score of five triggers a review within thirty "
    "minutes. Lactate and blood cultures come before antibiotics, which start within the hour.",
    "falls": "Falls prevention starts with lying and standing blood pressure. Sedatives are "
    "reviewed daily. Bed rails are assessed for each patient and footwear is checked.",
    "warfarin": "Warfarin dosing follows the INR. The target range is two to three for most "
    "patients. Mechanical valves need a higher target and bridging with heparin.",
    "pneumonia": "Community acquired pneumonia with a CURB-65 of one is treated with "
    "amoxicillin. Higher scores need admission, dual antibiotics and oxygen if saturation drops.",
    "insulin": "Insulin infusions need hourly capillary glucose and potassium monitoring. "
    "Long-acting insulin continues during the infusion to prevent rebound hyperglycaemia.",
    "transfusion": "Blood transfusion requires two identity checks at the bedside. Observations "
    "are taken before, fifteen minutes in and at the end of every unit transfused.",
}


@pytest.fixture
def source(db, settings, tmp_path) -> Domain:
    """A few real documents, parsed, chunked small and embedded by the real pipeline."""
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    domain = Domain.objects.create(
        slug="bench-source", name="Bench source", chunk_tokens=24, chunk_overlap=0
    )
    ids = []
    for name, text in TOPICS.items():
        body = f"# {name.title()}\n\n{text}\n\n## Notes\n\n{text.upper()}\n\nApplies on all wards."
        result = add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                              content=body.encode(), queue=False)
        ids.append(result.version_id)
    process_inline(ids)
    assert searchable_count(domain) >= len(TOPICS)
    return domain


def test_replica_words_are_single_distinct_tokens() -> None:
    words = [replica_word(r) for r in range(1, 80)]
    assert words[:2] == ["alpha", "bravo"] and words[26] == "alpha2"
    assert len(set(words)) == len(words)


def test_percentiles_are_ordered() -> None:
    latency = percentiles(np.random.default_rng(1).exponential(10, 500).tolist(), "bm25")
    assert latency.p50_ms <= latency.p95_ms <= latency.p99_ms <= latency.max_ms
    assert latency.queries == 500


@pytest.mark.slow
def test_growth_reaches_the_size_copies_texts_and_is_idempotent(source: Domain) -> None:
    growth = grow_domain(300, source_domain=source.slug, progress=False)
    assert not growth.reused
    assert growth.added_chunks == growth.chunks == 300
    bench = Domain.objects.get(slug="bench")
    source.refresh_from_db()
    assert bench.embedding_space == source.embedding_space
    originals = {
        (c.document.title, c.ordinal): c
        for c in Chunk.objects.filter(domain=source).select_related("document", "version")
    }
    copies = bm25_store.searchable_chunks(bench).select_related("document", "version")
    for copy in copies[:50]:
        word, title = copy.document.title.split(": ", 1)
        original = originals[(title, copy.ordinal)]
        assert copy.text == original.text and word.isalpha()
        assert copy.version.extracted_text == original.version.extracted_text
        assert copy.document.current_version_id == copy.version_id
        (vector,) = copy.vectors.filter(space=bench.embedding_space)
        (source_vector,) = original.vectors.filter(space=source.embedding_space)
        vector = np.asarray(vector.embedding)
        assert abs(np.linalg.norm(vector) - 1) < 1e-4
        assert 0.9 < float(vector @ np.asarray(source_vector.embedding)) < 1.0

    again = grow_domain(250, source_domain=source.slug, progress=False)
    assert again.reused and again.chunks == 300

    more = grow_domain(350, source_domain=source.slug, progress=False)
    assert more.added_chunks == 50 and searchable_count(bench) == 350
    sources = list(Document.objects.filter(domain=bench).values_list("source", flat=True))
    assert len(sources) == len(set(sources))

    fresh = grow_domain(120, source_domain=source.slug, drop=True, progress=False)
    assert not fresh.reused and fresh.chunks == 120


def test_queries_come_from_the_file_or_from_chunk_sentences(db, tmp_path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps({"_id": str(i), "text": f"q {i}"}) + "\n"
                            for i in range(30)))
    picked = load_queries(10, path=path, seed=3)
    assert len(set(picked)) == 10 and picked == load_queries(10, path=path, seed=3)


@pytest.mark.slow
def test_small_run_times_every_mode_and_matches_rank_bm25(source: Domain) -> None:
    report = run_benchmark(
        size=300, source_domain=source.slug, queries=12, queries_file=None,
        rank_bm25_queries=12, measure_memory=False, progress=False, echo=lambda _: None,
    )
    assert report.growth.chunks == 300 and report.index["chunks"] == 300
    assert report.index["documents"] == Document.objects.filter(domain__slug="bench").count()
    assert set(report.latency) == {"bm25", "dense", "hybrid"}
    for latency in report.latency.values():
        assert latency.queries == 12 and latency.empty == 0
        assert 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms
    comparison = report.rank_bm25
    assert comparison.queries == 12 and comparison.identical and comparison.scores_identical


def test_hnsw_rebuild_and_a_fresh_process_memory_probe(source: Domain, transactional_db) -> None:
    """Committed data (transactional_db): the probe is another process that must see it."""
    space = spaces.served_space(source)
    report = run_benchmark(
        size=120, source_domain=source.slug, queries=4, queries_file=None, modes=["hybrid"],
        rank_bm25_queries=0, build_hnsw=True, maintenance_work_mem="64MB", progress=False,
        echo=lambda _: None,
    )
    vectors = report.vector_index
    assert vectors.build_s > 0 and vectors.index_bytes > 0
    assert vectors.vectors == ChunkVector.objects.filter(space=space).count() >= 120
    assert vectors.vector_bytes >= vectors.vectors * space.dimensions * 4
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [space.index_name])
        assert cursor.fetchone(), "the HNSW index is back after the run"
    memory = report.bm25_memory
    assert memory.chunk_entries == 120 and memory.document_entries == report.index["documents"]
    assert memory.baseline_mb > 50 and memory.chunks_array_mb > 0
    assert memory.per_million_chunks_mb() == pytest.approx(memory.total_mb * 1e6 / 120)
    assert "per million chunks" in format_table(report)


def test_the_memory_probe_says_when_a_domain_has_no_index(source: Domain,
                                                          transactional_db) -> None:
    with pytest.raises(MemoryProbeError, match="no published chunks index"):
        index_memory.measure(source.slug)


@pytest.mark.slow
def test_command_prints_the_table_and_writes_bench_json(source: Domain, tmp_path, capsys) -> None:
    output = tmp_path / "report"
    call_command(
        "bench_search", "--size", "300", "--source-domain", source.slug, "--queries", "8",
        "--queries-file", "", "--modes", "bm25,hybrid", "--rank-bm25-queries", "5",
        "--no-memory", "--output", str(output),
    )
    printed = capsys.readouterr().out
    assert "hybrid" in printed and "identical top-100: True" in printed
    data = json.loads((output / "bench.json").read_text())
    assert set(data["latency"]) == {"bm25", "hybrid"}
    assert data["rank_bm25"]["identical"] is True
    assert data["settings"]["ef_search"] and data["settings"]["cores"]
    assert data["growth"]["chunks"] == 300
