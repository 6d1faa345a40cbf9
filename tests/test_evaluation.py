"""BEIR evaluation: ranx metrics against hand-computed values, and the command end to end."""

from __future__ import annotations

import gzip
import json
import math
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kms.store.models import Domain, LexicalIndex
from search.evaluation.retrieval import (
    OTHER_PREFIX,
    beir_prefix,
    evaluate_run,
    fusion_grid,
    run_queries,
    tune_fusion,
)
from search.retrieval import index_store as bm25_store
from search.retrieval.search import FusionOptions


def test_evaluate_run_matches_hand_computed_metrics() -> None:
    """q1 ranks d1, x, d2 (d1 and d2 relevant); q2 has no hits; q3 is not in the qrels."""
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}
    run = {"q1": {"d1": 0.9, "x": 0.5, "d2": 0.1}, "q2": {}, "q3": {"d1": 1.0}}
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    q1 = {"ndcg@10": dcg / ideal, "recall@100": 1.0, "mrr@10": 1.0, "map@100": (1 + 2 / 3) / 2}
    metrics = evaluate_run(qrels, run)
    assert metrics == pytest.approx({name: value / 2 for name, value in q1.items()})
    assert evaluate_run(qrels, {"q1": run["q1"]}) == metrics  # a missing query is a 0 too


def test_evaluate_run_scores_a_run_without_any_hit_as_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert evaluate_run(qrels, {"q1": {}, "q2": {}}) == dict.fromkeys(
        ("ndcg@10", "recall@100", "mrr@10", "map@100"), 0.0
    )
    assert evaluate_run(qrels, {}) == evaluate_run(qrels, {"q1": {}, "q2": {}})


def test_evaluate_run_uses_graded_relevance_and_rank_cutoffs() -> None:
    qrels = {"q": {"a": 2, "b": 1}}
    run = {"q": {f"n{i}": 100.0 - i for i in range(10)} | {"a": 1.0}}  # a at rank 11
    metrics = evaluate_run(qrels, run)
    assert metrics["ndcg@10"] == 0.0 and metrics["mrr@10"] == 0.0
    assert metrics["recall@100"] == pytest.approx(0.5)
    assert metrics["map@100"] == pytest.approx((1 / 11) / 2)


