"""Document processing: parse, chunk, embed, and the status each version moves through.

Every step is idempotent and works on a batch, so Celery can redeliver a task after a worker
dies (``acks_late``) and the version still ends with exactly one set of chunks:

* ``parse_versions``: stored file -> a *building* chunk set holding the extracted text and
  structure (pending -> processing). Files are parsed in a child process with memory and
  time limits (``search.ingestion.sandbox``).
* ``chunk_versions``: the building set's text -> its chunks, without vectors yet;
* ``embed_pending``: vectors for chunks that lack one, in batches across documents
  (``SKIP LOCKED``, so several workers share the work); a set whose chunks all have vectors
  becomes its version's active set in one transaction (``activate``), and only then is it
  served: search keeps returning the old chunks until that moment (blue/green).

One file never fails its batch: each version is parsed and chunked on its own, any error is
that version's failure, and a file that stopped the worker ``KMS_MAX_PROCESSING_ATTEMPTS``
times (counted per version, committed before the risky step) fails instead of being
redelivered forever. A document keeps serving its previous chunks when a version fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from kms.store.models import (
    Chunk,
    ChunkSet,
    Document,
    DocumentVersion,
    Domain,
    EmbeddingSpace,
    Publication,
    Status,
)
from search.ingestion import signals, spaces
from search.ingestion.chunking import chunk_document, load_tokenizer
from search.ingestion.embedding import checked_model_path
from search.ingestion.parsing import Block, Page, ParsedDocument, ParseError
from search.ingestion.sandbox import SandboxUnavailable, parse_untrusted

logger = logging.getLogger(__name__)

OPEN_STATES = (Status.PENDING, Status.PROCESSING)
# A copied set keeps the curator's exclusions (a re-chunked one starts afresh).
_CHUNK_FIELDS = ("document_id", "version_id", "domain_id", "ordinal", "text", "start_offset",
                 "end_offset", "page", "page_end", "heading", "token_count", "excluded")


# Errors of the machine, not of the file: the task retries, and no attempt is counted.
# (botocore's: the object store unreachable or timing out, KMS_FILE_STORAGE=s3.)
FILE_STORE_ERRORS = (BotoConnectionError, HTTPClientError)
TRANSIENT = (DatabaseError, ConnectionError, SandboxUnavailable, *FILE_STORE_ERRORS)


def parse_versions(
    version_ids: Iterable[int], *, stop_on: tuple[type[BaseException], ...] = ()
) -> list[int]:
    """Extract text and structure into a building set; returns the ids that parsed.

    ``stop_on``: exceptions that end the whole step (a task's time limit) rather than fail
    the file at hand; they propagate, and that file's attempt is not counted.
    """
    ids = list(version_ids)
    versions = list(
        DocumentVersion.objects.filter(pk__in=ids, status__in=OPEN_STATES)
        .select_related("document").order_by("pk")
    )
    if not versions:
        return []
    _mark_processing(versions)
    already = set(
        ChunkSet.objects.filter(version__in=versions, state=ChunkSet.State.BUILDING)
        .exclude(structure={}).values_list("version_id", flat=True)
    )  # parsed before a redelivery
    parsed_ok: list[int] = []
    for version in versions:
        if version.pk in already or _parse_one(version, stop_on):
            parsed_ok.append(version.pk)
    return parsed_ok


def _parse_one(version: DocumentVersion, stop_on: tuple[type[BaseException], ...]) -> bool:
    if not _begin_attempt(version.pk):
        return False
    try:
        data = _read_file(version)
        parsed, media_type = parse_untrusted(data, version.filename, version.media_type or None)
    except ParseError as exc:
        fail_version(version.pk, str(exc))
        return False
    except (*TRANSIENT, *stop_on):
        _undo_attempt(version.pk)
        raise
    except Exception as exc:  # a storage or parser bug fails this file, never its batch
        logger.exception("Parsing version %s failed unexpectedly", version.pk)
        fail_version(version.pk, _unexpected("reading", exc))
        return False
    with transaction.atomic():
        locked = DocumentVersion.objects.select_for_update().filter(
            pk=version.pk, status=Status.PROCESSING).first()  # the version row first, always
        if locked is None:  # failed or reset meanwhile
            return False
        ChunkSet.objects.filter(version=version, state=ChunkSet.State.BUILDING).delete()
        ChunkSet.objects.create(
            version=version, source=ChunkSet.Source.PARSE, extracted_text=parsed.text,
            structure=_structure(parsed), page_count=len(parsed.pages) or None,
        )
        DocumentVersion.objects.filter(pk=version.pk).update(media_type=media_type, attempts=0)
        document = version.document
        if parsed.title and document.title == default_title(version.filename):
            Document.objects.filter(pk=document.pk).update(
                title=parsed.title[:500], updated_at=timezone.now())
    return True


def chunk_versions(
    version_ids: Iterable[int], *, stop_on: tuple[type[BaseException], ...] = ()
) -> list[int]:
    """Give each parsed building set a fresh set of chunks (without vectors yet)."""
    sets = list(
        ChunkSet.objects.filter(
            version_id__in=list(version_ids), version__status=Status.PROCESSING,
            state=ChunkSet.State.BUILDING, source=ChunkSet.Source.PARSE,
        ).exclude(structure={}).select_related("version__document__domain").order_by("pk")
    )
    tokenizer = load_tokenizer(_tokenizer_path()) if sets else None
    chunked: list[int] = []
    for chunk_set in sets:
        version = chunk_set.version
        if not _begin_attempt(version.pk):
            continue
        domain = version.document.domain
        try:
            pieces = chunk_document(
                parsed_from(chunk_set.extracted_text, chunk_set.structure), tokenizer,
                max_tokens=domain.effective_chunk_tokens,
                overlap_tokens=domain.effective_chunk_overlap,
            )
        except (*TRANSIENT, *stop_on):
            _undo_attempt(version.pk)
            raise
        except Exception as exc:
            logger.exception("Chunking version %s failed unexpectedly", version.pk)
            fail_version(version.pk, _unexpected("chunking", exc))
            continue
        if not pieces:
            fail_version(version.pk, "The document has no text to index.")
            continue
        with transaction.atomic():
            if not DocumentVersion.objects.select_for_update().filter(
                    pk=version.pk, status=Status.PROCESSING).exists():
                continue  # failed or reset meanwhile
            locked = ChunkSet.objects.select_for_update().filter(
                pk=chunk_set.pk, state=ChunkSet.State.BUILDING
            ).first()
            if locked is None:
                continue
            Chunk.objects.filter(chunk_set=locked).delete()
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        document_id=version.document_id, version_id=version.pk,
                        domain_id=domain.pk, chunk_set=locked, ordinal=piece.ordinal,
                        text=piece.text, start_offset=piece.start, end_offset=piece.end,
                        page=piece.page, page_end=piece.page_end, heading=piece.heading[:1000],
                        token_count=piece.token_count,
                    )
                    for piece in pieces
                ],
                batch_size=500,
            )
            DocumentVersion.objects.filter(pk=version.pk).update(attempts=0)
        chunked.append(version.pk)
    return chunked


def embed_pending(claim_size: int | None = None, time_budget: float = 60.0) -> tuple[int, bool]:
    """Embed the chunks of building sets that lack a vector, for up to ``time_budget`` s.

    Each chunk gets a vector in every space its domain wants (the served one and, during a
    switch, the next one), so a document that arrives while a domain re-embeds is found in
    both. Claims are larger than one forward pass so the model can sort texts by length and
    pad little. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so concurrent workers never
    embed the same chunk twice, and a worker that dies releases its claim with its
    connection. Returns (vectors written, whether more are waiting).
    """
    size = claim_size or settings.KMS_EMBED_CLAIM_SIZE
    started = time.monotonic()
    total = 0
    for domain in Domain.objects.filter(
        pk__in=Chunk.objects.filter(spaces.BUILDING_CHUNKS).values("domain_id")
    ):
        count, more = spaces.embed_into(
            spaces.wanted_spaces(domain),
            Chunk.objects.filter(spaces.BUILDING_CHUNKS, domain=domain),
            claim_size=size, time_budget=max(time_budget - (time.monotonic() - started), 0.0),
            on_claim=lambda rows: finalize_chunk_sets({c.chunk_set_id for c in rows}),
        )
        total += count
        if more:
            return total, True
    return total, chunks_waiting()


def finalize_chunk_sets(chunk_set_ids: Iterable[int]) -> list[int]:
    """Activate the building sets whose chunks all have vectors; returns their versions."""
    building = ChunkSet.objects.filter(pk__in=list(chunk_set_ids),
                                       state=ChunkSet.State.BUILDING)
    complete = []
    for domain in Domain.objects.filter(
            pk__in=building.values("version__document__domain_id")):
        wanted = spaces.wanted_spaces(domain)  # once per domain, not per set
        complete += [chunk_set.pk for chunk_set in
                     building.filter(version__document__domain=domain)
                     if _has_all_vectors(chunk_set, wanted)]
    activated = [version_id for pk in complete if (version_id := activate(pk)) is not None]
    if activated:
        domain_ids = set(
            DocumentVersion.objects.filter(pk__in=activated).values_list(
                "document__domain_id", flat=True
            )
        )
        signals.send_on_commit(signals.versions_served, domain_ids=domain_ids)
    return activated


def _has_all_vectors(chunk_set: ChunkSet, wanted: list[EmbeddingSpace]) -> bool:
    """Every chunk of the set has a vector in every space of ``wanted``."""
    chunks = Chunk.objects.filter(chunk_set=chunk_set)
    return chunks.exists() and not any(chunks.filter(spaces.lacking(space)).exists()
                                       for space in wanted)


def activate(chunk_set_id: int) -> int | None:
    """Make a complete building set its version's active set, in one transaction.

    The set it replaces is deleted in the same transaction, so a search sees either the old
    chunks or the new ones, never neither. Returns the version id, or None if the set is no
    longer building (a concurrent worker activated it, or the version was reset).
    """
    version_id = ChunkSet.objects.filter(pk=chunk_set_id).values_list(
        "version_id", flat=True).first()
    if version_id is None:
        return None
    with transaction.atomic():
        # Locks in the pipeline's one order: the version row, then its chunk sets.
        version = DocumentVersion.objects.select_for_update().filter(pk=version_id).first()
        chunk_set = (
            ChunkSet.objects.select_for_update()
            .filter(pk=chunk_set_id, state=ChunkSet.State.BUILDING).first()
        )
        if version is None or chunk_set is None or version.status != Status.PROCESSING:
            return None
        wanted = spaces.wanted_spaces(Domain.objects.get(documents=version.document_id))
        if not _has_all_vectors(chunk_set, wanted):
            return None  # re-chunked since it was found complete
        replaced = version.active_chunks_id
        if chunk_set.source == ChunkSet.Source.PARSE:
            version.extracted_text = chunk_set.extracted_text
            version.structure = chunk_set.structure
            version.page_count = chunk_set.page_count
            chunk_set.extracted_text, chunk_set.structure = "", {}  # now kept on the version
        chunk_set.state = ChunkSet.State.ACTIVE
        chunk_set.activated_at = timezone.now()
        chunk_set.save(update_fields=["state", "activated_at", "extracted_text", "structure"])
        version.active_chunks = chunk_set
        version.status = Status.READY
        version.status_message = ""
        version.attempts = 0
        version.processed_at = chunk_set.activated_at
        version.save(update_fields=["extracted_text", "structure", "page_count",
                                    "active_chunks", "status", "status_message", "attempts",
                                    "processed_at"])
        if replaced:
            ChunkSet.objects.filter(pk=replaced).delete()
        _sync_document(version.document_id)
    return version.pk


def fail_version(version_id: int, reason: str) -> None:
    """Record why a version failed; its active chunks (if any) and the document's served
    version stay as they were."""
    logger.info("Version %s failed: %s", version_id, reason)
    with transaction.atomic():
        updated = DocumentVersion.objects.filter(pk=version_id).exclude(status=Status.READY)
        document_ids = list(updated.values_list("document_id", flat=True))
        updated.update(
            status=Status.FAILED, status_message=reason[:2000], processed_at=timezone.now(),
            attempts=0,
        )
        ChunkSet.objects.filter(version_id=version_id, state=ChunkSet.State.BUILDING).delete()
        for document_id in document_ids:
            _sync_document(document_id)


def reset_versions(version_ids: Iterable[int]) -> int:
    """Put versions back to pending so the pipeline runs them again from the stored file.

    Their active chunks keep being served until the new ones are ready.
    """
    ids = list(version_ids)
    with transaction.atomic():
        count = DocumentVersion.objects.filter(pk__in=ids).update(
            status=Status.PENDING, status_message="", attempts=0, queued_at=timezone.now()
        )
        ChunkSet.objects.filter(version_id__in=ids, state=ChunkSet.State.BUILDING).delete()
        for document_id in set(
            DocumentVersion.objects.filter(pk__in=ids).values_list("document_id", flat=True)
        ):
            _sync_document(document_id)
    return count


def rebuild_vectors(version_ids: Iterable[int]) -> int:
    """Start new vectors for the active chunks of these versions (after a model change).

    Each gets a building set with copies of its chunks and no vectors; ``embed_pending``
    fills them and the set replaces the served one when complete. Returns the chunk count.
    """
    count = 0
    with transaction.atomic():
        versions = list(
            DocumentVersion.objects.select_for_update()
            .filter(pk__in=list(version_ids), active_chunks__isnull=False)
            .exclude(status__in=OPEN_STATES)
        )
        for version in versions:
            ChunkSet.objects.filter(version=version, state=ChunkSet.State.BUILDING).delete()
            copy = ChunkSet.objects.create(version=version, source=ChunkSet.Source.COPY)
            rows = Chunk.objects.filter(chunk_set_id=version.active_chunks_id).order_by(
                "ordinal").values(*_CHUNK_FIELDS)
            created = Chunk.objects.bulk_create(
                [Chunk(chunk_set=copy, **row) for row in rows], batch_size=500
            )
            count += len(created)
            version.status = Status.PROCESSING
            version.status_message = ""
            version.queued_at = timezone.now()
            version.save(update_fields=["status", "status_message", "queued_at"])
            _sync_document(version.document_id)
    return count


def claim_stalled_versions(older_than_seconds: int) -> list[int]:
    """Versions still open long after they were queued (their task was lost), claimed for
    the caller: their ``queued_at`` restarts in the same transaction, and rows another caller
    is claiming are skipped, so two beats or overlapping runs never send one version twice."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        version_ids = list(
            DocumentVersion.objects.select_for_update(skip_locked=True)
            .filter(status__in=OPEN_STATES, queued_at__lt=cutoff)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        mark_queued(version_ids)
    return version_ids


def chunks_waiting() -> bool:
    """Chunks of building sets without a vector yet (embedding is still busy)."""
    return any(
        Chunk.objects.filter(spaces.BUILDING_CHUNKS, domain=domain).filter(
            spaces.lacking(space)).exists()
        for domain in Domain.objects.filter(
            pk__in=Chunk.objects.filter(spaces.BUILDING_CHUNKS).values("domain_id"))
        for space in spaces.wanted_spaces(domain)
    )


def open_versions(version_ids: Iterable[int]) -> list[int]:
    return list(
        DocumentVersion.objects.filter(pk__in=list(version_ids), status__in=OPEN_STATES)
        .order_by("pk").values_list("pk", flat=True)
    )


def mark_queued(version_ids: Iterable[int]) -> None:
    DocumentVersion.objects.filter(pk__in=list(version_ids)).update(queued_at=timezone.now())


def parsed_from(text: str, structure: dict) -> ParsedDocument:
    """Rebuild a stored parse result (re-chunking needs no re-parse)."""
    return ParsedDocument(
        text=text,
        blocks=[Block(s, e, kind, level) for s, e, kind, level in structure.get("blocks", [])],
        pages=[Page(n, s, e) for n, s, e in structure.get("pages", [])],
        title=structure.get("title"),
    )


def default_title(filename: str) -> str:
    """A readable title from a file name, used until the parser finds a real one."""
    stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or filename


def _structure(parsed: ParsedDocument) -> dict:
    return {
        "title": parsed.title,
        "blocks": [[b.start, b.end, b.kind, b.level] for b in parsed.blocks],
        "pages": [[p.number, p.start, p.end] for p in parsed.pages],
    }


def _begin_attempt(version_id: int) -> bool:
    """Count a risky step on this file, committed before it runs; False once it has stopped
    the worker too often (the version is then failed and the batch goes on)."""
    limit = settings.KMS_MAX_PROCESSING_ATTEMPTS
    with transaction.atomic():
        DocumentVersion.objects.filter(pk=version_id).update(attempts=F("attempts") + 1)
        attempts = DocumentVersion.objects.filter(pk=version_id).values_list(
            "attempts", flat=True).first()
    if attempts is not None and attempts > limit:
        fail_version(
            version_id,
            f"The file stopped the parser {limit} times (KMS_MAX_PROCESSING_ATTEMPTS); it is "
            "kept but not processed. Check it, then use the admin's 'Process again'.",
        )
        return False
    return attempts is not None


def _undo_attempt(version_id: int) -> None:
    DocumentVersion.objects.filter(pk=version_id, attempts__gt=0).update(
        attempts=F("attempts") - 1)


def _unexpected(step: str, exc: Exception) -> str:
    return (
        f"An unexpected error stopped {step} this file ({type(exc).__name__}: {exc}). The "
        "rest of its batch went on; report the file, then use 'Process again'."
    )


def _read_file(version: DocumentVersion) -> bytes:
    if not version.file:
        raise ParseError("No file is stored for this version.")
    try:
        with version.file.open("rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise ParseError(
            f"The stored file {version.file.name} is missing from the file store "
            f"({_file_store()}); upload the document again."
        ) from exc


def _file_store() -> str:
    if settings.KMS_FILE_STORAGE == "s3":
        return f"S3 bucket {settings.STORAGES['default']['OPTIONS']['bucket_name']}"
    return f"KMS_MEDIA_ROOT {settings.MEDIA_ROOT}"


def _mark_processing(versions: list[DocumentVersion]) -> None:
    """Taken up by a worker: ``queued_at`` restarts, so beat does not re-send running work."""
    with transaction.atomic():
        DocumentVersion.objects.filter(pk__in=[v.pk for v in versions]).update(
            status=Status.PROCESSING, status_message="", queued_at=timezone.now()
        )
        Document.objects.filter(pk__in={v.document_id for v in versions}).update(
            status=Status.PROCESSING, status_message=""
        )


def _sync_document(document_id: int) -> None:
    """Mirror the newest version's status on the document; serve the newest version with
    active chunks, and mark exactly those chunks current."""
    document = Document.objects.select_for_update().filter(pk=document_id).first()
    if document is None:
        return
    versions = list(document.versions.order_by("-number"))
    if not versions:
        return
    newest = versions[0]
    served = next((v for v in versions if v.active_chunks_id is not None), None)
    document.status = newest.status
    document.status_message = newest.status_message
    if newest.status == Status.FAILED and served is not None:
        again = "Processing again failed" if served is newest else \
            f"Version {newest.number} failed"
        document.status_message = (
            f"{again}: {newest.status_message} Version {served.number} is still served."
        )
    served_set = served.active_chunks_id if served else None
    chunks = Chunk.objects.filter(document_id=document.pk)
    chunks.filter(is_current=True).exclude(chunk_set_id=served_set).update(is_current=False)
    if served_set is not None:
        chunks.filter(chunk_set_id=served_set, is_current=False).update(is_current=True)
    published = document.publication == Publication.PUBLISHED
    chunks.exclude(published=published).update(published=published)
    document.current_version = served
    if served is not None:
        document.content_hash = served.content_hash
        document.media_type = served.media_type
    document.save(
        update_fields=["status", "status_message", "current_version", "content_hash",
                       "media_type", "updated_at"]
    )


def _tokenizer_path() -> str:
    """The embedding model's tokenizer counts chunk tokens, so budgets match the model."""
    return str(checked_model_path())


__all__ = [
    "activate",
    "chunk_versions",
    "embed_pending",
    "fail_version",
    "finalize_chunk_sets",
    "parse_versions",
    "rebuild_vectors",
    "reset_versions",
    "claim_stalled_versions",
]
