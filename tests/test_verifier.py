"""The citation-support verifier: labelled pairs from claims, training, the gate, bad input.

A small SciFact-format dataset of our own (written per test) stands in for the real one.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kms.store.models import ModelRun
from search.answering.support_model import VerifierUnavailable, classify, forget
from tuning import registry, verifier_cycle
from tuning.data import claims as claim_data
from tuning.data.claims import (
    CONTRADICTS,
    NOT_ENOUGH_INFO,
    SUPPORTS,
    ClaimsError,
    contradict,
    held_out_claims,
    labelled_pairs,
    read_abstracts,
    read_claims,
    reverse,
)
from tuning.evaluation.verification import MethodScores, check_labeller, decide

TOPICS = [
    ("Metformin", ["Metformin is the first-line drug for type 2 diabetes.",
                   "It lowers hepatic glucose production.",
                   "Lactic acidosis is a rare adverse effect.",
                   "The usual starting dose is 500 mg daily."]),
    ("Warfarin", ["Warfarin dosing follows the INR.",
                  "The target INR is two to three for most patients.",
                  "Vitamin K reverses its effect.",
                  "Mechanical valves need a higher target."]),
    ("Sepsis", ["Sepsis screening uses the NEWS2 score.",
                "Antibiotics should start within one hour.",
                "Blood cultures are taken before antibiotics.",
                "Lactate is measured at presentation."]),
    ("Falls", ["Falls prevention starts with a medication review.",
               "Sedatives increase the risk of falls in older patients.",
               "Bed rails are assessed for each patient.",
               "Footwear is checked on admission."]),
    ("Asthma", ["Inhaled corticosteroids reduce asthma exacerbations.",
                "Salbutamol relieves acute bronchospasm.",
                "Peak flow is recorded twice daily.",
                "Smoking worsens asthma control."]),
    ("Statins", ["Statins lower LDL cholesterol.",
                 "Myopathy is an uncommon side effect.",
                 "Atorvastatin 20 mg is a common starting dose.",
                 "Liver enzymes are checked before treatment."]),
]
CLAIMS = [
    (1, "Metformin is first-line treatment for type 2 diabetes.", 0, [0], "SUPPORT"),
    (2, "Metformin raises hepatic glucose production.", 0, [1], "CONTRADICT"),
    (3, "The target INR for most patients is between two and three.", 1, [1], "SUPPORT"),
    (4, "Vitamin K has no effect on warfarin.", 1, [2], "CONTRADICT"),
    (5, "Antibiotics for sepsis should start within one hour.", 2, [1], "SUPPORT"),
    (6, "Blood cultures are taken after antibiotics in sepsis.", 2, [2], "CONTRADICT"),
    (7, "Sedatives increase the risk of falls in older patients.", 3, [1], "SUPPORT"),
    (8, "Inhaled corticosteroids reduce exacerbations of asthma.", 4, [0], "SUPPORT"),
    (9, "Smoking improves asthma control.", 4, [3], "CONTRADICT"),
    (10, "Statins lower LDL cholesterol.", 5, [0], "SUPPORT"),
    (11, "Statins cause hair loss in most patients.", 5, None, None),
    (12, "Falls are more common at night.", 3, None, None),
]


def write_dataset(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / claim_data.SENTENCES_FILE, "wt", encoding="utf-8") as fh:
        for doc, (title, sentences) in enumerate(TOPICS, start=100):
            fh.write(json.dumps({"doc_id": doc, "title": title, "abstract": sentences,
                                 "structured": False}) + "\n")
    with (directory / claim_data.CLAIMS_FILE).open("w", encoding="utf-8") as fh:
        for claim_id, text, topic, sentences, label in CLAIMS:
            evidence = {str(100 + topic): [{"sentences": sentences, "label": label}]} \
                if label else {}
            fh.write(json.dumps({"id": claim_id, "claim": text, "evidence": evidence,
                                 "cited_doc_ids": [100 + topic]}) + "\n")
    return directory


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "scifact")


def test_pairs_carry_the_human_labels_and_their_kinds(dataset: Path) -> None:
    claims, abstracts = read_claims(dataset), read_abstracts(dataset)
    pairs = labelled_pairs(claims, abstracts, window=2, copied=True)
    by_claim = {}
    for pair in pairs:
        by_claim.setdefault(pair.claim_id, []).append(pair)
    rationale = next(p for p in by_claim[2] if p.kind == "rationale")
    assert rationale.label == CONTRADICTS and "hepatic glucose" in rationale.passage
    assert len(rationale.passage.split(". ")) == 2  # a window of two sentences
    other = next(p for p in by_claim[2] if p.kind == "other-sentences")
    assert other.label == NOT_ENOUGH_INFO and "hepatic" not in other.passage
    retrieved = next(p for p in by_claim[1] if p.kind == "retrieved")
    assert retrieved.label == NOT_ENOUGH_INFO and "Metformin" not in retrieved.passage
    assert [p.kind for p in by_claim[11]] == ["noinfo"]  # its cited abstract, no evidence
    assert "Statins" in by_claim[11][0].passage or "LDL" in by_claim[11][0].passage
    copied = [p for p in pairs if p.kind == "copied"]
    assert copied and all(p.label == SUPPORTS and p.sentence in p.passage for p in copied)
    assert not [p for p in labelled_pairs(claims, abstracts) if p.kind == "copied"]


def test_the_held_out_split_is_by_claim_and_the_same_every_time(dataset: Path) -> None:
    claims = read_claims(dataset)
    train, held = held_out_claims(claims, 0.3)
    assert held and train and not {c.id for c in train} & {c.id for c in held}
    assert held_out_claims(list(reversed(claims)), 0.3)[1] == sorted(
        held, key=lambda c: -c.id)  # membership depends on the id alone


@pytest.mark.parametrize(("claim", "made", "rule"), [
    ("Metformin is first-line treatment.", "Metformin is not first-line treatment.",
     "negation"),
    ("5% of patients relapse.", "50% of patients relapse.", "number"),
    ("A dose of 0.5 mg suffices.", "A dose of 5.0 mg suffices.", "number"),
    ("Statins lower LDL.", "It is not true that statins lower LDL.", "prefix"),
    ("Vitamin K does not affect it.", "It is not true that vitamin K does not affect it.",
     "prefix"),
])
def test_the_contradiction_rule(claim: str, made: str, rule: str) -> None:
    assert contradict(claim) == (made, rule)


@pytest.mark.parametrize(("sentence", "reversed_"), [
    ("Smoking increases the risk of falls.", "Smoking reduces the risk of falls."),
    ("Higher doses help.", "Lower doses help."),
    ("Vitamin K does not affect it.", "Vitamin K does affect it."),
    ("Relapse doesn't follow.", "Relapse does follow."),
    ("Relapse came after 12 weeks.", "Relapse came after 13 weeks."),
    ("Statins are well tolerated.", None),
])
def test_the_training_reversal_is_not_the_test_rule(sentence: str, reversed_: str | None) -> None:
    assert reverse(sentence) == reversed_
    if reversed_ is not None:
        assert reversed_ != contradict(sentence)[0]


def test_reversed_pairs_train_only_and_contradict(dataset: Path) -> None:
    claims, abstracts = read_claims(dataset), read_abstracts(dataset)
    pairs = labelled_pairs(claims, abstracts, window=2, copied=True)
    turned = [p for p in pairs if p.kind == "reversed"]
    assert turned and all(p.label == CONTRADICTS for p in turned)
    assert "Sedatives reduce the risk of falls in older patients." in {p.sentence for p in turned}
    assert not [p for p in labelled_pairs(claims, abstracts) if p.kind == "reversed"]


def test_missing_or_broken_claims_say_what_to_do(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ClaimsError, match="No claims file at .*pass --dataset"):
        read_claims(tmp_path / "nowhere")
    with pytest.raises(ClaimsError, match="No sentence-split corpus"):
        read_abstracts(tmp_path / "nowhere")
    broken = write_dataset(tmp_path / "broken")
    with (broken / claim_data.CLAIMS_FILE).open("a") as fh:
        fh.write('{"id": 99, "evidence": {}}\n')
    with pytest.raises(ClaimsError, match="line 13: not a SciFact claim"):
        read_claims(broken)
    out_of_range = write_dataset(tmp_path / "range")
    (out_of_range / claim_data.CLAIMS_FILE).write_text(json.dumps(
        {"id": 1, "claim": "x", "evidence": {"100": [{"sentences": [9], "label": "SUPPORT"}]},
         "cited_doc_ids": [100]}) + "\n")
    with pytest.raises(ClaimsError, match="sentence 9 of abstract 100, which has 4"):
        labelled_pairs(read_claims(out_of_range), read_abstracts(out_of_range))


@pytest.mark.django_db
def test_the_command_refuses_a_directory_without_claims(domain, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="No claims file"):
        call_command("train_verifier", "--domain", domain.slug, "--dataset", str(tmp_path))
    assert not ModelRun.objects.filter(kind=ModelRun.Kind.VERIFIER).exists()


@pytest.mark.django_db
def test_a_trained_verifier_is_judged_beside_the_checks_and_recorded(
    domain, dataset: Path, settings, tmp_path: Path, capsys
) -> None:
    settings.KMS_MODELS_DIR = (tmp_path / "models").resolve()
    call_command("train_verifier", "--domain", domain.slug, "--dataset", str(dataset),
                 "--set", "max_steps=3", "--set", "held_out=0.3", "--set", "window=2")
    printed = capsys.readouterr().out
    run = ModelRun.objects.get(kind=ModelRun.Kind.VERIFIER)
    assert run.state in (ModelRun.State.PROMOTED, ModelRun.State.REJECTED)
    assert run.data_counts["steps"] == 3 and run.data_counts["held_out_claims"] >= 1
    assert run.loss_curve and run.metrics["reason"]
    methods = [run.metrics["candidate"]["method"], run.metrics["served"]["method"],
               *(row["method"] for row in run.metrics["others"])]
    assert methods == ["verifier", "lexical", "embedding"]
    for row in (run.metrics["candidate"], run.metrics["served"]):
        assert row["pairs"] > 0 and 0 <= row["macro_f1"] <= 1
        assert row["contradictions"] == run.data_counts["held_out_pairs"].get(
            "rationale/supports", 0)
    assert "contradictions accepted" in printed and f"Run {run.pk} is" in printed

    loaded_here = Path(shutil.copytree(run.model_dir, tmp_path / "loaded"))
    judged = classify(loaded_here, [
        ("Statins lower LDL cholesterol.", "Statins lower LDL cholesterol. Myopathy is rare."),
        ("Statins lower LDL cholesterol.", ""),  # an empty passage says nothing
    ])
    assert all(j.label in claim_data.LABELS for j in judged)
    assert sum(judged[0].probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert judged[1].label == NOT_ENOUGH_INFO and judged[1].probabilities[SUPPORTS] == 0.0

    forget()  # another process, which has not loaded it
    shutil.rmtree(run.model_dir)
    with pytest.raises(VerifierUnavailable, match="No verifier model at"):
        classify(Path(run.model_dir), [("a claim", "a passage")])
    assert not registry.files_present(run)


@pytest.mark.django_db
def test_a_second_verifier_run_waits_for_the_first(domain, dataset: Path) -> None:
    verifier_cycle.new_verifier_run(domain, dataset)
    with pytest.raises(registry.RegistryError, match="already queued"):
        verifier_cycle.new_verifier_run(domain, dataset)
    with pytest.raises(ValueError, match="window must be"):
        verifier_cycle.new_verifier_run(domain, dataset, {"window": 0})


def _scores(method: str, macro_f1: float, accepted: float) -> MethodScores:
    return MethodScores(method, 100, 0.5, macro_f1, 0.5, 0.5, 20, accepted)


def test_the_gate_needs_a_better_macro_f1_and_no_more_contradictions_accepted() -> None:
    served = _scores("lexical", 0.40, 0.20)
    assert decide(_scores("verifier", 0.45, 0.10), served).passed
    worse = decide(_scores("verifier", 0.40, 0.10), served)
    assert not worse.passed and worse.reason.startswith("Not better: macro-F1 0.4000")
    gullible = decide(_scores("verifier", 0.60, 0.25), served)
    assert not gullible.passed and "Accepts more contradictions" in gullible.reason
    assert not decide(MethodScores("verifier", 0, 0, 0, 0, 0, 0, 0), served).passed


def test_the_served_check_is_judged_at_its_configured_threshold(settings) -> None:
    pair = claim_data.LabelledPair("Statins lower LDL cholesterol in adults.",
                                   "Statins lower LDL cholesterol.", SUPPORTS, "rationale", 1)
    assert check_labeller("lexical")([pair]) == [SUPPORTS]  # 4 of 5 terms at 0.7
    settings.KMS_VERIFY_METHOD, settings.KMS_VERIFY_THRESHOLD = "lexical", 0.9
    assert check_labeller("lexical")([pair]) == [NOT_ENOUGH_INFO]


@pytest.mark.django_db
def test_first_start_queues_a_verifier_only_when_none_is_there_and_the_data_is(
    domain, dataset: Path, settings, tmp_path: Path
) -> None:
    from kms.management.commands.run import Command

    out = io.StringIO()
    command = Command(stdout=out)
    settings.KMS_VERIFIER_DATASET = tmp_path / "absent"
    command._queue_verifier(domain.slug)
    assert "No claims file" in out.getvalue() and "checks answers lexically" in out.getvalue()
    assert not ModelRun.objects.filter(kind=ModelRun.Kind.VERIFIER).exists()

    settings.KMS_VERIFIER_DATASET = dataset
    command._queue_verifier(domain.slug)
    run = ModelRun.objects.get(kind=ModelRun.Kind.VERIFIER)
    assert run.state == ModelRun.State.QUEUED and run.data_options["dataset_dir"] == str(dataset)
    command._queue_verifier(domain.slug)  # one is on its way: not another
    assert ModelRun.objects.filter(kind=ModelRun.Kind.VERIFIER).count() == 1
    for state in (ModelRun.State.PROMOTED, ModelRun.State.REJECTED, ModelRun.State.FAILED):
        run.state = state
        run.save()
        command._queue_verifier(domain.slug)  # only a first start trains one
        assert ModelRun.objects.filter(kind=ModelRun.Kind.VERIFIER).count() == 1
