"""Adding documents to the store: files, folders and in-memory text, with de-duplication.

``add_document`` stores a new version and queues it for processing once the transaction
commits. Bad input never raises here: it ends as a failed version with the reason, so one
bad file in a batch does not stop the rest and never touches what is already stored. The
uploader's access decides what the messages may name: a document they cannot see is never
named (an upload with its content is stored as a document of its own), and never gets a
version from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile, File
from django.db import IntegrityError, transaction
from django.db.models import Max

from kms.access import Access, visible_documents
from kms.store.models import Document, DocumentVersion, Domain, Status
from search.ingestion import pipeline, signals

Outcome = Literal["queued", "unchanged", "duplicate", "failed"]


@dataclass(frozen=True)
class IngestResult:
    source: str
    outcome: Outcome
    document_id: int | None = None
    version_id: int | None = None
    message: str = ""


class UnknownDomainError(ValueError):
    pass


def get_domain(slug: str) -> Domain:
    """A staff domain to store documents in (evaluation domains belong to their commands)."""
    staff = Domain.objects.filter(purpose=Domain.Purpose.DOCUMENTS)
    try:
        return staff.get(slug=slug)
    except Domain.DoesNotExist:
        known = ", ".join(staff.values_list("slug", flat=True)) or "none"
        owned = Domain.objects.filter(slug=slug, purpose=Domain.Purpose.EVALUATION).exists()
        why = " belongs to an evaluation command" if owned else " is unknown"
        raise UnknownDomainError(
            f"Domain {slug!r}{why}. Staff domains: {known}. Add one in the admin."
        ) from None


def add_document(
    domain: Domain,
    *,
    source: str,
    filename: str,
    content: bytes | None = None,
    path: Path | None = None,
    uploader: Access,
    title: str | None = None,
    access_groups: Sequence[Group] = (),
    uploaded_by=None,
    queue: bool = True,
) -> IngestResult:
    """Store ``content`` (or the file at ``path``) as a new version of ``(domain, source)``.

    Same content as a stored version of that document: ``unchanged``. Same content as another
    document of the domain: ``duplicate``. Too large: a failed version, the file not kept.
    """
    if (content is None) == (path is None):
        raise ValueError("Pass exactly one of content= or path=")
    size = len(content) if content is not None else path.stat().st_size
    digest = _sha256(content, path)
    limit = settings.KMS_MAX_UPLOAD_BYTES
    too_large = size > limit
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _add_version(
                    domain, source=source, filename=filename, content=content, path=path,
                    uploader=uploader, title=title, access_groups=access_groups,
                    uploaded_by=uploaded_by, queue=queue, size=size, digest=digest,
                    failure=(
                        f"The file is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.1f} MiB "
                        "(KMS_MAX_UPLOAD_BYTES)." if too_large else None
                    ),
                )
        except IntegrityError:
            if attempt:  # a concurrent upload of the same source won twice: give up loudly
                raise
    raise AssertionError("unreachable")


def _add_version(
    domain: Domain, *, source: str, filename: str, content: bytes | None, path: Path | None,
    uploader: Access, title: str | None, access_groups: Sequence[Group], uploaded_by,
    queue: bool, size: int, digest: str, failure: str | None,
) -> IngestResult:
    if not uploader.sees_domain(domain.pk):
        return IngestResult(source, "failed", message=(
            f"You are not a member of the domain {domain.slug!r}; ask a curator to add you."
        ))
    document = Document.objects.select_for_update().filter(domain=domain, source=source).first()
    if document is not None and not visible_documents(uploader).filter(pk=document.pk).exists():
        return IngestResult(source, "failed", message=(
            "A document you cannot see is already stored under this name; upload the file "
            "under another name, or ask a curator of the domain for access."
        ))
    if document is not None:
        existing = document.versions.filter(content_hash=digest).first()
        if existing is not None and existing.status == Status.FAILED:
            if failure is not None or not existing.file:
                return IngestResult(
                    source, "failed", document.pk, existing.pk, failure or existing.status_message
                )
            pipeline.reset_versions([existing.pk])
            if queue:
                queue_processing([existing.pk])
            return IngestResult(source, "queued", document.pk, existing.pk, "retrying")
        if existing is not None:
            return IngestResult(
                source, "unchanged", document.pk, existing.pk, f"already stored as "
                f"version {existing.number} ({existing.status})"
            )
    else:
        twin = Document.objects.filter(
            domain=domain, versions__content_hash=digest,
            versions__status__in=[Status.PENDING, Status.PROCESSING, Status.READY],
        ).first()
        if twin is not None and not visible_documents(uploader).filter(pk=twin.pk).exists():
            twin = None  # stored as a document of its own: nothing hidden is named or hinted at
        if twin is not None and failure is None:
            return IngestResult(
                source, "duplicate", twin.pk, None,
                f"same content as document #{twin.pk} {twin.title!r} ({twin.source})",
            )
        document = Document.objects.create(
            domain=domain, source=source, title=(title or pipeline.default_title(filename))[:500],
            uploaded_by=uploaded_by,
        )
    if access_groups:
        document.access_groups.add(*access_groups)
    if title and document.title != title:
        document.title = title[:500]
        document.save(update_fields=["title", "updated_at"])
    number = (document.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = DocumentVersion(
        document=document, number=number, filename=filename[:255], content_hash=digest,
        size_bytes=size,
    )
    if failure is None:
        if content is not None:
            version.file.save(filename, ContentFile(content), save=False)
        else:
            with path.open("rb") as fh:
                version.file.save(filename, File(fh), save=False)
    else:
        version.status = Status.FAILED
        version.status_message = failure
    version.save()
    if failure is not None:
        pipeline.fail_version(version.pk, failure)
        return IngestResult(source, "failed", document.pk, version.pk, failure)
    document.status = Status.PENDING
    document.save(update_fields=["status", "updated_at"])
    if queue:
        queue_processing([version.pk])
    return IngestResult(source, "queued", document.pk, version.pk)


def queue_processing(version_ids: list[int]) -> None:
    """Send the versions to the workers once the surrounding transaction commits."""
    signals.send_on_commit(signals.processing_requested, version_ids=list(version_ids))


def reprocess(version_ids: Sequence[int]) -> None:
    """Run versions through the whole pipeline again (after a fix, or a changed chunking).

    Their served chunks stay searchable until the new ones replace them.
    """
    pipeline.reset_versions(version_ids)
    queue_processing(list(version_ids))


def reembed(version_ids: Sequence[int]) -> int:
    """New vectors for these versions' served chunks (after the embedding model changed).

    They are built beside the served ones, which stay searchable until the new set is
    complete and replaces them in one transaction. Returns the number of chunks queued.
    """
    ids = list(version_ids)
    count = pipeline.rebuild_vectors(ids)
    signals.send_on_commit(signals.embedding_requested, version_ids=ids)
    return count


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every non-hidden file below named folders, in sorted order."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if child.is_file() and not any(p.startswith(".") for p in relative.parts):
                    yield child
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"No such file or folder: {path}")


def ingest_file(
    domain: Domain, path: Path, *, uploader: Access, root: Path | None = None,
    access_groups: Sequence[Group] = (), uploaded_by=None, queue: bool = True,
) -> IngestResult:
    """Add one file; its source is its path relative to ``root`` (stable across machines)."""
    source = str(path.relative_to(root)) if root else path.name
    try:
        return add_document(
            domain, source=source, filename=path.name, path=path, uploader=uploader,
            access_groups=access_groups, uploaded_by=uploaded_by, queue=queue,
        )
    except OSError as exc:
        return IngestResult(source, "failed", message=f"Cannot read {path}: {exc.strerror}")


def _sha256(content: bytes | None, path: Path | None) -> str:
    if content is not None:
        return hashlib.sha256(content).hexdigest()
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


