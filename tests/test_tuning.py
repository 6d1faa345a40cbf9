"""Domain fine-tuning: pairs, training, the gate, the registry and blue/green embedding spaces.

A tiny corpus of our own and a few training steps: the point is the cycle (what is trained
on, what is judged, what is served when), not the quality, which ``finetune`` on SciFact
measures.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from kms.store.models import Chunk, ChunkVector, Domain, EmbeddingSpace, ModelRun
from search.ingestion import embedding, spaces
from search.ingestion.beir import DatasetError
from search.ingestion.embedding import Embedder, checked_model_path, get_embedder
from search.retrieval import index_store, reranking
from search.retrieval.dense import dense_search
from search.retrieval.search import search
from tests.conftest import OPERATOR
from tests.test_pipeline import ingest
from tuning import cycle, registry
from tuning.data.negatives import mine_negatives
from tuning.data.pairs import (
    dataset_pairs,
    positives_from_qrels,
    split_held_out,
    synthetic_pairs,
)
from tuning.params import EmbedderParams, RerankerParams
from tuning.training.reranker import reranker_dataset

TOPICS = {
    "sepsis": "Sepsis screening. Screen every adult with a suspected infection using NEWS2 "
              "scores at triage. A score of five or more needs a senior review within the hour. "
              "Start antibiotics within one hour of recognising red flag sepsis in adults.",
    "warfarin": "Warfarin dosing. Check the INR before each dose change during the first week. "
                "Bleeding patients with a high INR need vitamin K and a senior review at once. "
                "Interacting antibiotics raise the INR and need closer monitoring of patients.",
    "falls": "Falls prevention. Every inpatient over sixty five gets a falls risk assessment "
             "on admission. Patients at high risk sleep in low beds with sensor mats nearby. "
             "After a fall the nurse checks for head injury before the patient is moved.",
    "hand": "Hand hygiene. Staff clean their hands before and after touching every patient. "
            "Alcohol gel does not remove spores, so soap and water are used for diarrhoea. "
            "Audits of hand hygiene compliance are published monthly for each ward team.",
    "transfusion": "Blood transfusion. Two staff check the identity of the patient at the "
                   "bedside before blood is given. Observations are taken fifteen minutes after "
                   "each unit starts. Stop the transfusion at once if a reaction is suspected.",
    "pressure": "Pressure ulcers. Skin is inspected on admission and at least once every day "
                "after that. Patients who cannot move are repositioned every two hours by "
                "staff. Air mattresses are ordered for patients with a high Waterlow score.",
    "discharge": "Discharge planning. Planning for discharge starts on the day of admission to "
                 "the ward. Medicines to take home are ordered the day before the patient "
                 "leaves. The family receives a written summary of the care plan at discharge.",
    "consent": "Consent to treatment. Adults with capacity decide for themselves about every "
               "treatment offered. The clinician explains the risks and the alternatives in "
               "plain words. Written consent is recorded before any operation under anaesthetic.",
    "hypoglycaemia": "Hypoglycaemia. A blood glucose below four needs fast acting sugar at once. "
                     "Recheck the glucose fifteen minutes after the sugar has been taken. "
                     "Unconscious patients receive intravenous glucose from the emergency team.",
    "visiting": "Visiting hours. Visitors are welcome on the wards between two and eight each "
                "afternoon. Two visitors at a time may sit at each bedside on general wards. "
                "Children visiting the ward are accompanied by an adult at all times.",
}
TINY = {"batch_size": 4, "max_steps": 3, "max_seq_length": 64, "hard_negatives": 1,
        "warmup_ratio": 0.0}
TINY_RERANKER = {"batch_size": 4, "max_steps": 3, "max_length": 96, "hard_negatives": 1,
                 "warmup_ratio": 0.0}


def corpus(domain: Domain) -> None:
    for name, text in TOPICS.items():
        ingest(domain, f"{name}.md", text.encode())
    index_store.build_index(domain)


def promote_always(domain: Domain) -> None:
    """The gate's margin for a test of the cycle: three steps rarely beat the base model."""
    domain.options = {**domain.options,
                      "tuning": {"gate_margin": -1.0, "promote_label_free": True}}
    domain.save(update_fields=["options"])


def found(domain: Domain, query: str, mode: str = "dense"):
    response = search(query, domain=domain, access=OPERATOR, mode=mode)
    return response, [hit.title for hit in response.documents]


@pytest.fixture
def tiny(domain: Domain) -> Domain:
    corpus(domain)
    domain.refresh_from_db()
    return domain