CORPUS = [
    ("d1", "Aspirin and stroke", "Low dose aspirin reduces the risk of a second ischaemic stroke."),
    ("d2", "Statins", "Statins lower LDL cholesterol and cardiovascular events."),
    ("d3", "Metformin", "Metformin is the first line drug for type 2 diabetes mellitus."),
    ("d4", "Vitamin D", "Vitamin D supplements do not prevent fractures in older adults."),
    ("d5", "Influenza vaccine", "Seasonal influenza vaccination lowers hospital admissions."),
    ("d6", "Hand hygiene", "Alcohol hand rub removes transient bacteria from the hands."),
    ("d7", "Sleep", "Short sleep duration is associated with weight gain in children."),
    ("d8", "Smoking", "Varenicline doubles the chance of quitting smoking at one year."),
]
QUERIES = {
    "q1": "Does aspirin prevent a second stroke?",
    "q2": "varenicline for quitting smoking",
    "q3": "metformin type 2 diabetes first line",
    "q9": "a training query that is not in the test qrels",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d8": 1}, "q3": {"d3": 1}}


def write_beir(directory: Path) -> Path:
    (directory / "qrels").mkdir(parents=True)
    with gzip.open(directory / "corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
        for doc_id, title, text in CORPUS:
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (directory / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text in QUERIES.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{r}" for q, docs in QRELS.items() for d, r in docs.items()]
    (directory / "qrels" / "test.tsv").write_text("\r\n".join(lines) + "\r\n")
    (directory / "qrels" / "train.tsv").write_text("\r\n".join(lines) + "\r\n")
    return directory


@pytest.fixture
def tiny(domain: Domain, settings, tmp_path: Path) -> Path:
    """The tiny dataset imported into ``healthcare`` with a demo document, index built."""
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    dataset = write_beir(tmp_path / "tinymed")
    call_command("import_beir", str(dataset), "--domain", "healthcare", "--inline",
                 stdout=StringIO(), stderr=StringIO())
    other = tmp_path / "demo"
    other.mkdir()
    (other / "aspirin-policy.md").write_text("# Aspirin\n\nAspirin stroke policy of the ward.\n")
    call_command("ingest", str(other), "--domain", "healthcare", "--inline",
                 stdout=StringIO(), stderr=StringIO())
    bm25_store.build_index(domain)
    return dataset


@pytest.mark.django_db
def test_evaluate_command_writes_metrics_for_each_mode_and_a_chart(tiny: Path, tmp_path) -> None:
    out = StringIO()
    output = tmp_path / "reports"
    call_command("evaluate", str(tiny), "--domain", "healthcare", "--output", str(output),
                 stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "nDCG@10" in text and "p95 ms" in text
    [json_path] = output.glob("tinymed-test-*.json")
    [png_path] = output.glob("tinymed-test-*.png")
    assert png_path.stat().st_size > 1000 and png_path.read_bytes()[:4] == b"\x89PNG"
    report = json.loads(json_path.read_text())
    assert set(report["modes"]) == {"bm25", "dense", "hybrid"}
    for mode in report["modes"].values():
        assert set(mode["metrics"]) == {"ndcg@10", "recall@100", "mrr@10", "map@100"}
        assert mode["latency"]["p95_ms"] >= mode["latency"]["p50_ms"] > 0
    assert report["modes"]["bm25"]["metrics"]["ndcg@10"] > 0.9
    assert report["counts"]["queries"] == 3 and report["counts"]["dataset_documents_in_domain"] == 8
    assert report["settings"]["embedding_model"] and report["settings"]["bm25"]["k1"] == 1.5
    assert str(json_path) in text and str(png_path) in text


@pytest.mark.django_db
def test_other_documents_of_the_domain_count_as_non_relevant(tiny: Path) -> None:
    result = run_queries({"q1": QUERIES["q1"]}, domain="healthcare", mode="bm25", k=10,
                         source_prefix=beir_prefix(tiny))
    ranked = list(result.run["q1"])
    assert "d1" in ranked and any(key.startswith(OTHER_PREFIX) for key in ranked)
    assert set(result.latencies_ms) == {"q1"}


@pytest.mark.django_db
def test_offline_tuning_fuses_exactly_as_search_does(tiny: Path) -> None:
    queries = {qid: QUERIES[qid] for qid in QRELS}
    prefix = beir_prefix(tiny)
    grid = [FusionOptions("rrf", rrf_k=20), FusionOptions("weighted", bm25_weight=0.3)]
    tuning = tune_fusion(queries, QRELS, domain="healthcare", source_prefix=prefix, k=10,
                         grid=grid)
    assert [row.fusion for row in tuning.rows] == grid and tuning.queries == 3
    for row in tuning.rows:
        online = run_queries(queries, domain="healthcare", mode="hybrid", k=10,
                             fusion=row.fusion, source_prefix=prefix)
        assert row.metrics == pytest.approx(evaluate_run(QRELS, online.run))
    assert tuning.best in tuning.rows
    assert set(tuning.best.env()) >= {"KMS_FUSION"}


def test_fusion_grid_covers_rrf_k_and_weights() -> None:
    grid = fusion_grid()
    assert [o.rrf_k for o in grid if o.method == "rrf"] == [10, 20, 40, 60, 100]
    weights = [o.bm25_weight for o in grid if o.method == "weighted"]
    assert weights == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.django_db
def test_tune_prints_the_best_setting_and_its_env_vars(tiny: Path, tmp_path) -> None:
    out = StringIO()
    call_command("evaluate", str(tiny), "--domain", "healthcare", "--split", "train", "--tune",
                 "--output", str(tmp_path / "r"), stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "rrf k=10" in text and "weighted bm25_weight=0.9" in text and "<- best" in text
    assert "KMS_FUSION=" in text
    [report] = (tmp_path / "r").glob("tinymed-train-tune-*.json")
    assert len(json.loads(report.read_text())["tuning"]["grid"]) == 14


@pytest.mark.django_db
def test_command_errors_name_what_is_missing(domain: Domain, tmp_path: Path) -> None:
    dataset = write_beir(tmp_path / "notimported")
    with pytest.raises(CommandError, match="import it first with manage.py import_beir"):
        call_command("evaluate", str(dataset), "--domain", "healthcare")
    with pytest.raises(CommandError, match=r"qrels/dev\.tsv.*Available splits: test, train"):
        call_command("evaluate", str(dataset), "--domain", "healthcare", "--split", "dev")
    (dataset / "queries.jsonl").unlink()
    with pytest.raises(CommandError, match="queries.jsonl"):
        call_command("evaluate", str(dataset), "--domain", "healthcare")
    with pytest.raises(CommandError, match="No such dataset directory"):
        call_command("evaluate", str(tmp_path / "nope"), "--domain", "healthcare")


@pytest.mark.django_db
def test_command_refuses_to_score_bm25_without_an_index(tiny: Path, settings, tmp_path) -> None:
    LexicalIndex.objects.filter(domain__slug="healthcare").delete()
    with pytest.raises(CommandError, match="no BM25 index yet.*refresh_bm25 --domain healthcare"):
        call_command("evaluate", str(tiny), "--domain", "healthcare", "--modes", "hybrid")
    out = StringIO()
    call_command("evaluate", str(tiny), "--domain", "healthcare", "--modes", "dense",
                 "--output", str(tmp_path / "r"), stdout=out, stderr=StringIO())
    assert "dense" in out.getvalue() and "hybrid" not in out.getvalue()


@pytest.fixture
def tiny_torch(settings, request) -> Path:
    """``tiny`` embedded by the torch backend, so served vectors are the reference's."""
    settings.KMS_EMBEDDING_BACKEND = "torch"
    return request.getfixturevalue("tiny")


@pytest.mark.django_db
def test_offline_encoder_rankings_are_the_served_rankings(tiny_torch: Path) -> None:
    """bench_encode's exact dense and hybrid runs are what search returns (same vectors)."""
    from search.evaluation import encoders as bench
    from search.ingestion.embedding import get_embedder

    prefix = beir_prefix(tiny_torch)
    domain = Domain.objects.get(slug="healthcare")
    queries = {qid: QUERIES[qid] for qid in QRELS}
    corpus = bench.load_corpus(domain, prefix)
    embedder = get_embedder(backend="torch")
    offline = bench.rankings(
        corpus, {qid: embedder.encode([text])[0] for qid, text in queries.items()},
        embedder.encode(corpus.texts), bench.bm25_rankings(queries, domain, corpus, prefix),
    )
    for mode in ("dense", "hybrid"):
        served = run_queries(queries, domain="healthcare", mode=mode, k=bench.K,
                             source_prefix=prefix).run
        for qid in queries:
            assert list(offline[mode][qid]) == list(served[qid]), (mode, qid)
            assert list(offline[mode][qid].values()) == pytest.approx(
                list(served[qid].values()), abs=1e-5)


@pytest.mark.django_db
def test_bench_encode_prints_each_backend_side_by_side(tiny: Path, tmp_path: Path) -> None:
    out = StringIO()
    call_command("bench_encode", "--domain", "healthcare", "--dataset", str(tiny),
                 "--backends", "onnx-int8,torch", "--output", str(tmp_path), stdout=out,
                 stderr=StringIO())
    text = out.getvalue()
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["torch"][1] == "torch" and lines["onnx-int8"][1] == "onnx-int8"
    assert float(lines["torch"][4]) == 1.0  # the x-torch column of the reference
    assert 0.98 < float(lines["onnx-int8"][8]) < 1.0  # its worst cosine with torch
    assert "Fastest backend within 0.005 hybrid nDCG@10 of torch:" in text
    (report,) = tmp_path.glob("encoders-healthcare-*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [row["backend"] for row in rows] == ["torch", "onnx-int8"]
    assert all(row["metrics"]["hybrid"]["ndcg@10"] > 0 for row in rows)
    without_qrels = StringIO()  # no dataset: titles are the queries, no quality figures
    call_command("bench_encode", "--domain", "healthcare", "--backends", "torch", "--limit",
                 "3", stdout=without_qrels, stderr=StringIO())
    assert without_qrels.getvalue().startswith("3 chunk texts of healthcare, 9 queries")
    assert "Fastest backend" not in without_qrels.getvalue()
    with pytest.raises(CommandError, match="Unknown backends"):
        call_command("bench_encode", "--domain", "healthcare", "--backends", "tpu")
