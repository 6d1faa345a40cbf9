"""Answers checked by the trained support verifier (``KMS_VERIFY_METHOD=model``): support,
contradiction, the relevance check, and the lexical fallback when the verifier cannot serve.

The verifier is trained here, once per module, on this suite's own small SciFact-format
dataset (``tests/test_verifier``) until it knows those claims; the documents it then checks
answers against are the same abstracts, stored and retrieved for real.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from kms.store.models import Domain, ModelRun
from search.answering.answers import NO_ANSWER, AnswerOptions, answer, reverify
from search.answering.generation.base import GenerationRequest
from search.answering.support_model import VerifierUnavailable, classify, forget
from search.answering.verification import verify
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_store as bm25_store
from tests.conftest import OPERATOR
from tests.test_verifier import TOPICS, write_dataset
from tuning.data.claims import labelled_pairs, read_abstracts, read_claims
from tuning.params import VerifierParams
from tuning.training.verifier import train_verifier

SUPPORTED = "Metformin is first-line treatment for type 2 diabetes"
CONTRADICTED = "Metformin raises hepatic glucose production"


class Scripted:
    """Plays a language model that writes ``text``, whatever the prompt says."""

    name = "scripted"

    def __init__(self, text: str) -> None:
        self.text = text

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.text)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A verifier that has learnt the fixture's claims (every claim trained on)."""
    data = write_dataset(tmp_path_factory.mktemp("scifact"))
    pairs = labelled_pairs(read_claims(data), read_abstracts(data), window=3, copied=True,
                           seed=1)
    output = tmp_path_factory.mktemp("verifier") / "model"
    params = VerifierParams(learning_rate=2e-4, batch_size=8, epochs=20, max_length=96,
                            warmup_ratio=0.0, window=3)
    train_verifier(Path(django_settings.KMS_EMBEDDING_MODEL), pairs, params, output)
    forget()
    return output


@pytest.fixture
def abstracts(domain: Domain, settings, tmp_path) -> Domain:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    ids = [
        add_document(domain, uploader=OPERATOR, source=f"{title}.md", filename=f"{title}.md",
                     content=(f"# {title}\n\n" + " ".join(sentences)).encode(),
                     queue=False).version_id
        for title, sentences in TOPICS
    ]
    process_inline(ids)
    bm25_store.build_index(domain)
    return domain


def promote(domain: Domain, model_dir: Path) -> ModelRun:
    return ModelRun.objects.create(domain=domain, kind=ModelRun.Kind.VERIFIER,
                                   state=ModelRun.State.PROMOTED, base_model="test",
                                   model_dir=str(model_dir))


def metformin_number(domain: Domain) -> tuple[str, int]:
    question = "Is metformin the first-line drug for type 2 diabetes?"
    probe = answer(question, domain=domain, access=OPERATOR)
    for citation in probe.passages:
        if citation.title == "Metformin" or "Metformin" in probe.passage_texts[citation.number]:
            return question, citation.number
    raise AssertionError("the metformin abstract was not retrieved")


@pytest.mark.django_db
@pytest.mark.slow
def test_the_promoted_verifier_keeps_support_and_removes_contradictions(
    trained: Path, abstracts: Domain
) -> None:
    promote(abstracts, trained)
    question, n = metformin_number(abstracts)
    text = (
        f"Metformin is the first-line drug for type 2 diabetes [{n}]. "
        f"{CONTRADICTED} [{n}]."
    )
    judged = classify(trained, [(SUPPORTED, " ".join(TOPICS[0][1][:3])),
                                (CONTRADICTED, " ".join(TOPICS[0][1][:3]))])
    assert [j.label for j in judged] == ["supports", "contradicts"]  # it learnt the fixture

    result = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(text),
                    options=AnswerOptions.from_settings(verify="model"))
    assert result.verification == "model" and not result.verification_note
    assert not result.abstained and result.text.startswith("Metformin is the first-line drug")
    assert CONTRADICTED not in result.text and result.text.count(f"[{n}]") == 1
    assert [c.supported for c in result.claims] == [True, False]
    assert result.contradicted == [result.claims[1]] and result.claims[1].contradicted == (n,)
    assert result.claims[1].citations == () and not result.claims[1].kept

    flagged = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(text),
                     options=AnswerOptions.from_settings(verify="model", policy="flag"))
    assert CONTRADICTED in flagged.text  # shown, marked, and never with a citation
    assert flagged.text.count("[") == 1 and flagged.contradicted[0].contradicted == (n,)

    lexical = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(text),
                     options=AnswerOptions.from_settings(verify="lexical"))
    assert not lexical.contradicted  # the lexical check cannot tell a contradiction


