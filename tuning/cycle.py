"""One fine-tuning cycle of a domain model: pairs, training, the gate, and the registry.

``collect`` gathers the domain's pairs (dataset files and synthetic pairs from the served
corpus; curated pairs and feedback join once the portal stores them), splits off held-out
queries that are never trained on and mines hard negatives with the served retriever.
``run_cycle`` trains the run's model, judges it against the served one on the held-out
queries and records the outcome; a run that passes is promoted (an embedder's space is then
filled beside the served one and search switches when it is complete).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from django.conf import settings

from kms.access import Access, visible_documents
from kms.store.models import Domain, ModelRun
from search.ingestion import spaces
from search.ingestion.beir import beir_prefix, read_split
from search.ingestion.embedding import Embedder, passage_text
from search.retrieval import reranking
from search.retrieval.search import SearchError, rerank_passage, search
from tuning import registry
from tuning.data.negatives import mine_negatives
from tuning.data.pairs import TrainingPair, dataset_pairs, split_held_out, synthetic_pairs
from tuning.evaluation.gate import GateResult, decide, dense_ranker, scores
from tuning.params import EmbedderParams, RerankerParams
from tuning.training.embedder import train_embedder
from tuning.training.reranker import train_reranker

logger = logging.getLogger(__name__)

# Training reads every served document of the domain, whoever may see it.
TRAINING = Access.everything("domain fine-tuning")

OnStep = Callable[[int, int, float | None], None]
# Pairs a person asked or judged; synthetic pairs are made from the corpus.
REAL_SOURCES = ("dataset", "curated", "feedback")


RETRIEVAL_KINDS = (ModelRun.Kind.EMBEDDER.value, ModelRun.Kind.RERANKER.value)


class CycleError(ValueError):
    """The cycle cannot run as asked; the message says what to add or change."""


@dataclass(frozen=True)
class DataOptions:
    dataset_dir: Path | None = None
    split: str = "train"
    real_pairs: bool = True  # False: label-free, synthetic pairs only (even with a dataset)
    synthetic: bool = True
    synthetic_limit: int | None = None
    held_out: float = 0.2
    seed: int = 13

    @classmethod
    def for_domain(cls, domain: Domain, **overrides) -> DataOptions:
        """Per-domain options (``Domain.options["tuning"]``) under explicit overrides."""
        options = dict(tuning_options(domain).get("data", {}))
        if options.get("dataset_dir"):
            options["dataset_dir"] = Path(options["dataset_dir"])
        options.setdefault("held_out", settings.KMS_TUNING_HELD_OUT)
        options.setdefault("synthetic_limit", settings.KMS_TUNING_SYNTHETIC_LIMIT)
        options.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise CycleError(f"Unknown tuning data options {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}.")
        return cls(**options)


@dataclass
class DomainData:
    """What a cycle trains and judges on; passages are keyed by document id."""

    train: list[TrainingPair]
    held_out_queries: dict[str, str]
    held_out_qrels: dict[str, dict[str, int]]
    passages: dict[str, str]
    counts: dict[str, object] = field(default_factory=dict)


def tuning_options(domain: Domain) -> dict:
    options = domain.options if isinstance(domain.options, dict) else {}
    return options.get("tuning", {}) if isinstance(options.get("tuning", {}), dict) else {}


def served_corpus(domain: Domain) -> dict[str, tuple[str, str, str]]:
    """document id -> (source, title, served text), through the access module."""
    rows = (visible_documents(TRAINING).filter(domain=domain, current_version__isnull=False)
            .order_by("pk").values_list("pk", "source", "title",
                                        "current_version__extracted_text"))
    return {str(pk): (source, title, text) for pk, source, title, text in rows if text}


def collect(domain: Domain, options: DataOptions, *, hard_negatives: int = 0,
            random_negatives: int = 0, synthetic_beside_real: bool = True,
            on_stage: Callable[[str], None] | None = None) -> DomainData:
    """The domain's pairs: held out by query (real queries when there are any, else
    synthetic ones), the rest for training, with ``hard_negatives`` mined and
    ``random_negatives`` drawn per training pair: for the real pairs, or for up to
    ``KMS_TUNING_MINE_LIMIT`` synthetic ones when there are none (an embedder also has the
    batch's other passages). ``synthetic_beside_real=False`` trains on the real pairs alone
    when there are any: a reranker learns the real queries' task, which synthetic ones
    (a title, a sentence) are not."""
    say = on_stage or (lambda _: None)
    corpus = served_corpus(domain)
    if not corpus:
        raise CycleError(f"Domain {domain.slug} has no served documents to train on.")
    passages = {key: passage_text(title, "", text) for key, (_, title, text) in corpus.items()}
    real, real_qrels = _dataset_pairs(options, corpus, passages) if options.real_pairs else ([], {})
    synthetic = []
    if options.synthetic:
        synthetic = synthetic_pairs(
            [(key, title, text) for key, (_, title, text) in corpus.items()],
            seed=options.seed, limit=options.synthetic_limit)
    if not options.real_pairs and not options.synthetic:
        raise CycleError("Synthetic pairs only, and no synthetic pairs: allow one or the other.")
    if not real and not synthetic:
        raise CycleError(
            f"No training pairs for {domain.slug}: give a dataset (--dataset DIR, BEIR "
            "layout, its corpus imported with import_beir) or allow synthetic pairs.")
    if real:
        train_real, held = split_held_out(real, options.held_out, options.seed)
        train = train_real + (synthetic if synthetic_beside_real else [])
        queries = {pair.group: pair.query for pair in held}
        qrels = {qid: real_qrels[qid] for qid in queries}
        held_from = "dataset"
    else:
        train, held = split_held_out(synthetic, options.held_out, options.seed)
        queries = {f"synthetic-{i}": pair.query for i, pair in enumerate(held)}
        qrels = {f"synthetic-{i}": {pair.group: 1} for i, pair in enumerate(held)}
        held_from = "synthetic"
    if not train:
        raise CycleError(f"Every pair of {domain.slug} is held out; add pairs.")
    if hard_negatives or random_negatives:
        train = _with_negatives(domain, train, passages, real_qrels,
                                (hard_negatives, random_negatives), options, say)
    if held_from == "synthetic":
        passages = _without_queries(passages, queries, qrels)
    counts = {
        "documents": len(corpus),
        "train_pairs": len(train),
        "held_out_queries": len(queries),
        "held_out_from": held_from,
        "by_source": _by_source(train),
        "with_negatives": sum(1 for pair in train if pair.negatives),
    }
    return DomainData(train, queries, qrels, passages, counts)


def _with_negatives(domain: Domain, train: list[TrainingPair], passages: dict[str, str],
                    real_qrels: dict, negatives: tuple[int, int], options: DataOptions,
                    say: Callable[[str], None]) -> list[TrainingPair]:
    """``negatives`` (hard, random) per pair: hard ones from the served retriever (one search
    per query), for the real pairs or, without any, up to ``KMS_TUNING_MINE_LIMIT``
    synthetic ones."""
    real = [pair for pair in train if pair.source in REAL_SOURCES]
    rest = [pair for pair in train if pair.source not in REAL_SOURCES]
    chosen = list(real)
    if real:
        kept = rest
    else:
        order = list(range(len(rest)))
        random.Random(options.seed).shuffle(order)
        picked = set(order[:settings.KMS_TUNING_MINE_LIMIT])
        chosen += [pair for i, pair in enumerate(rest) if i in picked]
        kept = [pair for i, pair in enumerate(rest) if i not in picked]
    hard, drawn = negatives
    say(f"Mining negatives for {len(chosen)} pairs ({hard} from the served retriever, "
        f"{drawn} at random)")
    relevant = {pair.group: set(real_qrels.get(pair.group, {})) | {pair.group}
                for pair in chosen}
    mined = mine_negatives(
        chosen, lambda query: _retrieve(domain, query), passages, hard=hard, random=drawn,
        seed=options.seed, positives_of=lambda pair: relevant.get(pair.group, set()))
    return mined + kept


def _without_queries(passages: dict[str, str], queries: dict[str, str],
                     qrels: dict[str, dict[str, int]]) -> dict[str, str]:
    """The passages with each synthetic held-out query cut from its document: it is a title
    or a sentence of it, and the gate should judge finding the document by meaning, as
    training did, not spotting a copy."""
    cut = dict(passages)
    for qid, query in queries.items():
        for key in qrels[qid]:
            cut[key] = cut[key].replace(query, " ").strip()
    return cut


def _dataset_pairs(options: DataOptions, corpus, passages) -> tuple[list, dict]:
    if options.dataset_dir is None:
        return [], {}
    queries, qrels = read_split(Path(options.dataset_dir), options.split)
    prefix = beir_prefix(Path(options.dataset_dir))
    key_of = {source[len(prefix):]: key for key, (source, _, _) in corpus.items()
              if source.startswith(prefix)}
    if not key_of:
        raise CycleError(f"No document of this domain comes from {options.dataset_dir} (its "
                         f"sources start with {prefix!r}); import it with import_beir first.")
    mapped = {qid: {key_of[d]: r for d, r in judged.items() if d in key_of and r > 0}
              for qid, judged in qrels.items()}
    mapped = {qid: judged for qid, judged in mapped.items() if judged}
    return dataset_pairs(queries, mapped, passages), mapped


def _by_source(pairs: list[TrainingPair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.source] = counts.get(pair.source, 0) + 1
    return counts


def _retrieve(domain: Domain, query: str, k: int = 30) -> list[str]:
    """Document ids as the domain serves them: what hard negatives are mined from."""
    return list(_ranking(domain, query, k, True))


def _ranking(domain: Domain, query: str, k: int,
             rerank: bool | reranking.Reranker) -> dict[str, float]:
    try:
        response = search(query, domain=domain, access=TRAINING, k=k, rerank=rerank,
                          chunks_per_document=1)
    except SearchError:
        return {}
    return {str(hit.document_id): hit.score for hit in response.documents}


def run_cycle(run: ModelRun, options: DataOptions, *, on_step: OnStep | None = None,
              on_stage: Callable[[str], None] | None = None) -> ModelRun:
    """Train, judge and record ``run`` (queued); returns it promoted, rejected or failed."""
    say = on_stage or (lambda _: None)
    return run_guarded(run, lambda: _train_and_judge(run, options, on_step, say))


def recording(run: ModelRun, on_step: OnStep | None) -> OnStep:
    """A trainer's step callback that records the run's progress, then calls ``on_step``."""
    def step(done: int, total: int, loss: float | None) -> None:
        registry.record_progress(run, done, total, loss)
        if on_step is not None:
            on_step(done, total, loss)
    return step


def run_guarded(run: ModelRun, train_and_judge: Callable[[], ModelRun]) -> ModelRun:
    """Claim the queued run, then ``train_and_judge()``; any failure or interruption marks
    the run failed with its reason (and is raised again) so no run is left training."""
    if not registry.begin_training(run):
        run.refresh_from_db()
        return run
    try:
        return train_and_judge()
    except KeyboardInterrupt:
        registry.fail(run, "Interrupted (Ctrl+C or SIGTERM) at step "
                      f"{run.progress_step}/{run.progress_total}. Start a new run.")
        raise
    except Exception as exc:
        registry.fail(run, f"{type(exc).__name__}: {exc}")
        raise


def _train_and_judge(run: ModelRun, options: DataOptions, on_step: OnStep | None,
                     say: Callable[[str], None]) -> ModelRun:
    domain = run.domain
    embedder = run.kind == ModelRun.Kind.EMBEDDER
    params = (EmbedderParams if embedder else RerankerParams).from_options(run.params)
    data = collect(domain, options, hard_negatives=params.hard_negatives,
                   random_negatives=0 if embedder else params.random_negatives,
                   synthetic_beside_real=embedder, on_stage=say)
    output = registry.run_directory(run)
    step = recording(run, on_step)
    say(f"Training the {run.kind} on {len(data.train)} pairs")
    started = time.perf_counter()
    train = train_embedder if embedder else train_reranker
    result = train(Path(run.base_model), data.train, params, output, step)
    counts = {**data.counts, "train_pairs": result.train_pairs, "steps": result.steps,
              "training_seconds": round(time.perf_counter() - started, 1)}
    say(f"Judging it on {len(data.held_out_queries)} held-out queries")
    gate = (_gate_embedder if embedder else _gate_reranker)(run, data, output)
    if data.counts["held_out_from"] == "synthetic":
        gate = _label_free(domain, gate)
    registry.finish(run, model_dir=output, data_counts=counts, loss_curve=result.loss_curve,
                    metrics=gate.as_dict(), passed=gate.passed)
    run.refresh_from_db()
    return run


def _label_free(domain: Domain, gate: GateResult) -> GateResult:
    """A pass on synthetic held-out queries alone is not promoted unless the domain allows it:
    on SciFact, a label-free embedder gained 2.2 points on them and lost 2.5 on real ones."""
    allowed = tuning_options(domain).get("promote_label_free",
                                         settings.KMS_TUNING_PROMOTE_LABEL_FREE)
    if not gate.passed or allowed:
        return gate
    return replace(gate, passed=False, reason=(
        f"Passed on synthetic held-out queries only ({gate.reason}) Not promoted: queries "
        "made from the documents do not show what real questions gain. Check it, then "
        "promote it in the admin (Model runs); or add a dataset or curated pairs; or set "
        "the domain's tuning option promote_label_free."))


def margin(domain: Domain) -> float:
    return float(tuning_options(domain).get("gate_margin", settings.KMS_TUNING_GATE_MARGIN))


def _gate_embedder(run: ModelRun, data: DomainData, output: Path) -> GateResult:
    """Dense retrieval with the candidate against the served model, on the held-out
    queries over their relevant documents plus a seeded sample of the others."""
    relevant = {key for judged in data.held_out_qrels.values() for key in judged}
    others = sorted(set(data.passages) - relevant)
    random.Random(13).shuffle(others)
    keys = sorted(relevant) + others[:max(settings.KMS_TUNING_GATE_DOCUMENTS - len(relevant), 0)]
    texts = [data.passages[key] for key in keys]
    candidate = Embedder(output, settings.KMS_EMBEDDING_BACKEND)  # as it would be served
    served = spaces.embedder_for(spaces.served_space(run.domain))
    candidate_scores = scores(data.held_out_queries, data.held_out_qrels,
                              dense_ranker(candidate.encode, keys, texts))
    served_scores = scores(data.held_out_queries, data.held_out_qrels,
                           dense_ranker(served.encode, keys, texts))
    result = decide(candidate_scores, served_scores, margin(run.domain),
                    len(data.held_out_queries))
    logger.info("Gate for %s: %s", run, result.reason)
    return result


def _gate_reranker(run: ModelRun, data: DomainData, output: Path) -> GateResult:
    """Served search (with the served reranker, if any) against the same search reranked
    by the candidate, on the held-out queries over the whole domain. The candidate's weight
    against the fused score is the best of ``weights_to_try`` on those queries, so a
    reranker that is only good at breaking ties gets a small say; it is served with it."""
    domain = run.domain
    candidate = reranking.reranker_for(domain, run.pk, output)  # as it would be served
    weights = reranking.weights_to_try(domain)
    blended = {query: _blends(domain, query, candidate, weights)
               for query in data.held_out_queries.values()}
    tried = {weight: scores(data.held_out_queries, data.held_out_qrels,
                            lambda q, weight=weight: blended[q][weight]) for weight in weights}
    best = max(weights, key=lambda weight: (tried[weight]["ndcg@10"], -weight))
    served_scores = scores(data.held_out_queries, data.held_out_qrels,
                           lambda q: _ranking(domain, q, 100, True))
    result = decide(tried[best], served_scores, margin(domain), len(data.held_out_queries))
    result = replace(result, chosen={"weight": best, "depth": candidate.depth,
                                     "tried": {f"{w:g}": tried[w] for w in weights}})
    logger.info("Gate for %s: %s (weight %s)", run, result.reason, best)
    return result


def _blends(domain: Domain, query: str, reranker: reranking.Reranker,
            weights: tuple[float, ...]) -> dict[float, dict[str, float]]:
    """Served fused search reranked at each weight, scoring its top documents once."""
    try:
        hits = search(query, domain=domain, access=TRAINING, k=100, rerank=False,
                      chunks_per_document=1).documents
    except SearchError:
        return {weight: {} for weight in weights}
    head, tail = hits[:reranker.depth], hits[reranker.depth:]
    model = reranking.rerank_scores(reranker, query, [rerank_passage(hit) for hit in head])
    fused = [hit.score for hit in head]
    rankings = {}
    for weight in weights:
        ranked = [head[item.position] for item in reranking.reorder(model, fused, weight)] + tail
        rankings[weight] = {str(hit.document_id): float(len(ranked) - n)
                            for n, hit in enumerate(ranked)}
    return rankings


def stored_options(run: ModelRun) -> dict:
    """The run's data options as DataOptions arguments (paths back from strings)."""
    options = dict(run.data_options)
    if options.get("dataset_dir"):
        options["dataset_dir"] = Path(options["dataset_dir"])
    return options


def new_run(domain: Domain, kind: str, params: dict | None = None,
            data: DataOptions | None = None) -> ModelRun:
    """A queued run of ``kind`` for ``domain``, starting from the served model (an embedder
    keeps improving on its last promoted self) with the domain's training parameters."""
    if kind not in RETRIEVAL_KINDS:
        raise CycleError(f"Unknown model kind {kind!r}; use one of {RETRIEVAL_KINDS} (a "
                         "verifier is trained by manage.py train_verifier).")
    options = {**tuning_options(domain).get(kind, {}), **(params or {})}
    checked = (EmbedderParams if kind == ModelRun.Kind.EMBEDDER else RerankerParams
               ).from_options(options)
    base = settings.KMS_EMBEDDING_MODEL
    if kind == ModelRun.Kind.EMBEDDER:
        served = registry.served_run(domain, kind)
        if served is not None and registry.files_present(served):
            base = served.model_dir
    data = data or DataOptions.for_domain(domain)
    stored = {name: str(value) if isinstance(value, Path) else value
              for name, value in asdict(data).items()}
    return registry.start_run(domain, kind, base_model=str(base), params=checked.as_dict(),
                              data_options=stored)