def test_pairs_are_held_out_by_query_and_never_negatives_of_their_own_query() -> None:
    documents = [(name, name.title(), text.split(". ", 1)[1]) for name, text in TOPICS.items()]
    synthetic = synthetic_pairs(documents, seed=1)
    assert {p.source for p in synthetic} == {"synthetic-title", "synthetic-sentence"}
    for pair in synthetic:
        if pair.source == "synthetic-sentence":
            assert pair.query not in pair.positive  # the sentence is cut out, not copied
    qrels = {"q1": {"sepsis": 1, "warfarin": 1}, "q2": {"falls": 1}, "q3": {"hand": 1}}
    passages = {name: text for name, _, text in documents}
    real = dataset_pairs({"q1": "antibiotics", "q2": "falls", "q3": "gel"}, qrels, passages)
    assert len(real) == 4
    train, held = split_held_out(real, 0.34, seed=3)
    assert {p.group for p in train}.isdisjoint({p.group for p in held}) and held
    assert split_held_out(list(reversed(real)), 0.34, seed=3)[1] == held
    ranked = list(passages)
    mined = mine_negatives(real, lambda _: ranked, passages, hard=1, random=1,
                           positives_of=positives_from_qrels(qrels))
    for pair in mined:
        own = {passages[d] for d in qrels[pair.group]}
        assert len(set(pair.negatives)) == 2 and own.isdisjoint(pair.negatives)
        first_ranked = next(passages[d] for d in ranked if d not in qrels[pair.group])
        assert pair.negatives[0] == first_ranked  # the hard one first, in the retriever's order
    assert mine_negatives(real, lambda _: ranked, passages, hard=1, random=1, seed=7,
                          positives_of=positives_from_qrels(qrels))[0].negatives[0] \
        == mined[0].negatives[0]

    def never(_: str) -> list[str]:
        raise AssertionError("random negatives need no retrieval")

    drawn = mine_negatives(real, never, passages, hard=0, random=2,
                           positives_of=positives_from_qrels(qrels))
    assert all(len(pair.negatives) == 2 for pair in drawn)
    for pair in drawn:
        assert {passages[d] for d in qrels[pair.group]}.isdisjoint(pair.negatives)
    with pytest.raises(ValueError, match="hard_negatives \\+ random_negatives"):
        RerankerParams.from_options({"hard_negatives": 0, "random_negatives": 0})
    # The reranker learns only from pairs with negatives: positives alone teach "relevant".
    rows = reranker_dataset(mined[:2] + synthetic[:3], negatives_per_pair=1)
    assert rows["label"] == [1.0, 0.0, 1.0, 0.0]
    assert set(rows["query"]) == {pair.query for pair in mined[:2]}


def test_training_parameters_are_checked_with_the_allowed_range() -> None:
    assert EmbedderParams.from_options({"epochs": 3}).as_dict()["epochs"] == 3
    with pytest.raises(ValueError, match="learning_rate"):
        EmbedderParams.from_options({"learning_rate": 3})
    with pytest.raises(ValueError, match="warmpu"):
        RerankerParams.from_options({"warmpu_ratio": 0.1})
    with pytest.raises(ValueError, match="scheduler"):
        EmbedderParams.from_options({"scheduler": "sometimes"})


@pytest.mark.django_db
def test_a_new_space_is_filled_beside_the_served_one_and_switched_to_when_complete(
        tiny: Domain, settings) -> None:
    old = tiny.embedding_space
    other = "torch" if old.backend != "torch" else "onnx-int8"
    new = spaces.space_of(get_embedder(backend=other))
    assert new != old
    assert spaces.begin_switch(tiny, new)
    tiny.refresh_from_db()
    assert tiny.next_space == new and tiny.embedding_space == old

    count, more = spaces.embed_into([new], Chunk.objects.filter(domain=tiny,
                                                                       is_current=True),
                                    claim_size=2, time_budget=0.0)
    assert count == 2 and more
    assert not spaces.switch_if_complete(tiny)
    response, titles = found(tiny, "sepsis antibiotics within one hour")
    assert response.embedding_space == old.name and titles[0] == "Sepsis"

    # A document arriving during the switch gets vectors in both spaces before it is served.
    late = ingest(tiny, "late.md", b"Late arrival. Fire doors stay closed at all times of "
                  b"day. Porters check the fire doors on every ward each night shift.")
    assert set(ChunkVector.objects.filter(chunk__version=late).values_list(
        "space", flat=True)) == {old.pk, new.pk}

    spaces.fill(tiny, claim_size=64, time_budget=60.0)
    tiny.refresh_from_db()
    assert tiny.embedding_space == new and tiny.next_space is None
    response, titles = found(tiny, "sepsis antibiotics within one hour")
    assert response.embedding_space == new.name and titles[0] == "Sepsis"
    assert spaces.remaining(tiny, old) == 0  # the old vectors stay, for a roll back


