"""Embedding spaces: which vectors a domain serves, fills and switches to (blue/green).

A domain serves one space (``Domain.embedding_space``). When its target changes (a tuned
embedder is promoted, rolled back, or ``KMS_EMBEDDING_MODEL``/``KMS_EMBEDDING_BACKEND``
changed), the target becomes its ``next_space``: new chunks get vectors in both, the served
chunks are filled into the next space in the background, and search switches in one
transaction once every served chunk has its vector there. Old vectors stay, so switching
back needs no re-embedding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from kms.store import model_files
from kms.store.models import Chunk, ChunkSet, ChunkVector, Domain, EmbeddingSpace, ModelRun
from search.ingestion.embedding import Embedder, ModelNotFoundError, get_embedder, passage_text

logger = logging.getLogger(__name__)

SERVED_CHUNKS = Q(is_current=True)
BUILDING_CHUNKS = Q(chunk_set__state=ChunkSet.State.BUILDING)


class SpaceUnavailable(RuntimeError):
    """A space's model cannot be loaded as it was (files deleted or changed)."""


def space_of(embedder: Embedder) -> EmbeddingSpace:
    """The space ``embedder``'s vectors belong to, registered (with its index) on first use."""
    space, created = EmbeddingSpace.objects.get_or_create(
        name=embedder.version, defaults={
            "model_path": str(embedder.path), "backend": embedder.backend_used,
            "dimensions": embedder.dimensions,
        },
    )
    if created:
        ensure_index(space)
    return space


def default_space() -> EmbeddingSpace:
    """The space of the configured model and backend (what an untuned domain serves)."""
    return space_of(get_embedder())


