"""Question in, cited answer out: the one pipeline behind the portal, the API and ``manage.py ask``.

retrieve (hybrid, with the user's access) -> choose passages within a token budget -> generate
-> parse the ``[n]`` citations -> verify each sentence against what it cites -> answer.

Two rules keep an answer trustworthy. Every citation shown has passed the support check: a
sentence nothing supports loses its citations (and, by default, its place in the answer), and
none is invented for it. And when retrieval finds nothing close enough to the
question, or nothing the generator wrote survives the check, or what survives cites only
passages far less related to the question than the closest one (the relevance check), the
answer is :data:`NO_ANSWER` rather than a guess. ``"model"`` checks with the domain's promoted
support verifier, which also removes sentences a cited passage contradicts; without a usable
verifier the lexical check runs instead and the answer says so. With verification off
(``verify="none"``, for comparison) the draft is shown as written, minus citations of numbers
that were never in the prompt.

Streaming: :func:`stream_answer` yields the generator's text as it arrives, then the final
:class:`Answer`. The streamed text is the generator's draft; the final answer is what was
verified, so a caller replaces the draft with ``Answer.text`` when it arrives.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from django.conf import settings

from kms.access import Access
from kms.store.models import Domain
from search.answering.citations import (
    MARKER_LIKE,
    AnswerSentence,
    Citation,
    citation_for,
    parse_citations,
    render,
)
from search.answering.generation.backends import get_generator
from search.answering.generation.base import Generator, GeneratorError
from search.answering.prompting import (
    NO_ANSWER,
    SourcePassage,
    build_request,
    choose_passages,
    token_counter,
)
from search.answering.support_model import VerifierUnavailable
from search.answering.verification import (
    EMBEDDING_THRESHOLD,
    LEXICAL_THRESHOLD,
    MODEL_THRESHOLD,
    SentenceCheck,
    verify,
)
from search.answering.verifier_runs import served_generator, served_verifier
from search.retrieval.search import SearchError, SearchResponse, search

VerifyMethod = Literal["embedding", "lexical", "model", "none"]
Policy = Literal["remove", "flag"]
VERIFY_METHODS = ("embedding", "lexical", "model", "none")
DEFAULT_THRESHOLDS = {"embedding": EMBEDDING_THRESHOLD, "lexical": LEXICAL_THRESHOLD,
                      "model": MODEL_THRESHOLD, "none": LEXICAL_THRESHOLD}
POLICIES = ("remove", "flag")

__all__ = [
    "NO_ANSWER", "Answer", "AnswerOptions", "Claim", "GeneratorError", "SearchError", "Token",
    "answer", "reverify", "stream_answer",
]


@dataclass(frozen=True)
class AnswerOptions:
    """How to answer; :meth:`from_settings` fills every field from its ``KMS_*`` setting."""

    verify: VerifyMethod = "lexical"
    threshold: float = LEXICAL_THRESHOLD
    policy: Policy = "remove"
    min_similarity: float = 0.45
    # The passages an answer cites must include one within this much of the question's best
    # passage in similarity: an answer built on a side topic does not answer the question.
    relevance_margin: float = 0.1
    passage_tokens: int = 1200
    max_passages: int = 6
    max_new_tokens: int = 256
    # "model": the verifier directory to use instead of the domain's promoted verifier.
    verifier: str = ""

    @classmethod
    def from_settings(cls, **overrides) -> AnswerOptions:
        method = overrides.pop("verify", None) or settings.KMS_VERIFY_METHOD
        threshold = overrides.pop("threshold", None)
        if threshold is None and method == settings.KMS_VERIFY_METHOD:
            threshold = settings.KMS_VERIFY_THRESHOLD or None  # it belongs to that method
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS.get(method, LEXICAL_THRESHOLD)
        values = {
            "verify": method,
            "threshold": threshold,
            "policy": settings.KMS_VERIFY_POLICY,
            "min_similarity": settings.KMS_ANSWER_MIN_SIMILARITY,
            "relevance_margin": settings.KMS_ANSWER_RELEVANCE_MARGIN,
            "passage_tokens": settings.KMS_ANSWER_PASSAGE_TOKENS,
            "max_passages": settings.KMS_ANSWER_MAX_PASSAGES,
            "max_new_tokens": settings.KMS_GENERATOR_MAX_NEW_TOKENS,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).validate()

    def validate(self) -> AnswerOptions:
        if self.verify not in VERIFY_METHODS:
            raise SearchError(
                f"Unknown verification {self.verify!r}; use one of {', '.join(VERIFY_METHODS)}."
            )
        if self.policy not in POLICIES:
            raise SearchError(f"Unknown policy {self.policy!r}; use one of {', '.join(POLICIES)}.")
        if not 0.0 < self.threshold <= 1.0:
            raise SearchError(
                f"The verification threshold must be above 0 and at most 1, not {self.threshold}"
                " (KMS_VERIFY_THRESHOLD)."
            )
        if self.relevance_margin < 0:
            raise SearchError("The relevance margin cannot be negative "
                              "(KMS_ANSWER_RELEVANCE_MARGIN; 1 turns the check off).")
        if self.passage_tokens < 1 or self.max_passages < 1 or self.max_new_tokens < 1:
            raise SearchError("passage_tokens, max_passages and max_new_tokens must be positive.")
        return self


@dataclass(frozen=True)
class Claim:
    """One sentence the generator wrote, and what verification made of it."""

    text: str
    cited: tuple[int, ...]  # valid passage numbers the generator cited
    citations: tuple[int, ...]  # the ones kept: those that support it (all cited when unchecked)
    supported: bool | None  # None: not checked
    score: float | None
    invented: tuple[int, ...] = ()  # numbers cited that were not among the passages
    kept: bool = True  # False: removed from the answer
    attributed: bool = False  # uncited by the generator; the check found the passage backing it
    contradicted: tuple[int, ...] = ()  # cited passages that say the opposite ("model" check)


@dataclass
class Answer:
    question: str
    text: str  # the answer as shown, with [n] markers; NO_ANSWER when it abstains
    abstained: bool
    reason: str  # why it abstained, or ""
    sources: list[Citation]  # the passages the answer cites, by number
    passages: list[Citation]  # every passage the generator was given
    claims: list[Claim] = field(default_factory=list)
    draft: str = ""  # the generator's own text, before verification
    backend: str = ""
    verification: str = "none"  # the check that ran (the fallback's name when it stood in)
    verification_note: str = ""  # why the configured check did not run, when it did not
    timings_ms: dict[str, float] = field(default_factory=dict)
    passage_texts: dict[int, str] = field(default_factory=dict)  # number -> chunk text
    # The question's best cosine similarity to a passage: what the abstention gate looks at.
    similarity: float = 0.0
    # number -> the question's similarity to that passage (0 when only keywords matched it)
    relevance: dict[int, float] = field(default_factory=dict)
    # Abstained because the cited passages do not address the question (the answer it would
    # have given is still in ``claims``).
    off_topic: bool = False

    @property
    def flagged(self) -> list[Claim]:
        """Sentences the check did not support (removed, or shown without citations)."""
        return [c for c in self.claims if c.supported is False]

    @property
    def contradicted(self) -> list[Claim]:
        """Sentences a cited passage contradicts: never shown with a citation."""
        return [c for c in self.claims if c.contradicted]


@dataclass(frozen=True)
class Token:
    """A piece of the draft as the generator produces it."""

    text: str


def answer(
    question: str,
    *,
    domain: str | Domain,
    access: Access,
    generator: Generator | str | None = None,
    options: AnswerOptions | None = None,
    on_token: Callable[[str], None] | None = None,
) -> Answer:
    """Answer ``question`` from ``domain``, citing the passages it used.

    Raises SearchError for a question or option to fix and GeneratorError when the backend
    fails (its message names the backend or endpoint).
    """
    result: Answer | None = None
    for event in stream_answer(
        question, domain=domain, access=access, generator=generator, options=options
    ):
        if isinstance(event, Token):
            if on_token is not None:
                on_token(event.text)
        else:
            result = event
    assert result is not None  # stream_answer always ends with the answer
    return result


def stream_answer(
    question: str,
    *,
    domain: str | Domain,
    access: Access,
    generator: Generator | str | None = None,
    options: AnswerOptions | None = None,
) -> Iterator[Token | Answer]:
    """:class:`Token` pieces of the draft as they are generated, then the final :class:`Answer`."""
    started = time.perf_counter()
    options = (options or AnswerOptions.from_settings()).validate()
    if generator is None or isinstance(generator, str):
        generator = _generator_for(domain, generator)
    response = search(
        question, domain=domain, access=access, mode="hybrid",
        k=options.max_passages, chunks_per_document=2,
    )
    passages = choose_passages(
        response, options.passage_tokens, token_counter(), options.max_passages
    )
    timings = {"retrieval": _ms(started)}
    shown = [citation_for(p) for p in passages]
    base = {
        "question": question.strip(), "passages": shown, "backend": generator.name,
        "verification": options.verify, "timings_ms": timings,
        "passage_texts": {p.number: p.chunk.text for p in passages},
        "relevance": {p.number: round(p.chunk.dense.score if p.chunk.dense else 0.0, 4)
                      for p in passages},
    }

    best = max((p.chunk.dense.score for p in passages if p.chunk.dense), default=0.0)
    base["similarity"] = round(best, 4)
    weak = _weak_support(response, passages, best, options)
    if weak:
        timings["total"] = _ms(started)
        yield Answer(text=NO_ANSWER, abstained=True, reason=weak, sources=[], **base)
        return

    request = build_request(question, passages, max_new_tokens=options.max_new_tokens)
    pieces: list[str] = []
    generating = time.perf_counter()
    for piece in generator.stream(request):
        pieces.append(piece)
        yield Token(piece)
    draft = "".join(pieces).strip()
    timings["generation"] = _ms(generating)

    checking = time.perf_counter()
    result = _finish(draft, options, base, _verifier(domain, options))
    timings["verification"] = _ms(checking)
    timings["total"] = _ms(started)
    yield result


def reverify(result: Answer, options: AnswerOptions, domain: str | Domain | None = None) -> Answer:
    """The answer the same draft gives under other verification options.

    Evaluation compares verification methods on one generation per question this way; an
    answer that abstained before generating stays as it is. ``"model"`` uses
    ``options.verifier``, else ``domain``'s promoted verifier.
    """
    if not result.draft and result.abstained:
        return result
    started = time.perf_counter()
    base = {
        "question": result.question, "passages": result.passages, "backend": result.backend,
        "verification": options.verify, "timings_ms": dict(result.timings_ms),
        "passage_texts": result.passage_texts, "similarity": result.similarity,
        "relevance": result.relevance,
    }
    again = _finish(result.draft, options, base, _verifier(domain, options))
    spent = _ms(started)
    previous = result.timings_ms.get("verification", 0.0)
    again.timings_ms["verification"] = spent
    again.timings_ms["total"] = round(result.timings_ms.get("total", 0.0) - previous + spent, 1)
    return again


def _generator_for(domain: str | Domain, name: str | None) -> Generator:
    """The backend; for the local one, the domain's promoted fine-tuned model if it has one
    whose files are here."""
    if (name or settings.KMS_GENERATOR).strip().lower() == "local":
        served = served_generator(domain)
        if served is not None and (served / "config.json").is_file():
            return get_generator("local", model_path=str(served))
    return get_generator(name)


def _verifier(domain: str | Domain | None, options: AnswerOptions) -> Path | None:
    """The verifier directory "model" checks with: the option's, else the domain's promoted
    one (None: there is none, and the lexical check stands in)."""
    if options.verify != "model":
        return None
    if options.verifier:
        return Path(options.verifier)
    return served_verifier(domain) if domain is not None else None


def _check(sentences: list[AnswerSentence], options: AnswerOptions, passages: dict[int, str],
           verifier: Path | None) -> tuple[list[SentenceCheck], str, str]:
    """The support checks, the method that ran, and why it is not the one asked for.

    A missing or unloadable verifier never leaves an answer unchecked: the lexical check at
    its own threshold runs instead, and the answer says so.
    """
    pairs = [(s.text, s.cited) for s in sentences]
    # A sentence whose only markers were made up is not rescued: its author guessed.
    attribute = [not s.invalid for s in sentences]
    if options.verify != "model":
        return verify(pairs, passages, options.verify, options.threshold,
                      attribute=attribute), options.verify, ""
    if verifier is None:
        note = ("No verifier is promoted for this domain (train one with manage.py "
                "train_verifier): checked lexically instead.")
    else:
        try:
            return verify(pairs, passages, "model", options.threshold, attribute=attribute,
                          verifier=verifier), "model", ""
        except VerifierUnavailable as exc:
            note = f"{exc} Checked lexically instead."
    return verify(pairs, passages, "lexical", LEXICAL_THRESHOLD,
                  attribute=attribute), "lexical", note


def _off_topic(kept: list[Claim], options: AnswerOptions, relevance: dict[int, float]) -> str:
    """Why the cited passages do not answer the question, or "" when one of them does.

    A sentence can be true to its passage and still be about something else: the passage
    closest to the question is the best evidence of what the question is about, so an answer
    citing only passages far less similar to the question than that one does not address it.
    """
    cited = {n for c in kept for n in c.citations}
    if not relevance or not cited or options.relevance_margin >= 1:
        return ""
    best = max(relevance.values())
    closest = max(relevance.get(n, 0.0) for n in cited)
    if closest >= best - options.relevance_margin:
        return ""
    return (f"The answer cites only passages less related to the question ({closest:.2f}) "
            f"than the closest one ({best:.2f}, margin {options.relevance_margin:.2f}, "
            "KMS_ANSWER_RELEVANCE_MARGIN): it does not address the question.")


def _weak_support(
    response: SearchResponse, passages: list[SourcePassage], best: float,
    options: AnswerOptions,
) -> str:
    """Why the passages are too weak to answer from, or "" when they will do."""
    if not passages and response.documents:
        return (
            "Every matching passage is longer than the passage budget "
            f"({options.passage_tokens} tokens, KMS_ANSWER_PASSAGE_TOKENS)."
        )
    if not passages:
        return response.message or "No passage in this domain matches the question."
    if not any(p.chunk.dense for p in passages):
        return "The passages matched only by keywords; none is close in meaning to the question."
    if best < options.min_similarity:
        return (
            f"The closest passage is only {best:.2f} similar to the question (the minimum is "
            f"{options.min_similarity:.2f}): the knowledge base does not seem to cover it."
        )
    return ""


def _refusal_parts(draft: str) -> tuple[bool, str]:
    """Whether the draft is only a refusal, and the draft without any refusal sentence."""
    flat = MARKER_LIKE.sub("", " ".join(draft.split())).strip()
    refusal = NO_ANSWER.rstrip(".")
    if not flat or flat.lower().rstrip(". ") == refusal.lower():
        return True, ""
    rest = re.sub(re.escape(refusal) + r"\.?", "", draft, flags=re.IGNORECASE).strip()
    return not rest, rest


def _finish(draft: str, options: AnswerOptions, base: dict,
            verifier: Path | None = None) -> Answer:
    base = dict(base)
    numbers = set(base["passage_texts"])
    only_refusal, content = _refusal_parts(draft)
    if only_refusal:
        return Answer(
            text=NO_ANSWER, abstained=True, sources=[], draft=draft,
            reason="The generator found no answer in the passages.", **base,
        )
    # Marker-like text the parser does not take as a citation ("[Passage 2]", "[^1]") goes, so
    # nothing that looks like a citation reaches the reader without resolving to a source.
    sentences = [
        AnswerSentence(MARKER_LIKE.sub("", s.text).strip(), s.cited, s.invalid, s.start, s.end)
        for s in parse_citations(content, numbers)
    ]
    sentences = [s for s in sentences if s.text]
    if options.verify == "none":
        claims = [Claim(s.text, s.cited, s.cited, None, None, s.invalid) for s in sentences]
    else:
        checks, base["verification"], base["verification_note"] = _check(
            sentences, options, base["passage_texts"], verifier)
        claims = [
            Claim(
                s.text, s.cited, check.supporting, check.supported, check.score, s.invalid,
                kept=check.supported or options.policy == "flag",
                attributed=check.supported and not s.cited, contradicted=check.contradicted,
            )
            for s, check in zip(sentences, checks, strict=True)
        ]
    kept = [c for c in claims if c.kept]
    if options.verify != "none" and not any(c.citations for c in kept):
        return Answer(
            text=NO_ANSWER, abstained=True, sources=[], draft=draft, claims=claims,
            reason="No sentence of the generated answer is supported by a passage it cites.",
            **base,
        )
    off_topic = _off_topic(kept, options, base["relevance"]) if options.verify != "none" else ""
    if off_topic:
        return Answer(text=NO_ANSWER, abstained=True, sources=[], draft=draft, claims=claims,
                      reason=off_topic, off_topic=True, **base)
    text = render([AnswerSentence(c.text, c.citations, (), 0, 0) for c in kept])
    used = {n for c in kept for n in c.citations}
    by_number = {citation.number: citation for citation in base["passages"]}
    return Answer(
        text=text, abstained=False, reason="", draft=draft, claims=claims,
        sources=[by_number[n] for n in sorted(used)], **base,
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