QUESTIONS = {
    "q1": ("How soon are antibiotics started in red flag sepsis?", "sepsis"),
    "q2": ("What does a bleeding patient with a high INR need?", "warfarin"),
    "q3": ("Which patients get a falls risk assessment?", "falls"),
    "q4": ("Why is soap used instead of alcohol gel for diarrhoea?", "hand"),
    "q5": ("Who checks the patient's identity before a transfusion?", "transfusion"),
    "q6": ("How often are immobile patients repositioned?", "pressure"),
}


def beir_dataset(root: Path) -> Path:
    """TOPICS as a BEIR dataset with QUESTIONS judged in its train split."""
    dataset = root / "wards"
    (dataset / "qrels").mkdir(parents=True)
    with gzip.open(dataset / "corpus.jsonl.gz", "wt") as fh:
        for name, text in TOPICS.items():
            title, body = text.split(". ", 1)
            fh.write(json.dumps({"_id": name, "title": title, "text": body}) + "\n")
    (dataset / "queries.jsonl").write_text("".join(
        json.dumps({"_id": qid, "text": text}) + "\n" for qid, (text, _) in QUESTIONS.items()))
    (dataset / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{qid}\t{doc}\t1\n" for qid, (_, doc) in QUESTIONS.items()))
    return dataset


@pytest.mark.django_db
def test_a_reranker_trains_on_real_pairs_alone_and_an_embedder_beside_synthetic_ones(
        domain: Domain, tmp_path: Path) -> None:
    dataset = beir_dataset(tmp_path)
    call_command("import_beir", str(dataset), "--domain", domain.slug, "--inline")
    index_store.build_index(domain)
    options = cycle.DataOptions.for_domain(domain, dataset_dir=dataset, held_out=0.34)
    reranker = cycle.collect(domain, options, hard_negatives=1, random_negatives=1,
                             synthetic_beside_real=False)
    assert reranker.counts["by_source"] == {"dataset": 4}
    assert reranker.counts["held_out_from"] == "dataset" and len(reranker.held_out_queries) == 2
    for pair in reranker.train:
        assert len(set(pair.negatives)) == 2 and pair.positive not in pair.negatives
        assert pair.query not in reranker.held_out_queries.values()
    embedder = cycle.collect(domain, options, hard_negatives=1)
    assert embedder.counts["by_source"]["dataset"] == 4
    assert {"synthetic-title", "synthetic-sentence"} <= set(embedder.counts["by_source"])
    assert embedder.held_out_queries == reranker.held_out_queries
    # Mined for the real pairs only: the synthetic ones have the batch's other passages.
    assert all(len(pair.negatives) == (pair.source == "dataset") for pair in embedder.train)


@pytest.mark.django_db
def test_a_domain_without_pairs_says_what_to_add(domain: Domain, capsys) -> None:
    with pytest.raises(CommandError, match="has no served documents to train on"):
        call_command("finetune", "--domain", domain.slug, "--set", "max_steps=1")
    run = ModelRun.objects.get(domain=domain)
    assert run.state == ModelRun.State.FAILED and "no served documents" in run.message
    corpus(domain)
    with pytest.raises(CommandError, match="No training pairs"):
        call_command("finetune", "--domain", domain.slug, "--no-synthetic")
    with pytest.raises(CommandError, match="learning_rate"):
        call_command("finetune", "--domain", domain.slug, "--set", "learning_rate=5")
    with pytest.raises(CommandError, match="No such dataset directory"):
        call_command("finetune", "--domain", domain.slug, "--dataset", "/nonexistent")
    with pytest.raises(CommandError, match="drop --dataset"):
        call_command("finetune", "--domain", domain.slug, "--synthetic-only",
                     "--dataset", "/nonexistent")
    with pytest.raises(CommandError, match="not allowed with"):
        call_command("finetune", "--domain", domain.slug, "--synthetic-only", "--no-synthetic")
    assert not ModelRun.objects.filter(state__in=registry.ACTIVE).exists()

    # Label-free: a dataset named in the domain's options is not read at all.
    domain.options = {"tuning": {"data": {"dataset_dir": "/nonexistent"}}}
    with pytest.raises(DatasetError, match="No such dataset directory"):
        cycle.collect(domain, cycle.DataOptions.for_domain(domain))
    data = cycle.collect(domain, cycle.DataOptions.for_domain(domain, real_pairs=False))
    assert set(data.counts["by_source"]) <= {"synthetic-title", "synthetic-sentence"} and data.train
    assert data.counts["held_out_from"] == "synthetic"


@pytest.mark.slow
@pytest.mark.django_db
def test_the_gate_rejects_a_model_that_does_not_beat_the_served_one_or_only_synthetic_queries(
        tiny: Domain, capsys) -> None:
    tiny.options = {"tuning": {"gate_margin": 0.5}}
    tiny.save(update_fields=["options"])
    served = tiny.embedding_space
    call_command("finetune", "--domain", tiny.slug, *[f"--set={k}={v}" for k, v in TINY.items()])
    out = capsys.readouterr().out
    run = ModelRun.objects.get(domain=tiny)
    assert run.state == ModelRun.State.REJECTED, run.message
    assert "below the margin 0.5000" in run.message and "is rejected" in out
    assert run.metrics["candidate"]["ndcg@10"] >= 0 and run.metrics["served"]["ndcg@10"] > 0
    assert run.data_counts["held_out_from"] == "synthetic"
    assert run.data_counts["train_pairs"] > 0 and run.data_counts["with_negatives"] > 0
    assert len(run.loss_curve) == 3 and Path(run.model_dir, "config.json").is_file()
    tiny.refresh_from_db()
    assert tiny.embedding_space == served and tiny.next_space is None

    # Past the margin on synthetic held-out queries alone, a run waits for a curator.
    tiny.options = {"tuning": {"gate_margin": -1.0}}
    tiny.save(update_fields=["options"])
    call_command("finetune", "--domain", tiny.slug, *[f"--set={k}={v}" for k, v in TINY.items()])
    label_free = ModelRun.objects.exclude(pk=run.pk).get(domain=tiny)
    assert label_free.state == ModelRun.State.REJECTED, label_free.message
    assert "synthetic held-out queries only" in label_free.message
    assert "promote it in the admin" in label_free.message
    tiny.refresh_from_db()
    assert tiny.embedding_space == served and tiny.next_space is None


@pytest.mark.slow
def test_a_full_cycle_through_a_worker_trains_promotes_switches_and_rolls_back(
        worker_factory, settings) -> None:
    from tuning.tasks import train_run

    domain = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    corpus(domain)
    promote_always(domain)
    domain.refresh_from_db()
    base = domain.embedding_space
    worker_factory().start(concurrency=1)

    run = cycle.new_run(domain, "embedder", TINY)
    train_run.delay(run.pk)
    run = wait_for(lambda: ModelRun.objects.get(pk=run.pk), lambda r: r.state not in
                   registry.ACTIVE, 240)
    assert run.state == ModelRun.State.PROMOTED, run.message
    assert run.space is not None and run.space != base
    # Searches keep answering while the new space fills, from the old space until the switch.
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response, titles = found(domain, "sepsis antibiotics within one hour")
        assert "Sepsis" in titles[:3]
        seen.append(response.embedding_space)
        if response.embedding_space == run.space.name:
            break
        time.sleep(0.2)
    assert seen[-1] == run.space.name
    assert seen == sorted(seen, key=lambda name: name == run.space.name)  # old, then new
    domain.refresh_from_db()
    assert domain.embedding_space == run.space and domain.next_space is None

    reranker_run = cycle.new_run(domain, "reranker", TINY_RERANKER)
    train_run.delay(reranker_run.pk)
    reranker_run = wait_for(lambda: ModelRun.objects.get(pk=reranker_run.pk),
                            lambda r: r.state not in registry.ACTIVE, 240)
    assert reranker_run.state == ModelRun.State.PROMOTED, reranker_run.message
    response, titles = found(domain, "sepsis antibiotics within one hour", "hybrid")
    assert response.documents[0].rerank is not None and "Sepsis" in titles[:3]

    assert registry.roll_back(domain, "reranker") is None
    response, _ = found(domain, "sepsis antibiotics within one hour", "hybrid")
    assert response.documents[0].rerank is None
    assert registry.roll_back(domain, "embedder") is None  # the base model serves again
    domain.refresh_from_db()
    assert domain.embedding_space == base  # at once: its vectors were kept
    response, titles = found(domain, "sepsis antibiotics within one hour")
    assert response.embedding_space == base.name and "Sepsis" in titles[:3]
    run.refresh_from_db()
    assert run.state == ModelRun.State.RETIRED and "Rolled back" in run.message


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_fails_and_frees_the_domain(worker_factory) -> None:
    from tuning.tasks import train_run

    domain = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    corpus(domain)
    fast_redelivery = {"KMS_TASK_VISIBILITY_SECONDS": "5", "KMS_TUNING_HEARTBEAT_SECONDS": "2"}
    doomed = worker_factory(**fast_redelivery)
    doomed.start(concurrency=1)
    run = cycle.new_run(domain, "embedder", {**TINY, "max_steps": 400})
    train_run.delay(run.pk)
    wait_for(lambda: ModelRun.objects.get(pk=run.pk), lambda r: r.progress_step >= 1, 240)
    doomed.kill()
    worker_factory(**fast_redelivery).start(concurrency=1)
    run = wait_for(lambda: ModelRun.objects.get(pk=run.pk),
                   lambda r: r.state == ModelRun.State.FAILED, 120)
    assert "stopped (killed or lost) at step" in run.message
    _, titles = found(domain, "sepsis antibiotics within one hour")
    assert "Sepsis" in titles[:3]  # still served by the last good model
    assert cycle.new_run(domain, "embedder", TINY).state == ModelRun.State.QUEUED


@pytest.mark.slow
@pytest.mark.django_db
def test_deleted_model_files_fall_back_to_the_last_good_model(tiny: Domain, settings) -> None:
    promote_always(tiny)
    base = tiny.embedding_space
    run = cycle.run_cycle(cycle.new_run(tiny, "embedder", TINY), cycle.DataOptions())
    assert run.state == ModelRun.State.PROMOTED
    spaces.fill(tiny, claim_size=64, time_budget=60.0)
    tiny.refresh_from_db()
    assert tiny.embedding_space == run.space

    reranker_run = cycle.run_cycle(cycle.new_run(tiny, "reranker", TINY_RERANKER),
                                   cycle.DataOptions())
    assert reranker_run.state == ModelRun.State.PROMOTED
    # The gate chose the weight on the held-out queries; it is served with the run.
    chosen = reranker_run.metrics["chosen"]
    assert set(chosen["tried"]) == {f"{w:g}" for w in settings.KMS_RERANK_WEIGHTS}
    best = max(chosen["tried"].values(), key=lambda m: m["ndcg@10"])["ndcg@10"]
    assert reranker_run.metrics["candidate"]["ndcg@10"] == best
    assert reranking.served_reranker(tiny).weight == chosen["weight"]
    tiny.options = {**tiny.options, "reranking": {"weight": 0.25}}  # a domain pins it
    assert reranking.served_reranker(tiny).weight == 0.25
    assert reranking.weights_to_try(tiny) == (0.25,)
    shutil.rmtree(run.model_dir)
    shutil.rmtree(reranker_run.model_dir)
    embedding._embedders.clear()  # a fresh process: nothing loaded yet
    reranking._models.clear()
    response, titles = found(tiny, "sepsis antibiotics within one hour", "hybrid")
    assert response.embedding_space == base.name and "Sepsis" in titles[:3]
    assert "cannot be loaded" in response.message and "previous model" in response.message
    assert "No reranker model at" in response.message
    with pytest.raises(registry.RegistryError, match="files of run"):
        registry.promote(run)


@pytest.mark.slow
@pytest.mark.django_db
def test_a_model_of_another_dimension_gets_a_space_of_its_own(tiny: Domain, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(str(checked_model_path()), device="cpu")
    small = SentenceTransformer(modules=[*base, models.Dense(384, 64)], device="cpu")
    small.save(str(tmp_path / "small"))
    space = spaces.space_of(Embedder(tmp_path / "small", "torch"))
    assert space.dimensions == 64
    run = ModelRun.objects.create(domain=tiny, kind="embedder", state="rejected",
                                  base_model="test", model_dir=str(tmp_path / "small"),
                                  space=space)
    registry.promote(run)
    spaces.fill(tiny, claim_size=64, time_budget=60.0)
    tiny.refresh_from_db()
    assert tiny.embedding_space == space
    response, titles = found(tiny, "sepsis antibiotics within one hour")
    assert response.embedding_space == space.name and len(titles) == len(TOPICS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                       [space.index_name])
        assert "vector(64)" in cursor.fetchone()[0]
    with pytest.raises(ValueError, match="A 384-d query vector cannot search"):
        dense_search(np.zeros(384, dtype=np.float32), space, spaces.SERVED_CHUNKS, 5, 40)
    assert EmbeddingSpace.objects.count() >= 2


def wait_for(get, done, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = get()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting; last: {value}")
