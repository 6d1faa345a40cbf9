"""The shared store of BM25 index artifacts, between the node that builds one and the nodes
that serve it.

By default an artifact is kept in PostgreSQL as ``LexicalIndexPart`` rows, inserted in the
builder's transaction together with its ``LexicalIndex`` row, so it is complete the moment
any node can see it and no shared filesystem is needed. With ``KMS_BM25_ARTIFACT_STORAGE``
naming a ``STORAGES`` alias (object storage through django-storages, for instance), the
bytes go there instead and the row keeps their name. Every read is checked against the
row's SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import DatabaseError

from kms.store.models import LexicalIndex, LexicalIndexPart

logger = logging.getLogger(__name__)

# Well below PostgreSQL's 1 GB field limit, large enough that a million-chunk index is a
# few dozen rows.
PART_BYTES = 16 * 1024 * 1024


class ArtifactUnavailable(Exception):
    """The artifact could not be read, or its bytes are not the ones that were published."""


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(row: LexicalIndex, data: bytes) -> None:
    """Keep ``data`` as the artifact of ``row`` (saved, in the builder's open transaction)."""
    alias = settings.KMS_BM25_ARTIFACT_STORAGE
    if alias:
        name = f"bm25/{row.domain.slug}/{row.level}/{row.version}-{row.checksum[:16]}.npz"
        row.storage_name = storages[alias].save(name, ContentFile(data))
        row.save(update_fields=["storage_name"])
        return
    view = memoryview(data)
    LexicalIndexPart.objects.bulk_create(
        (LexicalIndexPart(index=row, position=position, data=view[offset:offset + PART_BYTES])
         for position, offset in enumerate(range(0, len(data), PART_BYTES))),
        batch_size=4,
    )


def copy_artifact(row: LexicalIndex, handle: BinaryIO) -> None:
    """Write the artifact into ``handle`` part by part, checked against the row's checksum
    as it streams, so a million-chunk index never sits in memory twice. On a mismatch the
    handle holds damaged bytes: the caller discards them."""
    digest, size = hashlib.sha256(), 0
    blocks = _blocks(row)
    while True:
        try:
            block = next(blocks, None)
        except DatabaseError:
            raise
        except Exception as exc:  # any storage backend's failure (OSError, botocore, ...)
            raise ArtifactUnavailable(f"{row} cannot be read from its store: {exc}") from exc
        if block is None:
            break
        digest.update(block)
        handle.write(block)  # a full disk is the caller's OSError: it serves from memory
        size += len(block)
    if size != row.size_bytes or digest.hexdigest() != row.checksum:
        raise ArtifactUnavailable(
            f"{row} failed its checksum ({size} bytes read, {row.size_bytes} published): "
            "the stored artifact is damaged; the next rebuild (manage.py refresh_bm25) "
            "replaces it"
        )


def _blocks(row: LexicalIndex) -> Iterator[bytes]:
    if row.storage_name:
        with storages[settings.KMS_BM25_ARTIFACT_STORAGE].open(row.storage_name, "rb") as f:
            yield from iter(lambda: f.read(PART_BYTES), b"")
        return
    parts = (LexicalIndexPart.objects.filter(index_id=row.pk).order_by("position")
             .values_list("data", flat=True).iterator(chunk_size=2))
    for part in parts:
        yield bytes(part)


def read_artifact(row: LexicalIndex) -> bytes:
    """The artifact's checked bytes (for a node that cannot cache it on disk)."""
    buffer = io.BytesIO()
    copy_artifact(row, buffer)
    return buffer.getvalue()


def stream_checksum(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def delete_artifact(row: LexicalIndex) -> None:
    """Remove an artifact kept in a storage (database parts go with their row)."""
    if not row.storage_name:
        return
    try:
        storages[settings.KMS_BM25_ARTIFACT_STORAGE].delete(row.storage_name)
    except Exception as exc:  # left behind, not lost: it is only an old version
        logger.warning("Could not delete %s (%s): %s", row.storage_name, row, exc)
