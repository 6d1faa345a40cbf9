"""Domains that evaluation and benchmark commands own: made for them, emptied after them.

A command never writes dataset or synthetic documents into a staff domain. It works in a
domain marked ``purpose=evaluation`` (which no staff member is a member of, so only
unrestricted access sees it), refuses a staff domain of the same name, and deletes what it
stored, with the domain and its BM25 indexes, when it is done, unless asked to keep them for
the next run.
"""

from __future__ import annotations

from django.db import transaction

from kms.store.models import Chunk, Document, DocumentVersion, Domain
from search.retrieval import index_store


class OwnedDomainError(ValueError):
    """The named domain holds staff documents; the message says what to do."""


def owned_domain(slug: str, name: str, description: str) -> Domain:
    """The evaluation domain ``slug``, created if missing; never a staff domain."""
    domain, _ = Domain.objects.get_or_create(
        slug=slug,
        defaults={"name": name, "description": description,
                  "purpose": Domain.Purpose.EVALUATION},
    )
    if domain.purpose != Domain.Purpose.EVALUATION:
        raise OwnedDomainError(
            f"Domain {slug!r} holds staff documents; evaluation and benchmark commands write "
            "only into domains of their own. Pass another --domain name."
        )
    return domain


def empty(domain: Domain) -> int:
    """Delete every document of ``domain`` (set-based, chunks first); returns the chunks."""
    with transaction.atomic():
        deleted, _ = Chunk.objects.filter(domain=domain).delete()
        Document.objects.filter(domain=domain).update(current_version=None)
        DocumentVersion.objects.filter(document__domain=domain).delete()
        Document.objects.filter(domain=domain).delete()
    return deleted


def drop(domain: Domain) -> int:
    """Remove an owned domain with everything in it; returns the chunks deleted."""
    if domain.purpose != Domain.Purpose.EVALUATION:
        raise OwnedDomainError(f"Domain {domain.slug!r} is not an evaluation domain.")
    deleted = empty(domain)
    index_store.remove_indexes(domain)
    domain.delete()
    return deleted