@pytest.mark.django_db
@pytest.mark.slow
def test_without_a_usable_verifier_answers_are_checked_lexically_and_say_so(
    trained: Path, abstracts: Domain, tmp_path: Path
) -> None:
    question, n = metformin_number(abstracts)
    text = f"Metformin is the first-line drug for type 2 diabetes [{n}]."
    options = AnswerOptions.from_settings(verify="model")

    nothing = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(text),
                     options=options)
    assert nothing.verification == "lexical" and "No verifier is promoted" in \
        nothing.verification_note
    assert not nothing.abstained and f"[{n}]" in nothing.text

    copy = Path(shutil.copytree(trained, tmp_path / "copy"))
    promote(abstracts, copy)
    served = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(text),
                    options=options)
    assert served.verification == "model" and not served.abstained

    forget()  # a fresh process, after the directory went away under the promoted run
    shutil.rmtree(copy)
    deleted = reverify(served, options, abstracts)
    assert deleted.verification == "lexical" and "Checked lexically instead" in \
        deleted.verification_note
    assert not deleted.abstained and f"[{n}]" in deleted.text
    with pytest.raises(VerifierUnavailable, match="No verifier model at"):
        verify([(text, (n,))], {n: "Metformin is the first-line drug."}, "model", 0.5,
               verifier=copy)


@pytest.mark.slow
def test_an_empty_passage_supports_nothing(trained: Path) -> None:
    checks = verify([(f"{SUPPORTED}. [1]", (1,)), (f"{SUPPORTED}. [2]", (2,))],
                    {1: "", 2: " ".join(TOPICS[0][1])}, "model", 0.5, verifier=trained)
    assert [c.supported for c in checks] == [False, True]
    assert checks[0].score == 0.0 and checks[1].supporting == (2,)
    # A sentence the passage contains word for word is supported by it, whatever the model says.
    copied = verify([("lactic ACIDOSIS is a rare adverse effect [1].", (1,))],
                    {1: " ".join(TOPICS[0][1])}, "model", 0.5, verifier=trained)
    assert copied[0].supported and copied[0].score == 1.0
    with pytest.raises(ValueError, match="needs the verifier's directory"):
        verify([(SUPPORTED, (1,))], {1: "x"}, "model", 0.5)


@pytest.mark.django_db
def test_an_answer_citing_only_a_side_topic_abstains_as_not_addressing_the_question(
    abstracts: Domain,
) -> None:
    question = "Is metformin the first-line drug for type 2 diabetes?"
    probe = answer(question, domain=abstracts, access=OPERATOR)
    best = max(probe.relevance, key=probe.relevance.get)
    side = min(probe.relevance, key=probe.relevance.get)
    assert probe.relevance[best] - probe.relevance[side] > 0.1
    body = probe.passage_texts[side].split("\n\n", 1)[-1]  # without its heading
    draft = f"{body.split('. ')[0].strip()} [{side}]."
    off = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(draft),
                 options=AnswerOptions.from_settings(verify="lexical"))
    assert off.abstained and off.off_topic and off.text == NO_ANSWER
    assert "does not address the question" in off.reason
    assert off.claims and off.claims[0].supported  # true to its passage, but beside the point

    unchecked = answer(question, domain=abstracts, access=OPERATOR, generator=Scripted(draft),
                       options=AnswerOptions.from_settings(verify="lexical",
                                                           relevance_margin=1.0))
    assert not unchecked.abstained and f"[{side}]" in unchecked.text


@pytest.mark.slow
def test_the_verifier_judge_scores_like_serving(trained: Path) -> None:
    from search.evaluation.answers import VerifierJudge

    judge = VerifierJudge(trained)
    abstract = " ".join(TOPICS[0][1])
    assert judge(f"{SUPPORTED} [1].", [abstract])  # learnt from the fixture
    assert not judge(f"{CONTRADICTED} [1].", [abstract])
    assert judge("The usual starting dose is 500 mg daily.", ["x", abstract])  # its sentence
    assert not judge("The usual starting dose is 850 mg daily.", [abstract])  # wrong number
    assert not judge(SUPPORTED, []) and not judge("[1]", [abstract])
