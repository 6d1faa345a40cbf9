"""evaluate_answers: its metrics on hand-computed cases, and the command on a tiny PubMedQA-shaped
file written here (the real data set is not needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kms.store.models import Document, Domain
from search.answering.answers import Answer, Claim
from search.answering.citations import Citation
from search.evaluation.answers import (
    BothChecksJudge,
    CitationCounts,
    LexicalJudge,
    citation_counts,
    context_markdown,
    decision_of,
    judges_for,
    read_pubmedqa,
    rouge_l,
    token_f1,
)
from search.ingestion.beir import DatasetError

ROWS = [
    {
        "pmid": "1001", "split": "test",
        "question": "Does daily walking lower blood pressure in older adults?",
        "contexts": [
            "Older adults with hypertension often find drug regimens hard to follow.",
            "We randomised 120 adults over 65 to 30 minutes of daily walking or usual care.",
            "Daily walking lowered systolic blood pressure by 8 mmHg after 12 weeks.",
        ],
        "context_labels": ["BACKGROUND", "METHODS", "RESULTS"],
        "long_answer": "Daily walking lowers systolic blood pressure in older adults.",
        "final_decision": "yes",
    },
    {
        "pmid": "1002", "split": "test",
        "question": "Does vitamin C prevent the common cold in marathon runners?",
        "contexts": [
            "Colds are common after endurance events.",
            "Marathon runners took 1 g of vitamin C or placebo for three weeks.",
            "Vitamin C halved the number of colds reported after the race.",
        ],
        "context_labels": ["BACKGROUND", "METHODS", "RESULTS"],
        "long_answer": "Vitamin C reduces colds in marathon runners after a race.",
        "final_decision": "yes",
    },
    {
        "pmid": "1003", "split": "trainval",
        "question": "Is hand washing effective against norovirus?",
        "contexts": ["Alcohol rub is less effective than soap against norovirus."],
        "context_labels": ["RESULTS"],
        "long_answer": "Soap and water should be used.",
        "final_decision": "maybe",
    },
]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "pubmedqa"
    folder.mkdir()
    (folder / "pqal.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return folder


def test_token_f1_and_rouge_l_by_hand() -> None:
    # prediction tokens: walking lowers blood pressure (4); gold: daily walking lowers blood
    # pressure (5); 4 in common: P = 1, R = 0.8, F1 = 0.889. Markers and articles are ignored.
    assert token_f1("The walking lowers blood pressure [1].", "Daily walking lowers blood "
                    "pressure.") == pytest.approx(8 / 9, abs=1e-4)
    assert token_f1("", "anything") == 0.0
    assert token_f1("unrelated words", "daily walking") == 0.0
    assert rouge_l("walking lowers blood pressure [2]", "walking lowers blood pressure") == 1.0
    assert 0 < rouge_l("blood pressure falls", "walking lowers blood pressure") < 1


def test_decision_is_read_from_the_opening_word() -> None:
    assert decision_of("Yes, it does [1].") == "yes"
    assert decision_of("  No. The trial found nothing.") == "no"
    assert decision_of("Maybe: results were mixed.") == "maybe"
    assert decision_of("The answer to this question is:\n\nNo.") == "no"
    assert decision_of("The study says yes.") is None
    assert decision_of("Nobody knows.") is None


def test_judges_need_terms_and_numbers_and_never_judge_their_own_check(tmp_path) -> None:
    passage = "Daily walking lowered systolic blood pressure by 8 mmHg after 12 weeks."
    for judge in (BothChecksJudge(), LexicalJudge()):
        assert judge("Daily walking lowered systolic blood pressure by 8 mmHg [1].", [passage])
        assert not judge("Daily walking lowered systolic blood pressure by 20 mmHg.", [passage])
        assert not judge("Swimming improves sleep quality.", [passage])
        assert not judge("", [passage]) and not judge("Walking helps.", [])
    with_verifier = judges_for(tmp_path / "verifier")
    assert {name: type(j).__name__ for name, j in with_verifier.items()} == {
        "none": "VerifierJudge", "embedding": "VerifierJudge", "lexical": "VerifierJudge",
        "model": "LexicalJudge"}
    without = judges_for(None)
    assert {type(j).__name__ for j in without.values()} == {"BothChecksJudge"}
    assert "not independent" in without["lexical"].name


def _citation(number: int, document_id: int) -> Citation:
    return Citation(number, number * 10, document_id, document_id, "t", None, None, "", 0, 10)


def test_alce_citation_counts() -> None:
    """Sentence 1 cites a supporting [1] and an irrelevant [2]; sentence 2 cites nothing."""
    texts = {
        1: "Daily walking lowered systolic blood pressure by 8 mmHg after 12 weeks.",
        2: "Colds are common after endurance events.",
    }
    result = Answer(
        question="q", text="...", abstained=False, reason="", sources=[],
        passages=[_citation(1, 7), _citation(2, 8)], passage_texts=texts,
        claims=[
            Claim("Daily walking lowered systolic blood pressure by 8 mmHg.", (1, 2), (1, 2),
                  True, 1.0),
            Claim("It is cheap.", (), (), None, None),
            Claim("Removed sentence.", (1,), (), False, 0.1, kept=False),
        ],
    )
    counts = citation_counts(result, 7, BothChecksJudge())
    assert counts == CitationCounts(sentences=2, supported=1, citations=2, precise=1, gold=1)
    abstained = Answer(question="q", text="", abstained=True, reason="r", sources=[],
                       passages=[], claims=result.claims)
    assert citation_counts(abstained, 7, BothChecksJudge()) == CitationCounts()


def test_reading_the_data_set(dataset: Path, tmp_path: Path) -> None:
    items = read_pubmedqa(dataset)
    assert [i.pmid for i in items] == ["1001", "1002", "1003"]
    markdown = context_markdown(items[0])
    assert markdown.startswith("## Background\n\nOlder adults") and "## Results" in markdown
    with pytest.raises(DatasetError, match="expected pqal.jsonl"):
        read_pubmedqa(tmp_path / "missing")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"pmid": 1}\n')
    with pytest.raises(DatasetError, match="broken.jsonl:1"):
        read_pubmedqa(broken)


@pytest.mark.django_db
def test_command_reports_every_setting(dataset: Path, settings, tmp_path, capsys) -> None:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    report_path = tmp_path / "report.json"
    call_command("evaluate_answers", str(dataset), "--backends", "extractive", "--limit", "0",
                 "--json", str(report_path), "--keep")
    out, err = capsys.readouterr()
    assert "| extractive | none |" in out and "| extractive | lexical |" in out
    report = json.loads(report_path.read_text())
    assert report["questions"] == 2  # the test split only
    rows = {row["verification"]: row for row in report["rows"]}
    assert set(rows) == {"none", "embedding", "lexical", "model"}
    for row in rows.values():
        assert row["abstention_rate"] == 0.0
        assert row["citation_recall"] == 1.0  # extractive sentences are the passages' own
        assert row["gold_source_share"] > 0.5 and row["off_source_share"] == 0.0
        assert row["token_f1"] > 0.2
    # No verifier here: the model rows are checked lexically and say so; every row is judged
    # by both checks, labelled as not independent.
    assert rows["model"]["fallbacks"] == 2 and rows["lexical"]["fallbacks"] == 0
    assert all("not independent" in row["judge"] for row in rows.values())
    assert "No verifier is promoted" in err
    # A second run finds the kept abstracts and does not store them again; then it removes
    # its domain, which no staff account could see anyway.
    assert Domain.objects.get(slug="pubmedqa").purpose == Domain.Purpose.EVALUATION
    call_command("evaluate_answers", str(dataset), "--backends", "extractive", "--limit", "1",
                 "--verifications", "none")
    out = capsys.readouterr().out
    assert "Embedding" not in out and "Removed the evaluation domain 'pubmedqa'" in out
    assert not Domain.objects.filter(slug="pubmedqa").exists()
    assert not Document.objects.filter(source__startswith="pubmedqa:").exists()


@pytest.mark.django_db
def test_command_never_writes_into_a_staff_domain(dataset: Path, domain) -> None:
    with pytest.raises(CommandError, match="holds staff documents"):
        call_command("evaluate_answers", str(dataset), "--domain", domain.slug)
    assert not domain.documents.exists()


@pytest.mark.django_db
def test_command_rejects_bad_options(dataset: Path) -> None:
    with pytest.raises(CommandError, match="Unknown verification"):
        call_command("evaluate_answers", str(dataset), "--verifications", "nli")
    with pytest.raises(CommandError, match="Unknown generator backend"):
        call_command("evaluate_answers", str(dataset), "--backends", "gpt4")
    with pytest.raises(CommandError, match="expected pqal.jsonl"):
        call_command("evaluate_answers", str(dataset / "nope"))
    with pytest.raises(CommandError, match="No verifier directory at"):
        call_command("evaluate_answers", str(dataset), "--verifier", str(dataset / "nope"))
    with pytest.raises(CommandError, match="No verifier model at|Cannot load the verifier"):
        call_command("evaluate_answers", str(dataset), "--verifier", str(dataset.parent))
    with pytest.raises(CommandError, match="--limit must be 0"):
        call_command("evaluate_answers", str(dataset), "--limit", "-1")