def ensure_index(space: EmbeddingSpace) -> None:
    """The space's own HNSW index: partial on its rows, cast to its dimension (pgvector's
    way to index vectors of several dimensions in one column)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [space.index_name])
        if cursor.fetchone()[0]:
            return
        if connection.in_atomic_block:  # PostgreSQL will not index under deferred checks
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {space.index_name} ON store_chunkvector USING hnsw "
            f"((embedding::vector({int(space.dimensions)})) vector_cosine_ops) "
            f"WITH (m = 16, ef_construction = 64) WHERE space_id = {int(space.pk)}"
        )
        if connection.in_atomic_block:
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def embedder_for(space: EmbeddingSpace) -> Embedder:
    """The model that made ``space``'s vectors; SpaceUnavailable if it is gone or changed
    (its query vectors would not be comparable)."""
    try:
        model_files.ensure_local(Path(space.model_path))  # a fine-tuned run's, on this node
        embedder = get_embedder(space.model_path, space.backend)
        version = embedder.version
    except (ModelNotFoundError, OSError, ValueError, model_files.ModelFilesUnavailable) as exc:
        raise SpaceUnavailable(f"The model of embedding space {space.name} cannot be loaded "
                               f"from {space.model_path}: {exc}") from exc
    if version != space.name:
        raise SpaceUnavailable(
            f"The files at {space.model_path} are now {version}, not {space.name}; restore "
            "them or roll the domain back to another model."
        )
    return embedder


def served_space(domain: Domain) -> EmbeddingSpace:
    """The space dense search uses for ``domain`` now (read from the database, not from the
    possibly stale ``domain`` object; the default space until the domain has vectors)."""
    served, following = Domain.objects.filter(pk=domain.pk).values_list(
        "embedding_space_id", "next_space_id").get()
    if served is None:
        space = default_space()
        Domain.objects.filter(pk=domain.pk, embedding_space__isnull=True).update(
            embedding_space=space)
        served = Domain.objects.filter(pk=domain.pk).values_list(
            "embedding_space_id", flat=True).get()
    domain.embedding_space_id, domain.next_space_id = served, following
    return _space(served)


def _space(pk: int) -> EmbeddingSpace:
    return EmbeddingSpace.objects.get(pk=pk)


def target_space(domain: Domain) -> EmbeddingSpace:
    """What the domain should serve: its promoted embedder, else the configured model."""
    run = (ModelRun.objects.filter(domain=domain, kind=ModelRun.Kind.EMBEDDER,
                                   state=ModelRun.State.PROMOTED, space__isnull=False)
           .select_related("space").first())
    return run.space if run else default_space()


def wanted_spaces(domain: Domain) -> list[EmbeddingSpace]:
    """The spaces new chunks of ``domain`` need vectors in: the served one and the next."""
    spaces = [served_space(domain)]  # also refreshes domain.next_space_id
    if domain.next_space_id and domain.next_space_id != spaces[0].pk:
        spaces.append(_space(domain.next_space_id))
    return spaces


def lacking(space: EmbeddingSpace) -> Q:
    """Chunks without a vector in ``space``."""
    return ~Q(Exists(ChunkVector.objects.filter(chunk=OuterRef("pk"), space=space)))


def begin_switch(domain: Domain, space: EmbeddingSpace) -> bool:
    """Make ``space`` the domain's next space (or drop the next one if it is served).

    Returns whether a switch is under way. Idempotent; ``switch_if_complete`` finishes it.
    """
    ensure_index(space)
    with transaction.atomic():
        domain = Domain.objects.select_for_update().get(pk=domain.pk)
        served = domain.embedding_space_id
        if served is None or served == space.pk:
            Domain.objects.filter(pk=domain.pk).update(embedding_space=space, next_space=None)
            return False
        Domain.objects.filter(pk=domain.pk).update(next_space=space)
    return True


def switch_if_complete(domain: Domain) -> bool:
    """Serve the next space once every served chunk has its vector there (one transaction)."""
    with transaction.atomic():
        domain = Domain.objects.select_for_update().get(pk=domain.pk)
        if domain.next_space_id is None:
            return False
        pending = Chunk.objects.filter(SERVED_CHUNKS, domain=domain).filter(
            lacking(domain.next_space))
        if pending.exists():
            return False
        logger.info("Domain %s now serves %s (was %s)", domain.slug, domain.next_space,
                    domain.embedding_space)
        Domain.objects.filter(pk=domain.pk).update(
            embedding_space=domain.next_space_id, next_space=None)
    return True


def remaining(domain: Domain, space: EmbeddingSpace) -> int:
    """Served chunks of ``domain`` still without a vector in ``space``."""
    return Chunk.objects.filter(SERVED_CHUNKS, domain=domain).filter(lacking(space)).count()


def embed_into(
    targets: list[EmbeddingSpace], chunks: QuerySet[Chunk], *, claim_size: int,
    time_budget: float, on_claim: Callable[[list[Chunk]], object] | None = None,
) -> tuple[int, bool]:
    """Vectors in each of ``targets`` for the chunks of ``chunks`` lacking one, claim by
    claim with ``SKIP LOCKED`` (workers share the work), for up to ``time_budget`` seconds;
    ``on_claim`` runs after each claim commits.

    Returns (chunks embedded, whether more are waiting).
    """
    if not targets:
        return 0, False
    embedders = [(space, embedder_for(space)) for space in targets]
    missing = lacking(targets[0])
    for space in targets[1:]:
        missing |= lacking(space)
    started = time.monotonic()
    total = 0
    while True:
        with transaction.atomic():
            rows = list(
                chunks.filter(missing).select_for_update(skip_locked=True, of=("self",))
                .select_related("document").order_by("pk")[:claim_size]
            )
            if not rows:
                return total, False
            for space, embedder in embedders:
                have = set(ChunkVector.objects.filter(space=space, chunk__in=rows)
                           .values_list("chunk_id", flat=True))
                todo = [c for c in rows if c.pk not in have]
                if todo:
                    write_vectors(space, todo, embedder.encode(
                        [passage_text(c.document.title, c.heading, c.text) for c in todo]))
        total += len(rows)
        if on_claim is not None:
            on_claim(rows)
        if time.monotonic() - started > time_budget:
            return total, chunks.filter(missing).exists()


def write_vectors(space: EmbeddingSpace, chunks: Iterable[Chunk], vectors) -> None:
    now = timezone.now()
    ChunkVector.objects.bulk_create(
        [ChunkVector(chunk=chunk, space=space, embedding=vector, embedded_at=now)
         for chunk, vector in zip(chunks, vectors, strict=True)],
        ignore_conflicts=True, batch_size=500,
    )


def fill(domain: Domain, *, claim_size: int, time_budget: float) -> tuple[int, bool]:
    """Background work for one domain: served chunks lacking a vector of a wanted space
    (the next space during a switch; the served one after a roll back or a lost batch),
    then the switch once the next space is complete. Returns (vectors written, more)."""
    total, more = embed_into(wanted_spaces(domain),  # read fresh from the database
                             Chunk.objects.filter(SERVED_CHUNKS, domain=domain),
                             claim_size=claim_size, time_budget=time_budget)
    if not more:
        switch_if_complete(domain)
    return total, more


def domains_to_fill() -> list[Domain]:
    """Domains whose served chunks lack vectors of a wanted space, or whose target moved."""
    found = []
    for domain in Domain.objects.all():
        if domain.embedding_space_id is None:
            continue  # nothing embedded yet: ingestion sets the space
        target = target_space(domain)
        if target.pk not in (domain.embedding_space_id, domain.next_space_id):
            begin_switch(domain, target)  # wanted_spaces below reads the new next space
        if any(Chunk.objects.filter(SERVED_CHUNKS, domain=domain).filter(lacking(space))
               .exists() for space in wanted_spaces(domain)) or domain.next_space_id:
            found.append(domain)
    return found


def query_space(domain: Domain) -> tuple[EmbeddingSpace, Embedder, str]:
    """The space dense search uses for ``domain``, its embedder, and a note for the user.

    When the served space's model cannot be loaded (its files were deleted or changed), the
    newest other space that holds vectors of this domain's served chunks takes over, so
    search keeps working on the last good model; the note says what to fix.
    """
    served = served_space(domain)
    try:
        return served, embedder_for(served), ""
    except SpaceUnavailable as exc:
        logger.error("Domain %s: %s", domain.slug, exc)
        problem = str(exc)
    others = (EmbeddingSpace.objects.exclude(pk=served.pk)
              .filter(Exists(ChunkVector.objects.filter(
                  space=OuterRef("pk"), chunk__domain=domain, chunk__is_current=True)))
              .order_by("-pk"))
    for space in others:
        try:
            return space, embedder_for(space), (
                f"{problem} Dense search uses the previous model ({space.name}) meanwhile.")
        except SpaceUnavailable:
            continue
    raise SpaceUnavailable(problem)
