"""Curating what search serves: publish, archive and restore documents, delete them, move
them to a domain or access groups, exclude a bad passage from retrieval and include it again.

Each takes the curator's access, so a document they cannot see is never touched, and ends
with ``versions_served``, so the BM25 indexes follow; dense search and the BM25 hits read the
chunk columns at query time, so a change is in force as soon as it commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.db import transaction

from kms.access import Access, visible_chunks, visible_documents, visible_domains
from kms.store.models import Chunk, Document, Domain, Publication
from search.ingestion import signals
from search.ingestion.documents import reembed


class CurationError(ValueError):
    """A change that cannot be made as asked; nothing was changed."""


def _documents(access: Access, document_ids: Iterable[int]):
    return visible_documents(access).filter(pk__in=list(document_ids))


def _log(objects, field: str, old, new) -> None:
    """The change in the audit log (django-auditlog), as if each object had been saved: the
    bulk updates here send no signals. The actor is the request's, set by its middleware."""
    for obj in objects:
        LogEntry.objects.log_create(obj, action=LogEntry.Action.UPDATE, force_log=True,
                                    changes={field: [str(old(obj)), str(new)]})


def _served(domain_ids: set[int]) -> None:
    if domain_ids:
        signals.send_on_commit(signals.versions_served, domain_ids=domain_ids)


@transaction.atomic
def set_publication(access: Access, document_ids: Iterable[int], publication: str) -> int:
    """Publish (or restore), archive or hold back as a draft; returns how many changed."""
    if publication not in Publication.values:
        raise CurationError(f"Unknown publication {publication!r}; use one of "
                            f"{', '.join(Publication.values)}.")
    documents = list(_documents(access, document_ids).exclude(publication=publication))
    domain_ids = {d.domain_id for d in documents}
    ids = [d.pk for d in documents]
    _log(documents, "publication", lambda d: d.publication, publication)
    Document.objects.filter(pk__in=ids).update(publication=publication)
    Chunk.objects.filter(document_id__in=ids).update(
        published=publication == Publication.PUBLISHED)
    _served(domain_ids)
    return len(ids)


def publish(access: Access, document_ids: Iterable[int]) -> int:
    return set_publication(access, document_ids, Publication.PUBLISHED)


def archive(access: Access, document_ids: Iterable[int]) -> int:
    """Out of search and answers; versions, viewer and download stay, restore brings it back."""
    return set_publication(access, document_ids, Publication.ARCHIVED)


restore = publish


@transaction.atomic
def delete_documents(access: Access, document_ids: Iterable[int]) -> int:
    """Delete documents with their versions, chunks, vectors and stored files."""
    documents = list(_documents(access, document_ids).prefetch_related("versions"))
    files = [v.file for d in documents for v in d.versions.all() if v.file]
    domain_ids = {d.domain_id for d in documents}
    Document.objects.filter(pk__in=[d.pk for d in documents]).delete()
    # Files go only once the rows are gone for good: a rolled-back delete keeps both.
    transaction.on_commit(lambda: [f.storage.delete(f.name) for f in files])
    _served(domain_ids)
    return len(documents)


@transaction.atomic
def set_excluded(access: Access, chunk_ids: Sequence[int], excluded: bool) -> int:
    """Take passages out of retrieval (or put them back); returns how many changed."""
    chunks = list(visible_chunks(access).filter(pk__in=list(chunk_ids))
                  .exclude(excluded=excluded))
    domain_ids = {c.domain_id for c in chunks}
    _log(chunks, "excluded", lambda c: c.excluded, excluded)
    changed = Chunk.objects.filter(pk__in=[c.pk for c in chunks]).update(excluded=excluded)
    _served(domain_ids)
    return changed


@transaction.atomic
def assign_groups(access: Access, document_ids: Iterable[int], groups: Sequence[Group]) -> int:
    """Set the access groups that may see the documents; none: the whole domain."""
    documents = list(_documents(access, document_ids))
    for document in documents:
        document.access_groups.set(groups)
    return len(documents)


@transaction.atomic
def move_to_domain(access: Access, document_ids: Iterable[int], domain: Domain) -> int:
    """Move documents to another domain the curator is a member of; their passages are
    embedded in that domain's space if it differs, and both domains' indexes follow."""
    if not visible_domains(access).filter(pk=domain.pk).exists():
        raise CurationError(f"You are not a member of the domain {domain.slug!r}.")
    if domain.purpose != Domain.Purpose.DOCUMENTS:
        raise CurationError(f"{domain.slug!r} is an evaluation domain; staff documents "
                            "never go into one.")
    documents = list(_documents(access, document_ids).exclude(domain=domain)
                     .select_related("domain"))
    clashes = Document.objects.filter(domain=domain,
                                      source__in=[d.source for d in documents])
    if clashes.exists():
        raise CurationError(f"{domain.slug!r} already has a document from "
                            f"{clashes.first().source!r}; nothing was moved.")
    domain_ids = {d.domain_id for d in documents} | {domain.pk}
    ids = [d.pk for d in documents]
    other_space = [d.current_version_id for d in documents if d.current_version_id
                   and d.domain.embedding_space_id != domain.embedding_space_id]
    _log(documents, "domain", lambda d: d.domain.slug, domain.slug)
    Document.objects.filter(pk__in=ids).update(domain=domain)
    Chunk.objects.filter(document_id__in=ids).update(domain=domain)
    if other_space:
        reembed(other_space)
    _served(domain_ids if ids else set())
    return len(ids)
