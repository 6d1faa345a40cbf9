"""Uploads from people (the API and the portal): all files of a request are checked before
any is stored, so a request with one file that cannot be taken stores none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from kms.access import Access
from kms.store.models import Domain
from search.ingestion.documents import IngestResult, add_document
from search.ingestion.parsing import ParseError
from search.ingestion.parsing.detect import detect_media_type

MAX_FILES = 20


class UploadError(ValueError):
    """Nothing was stored; ``status`` and ``code`` are what an HTTP caller answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Upload:
    name: str
    size: int
    file: object  # anything with read(): Django's UploadedFile


def store_uploads(domain: Domain, uploads: Sequence[Upload], *, user,
                  access: Access) -> list[IngestResult]:
    """Check every file (count, name, size, type), then store them all in one transaction;
    they are parsed, chunked and embedded in the background."""
    if not user.has_perm("store.add_document"):
        raise UploadError(403, "forbidden", "You may not upload documents (the "
                          "store.add_document permission is needed).")
    if not uploads:
        raise UploadError(400, "bad_request", "Choose at least one file.")
    if len(uploads) > MAX_FILES:
        raise UploadError(413, "too_large", f"At most {MAX_FILES} files per upload, not "
                          f"{len(uploads)}.")
    checked = []
    for upload in uploads:
        name = (upload.name or "").replace("\x00", "").rsplit("/", 1)[-1].strip()
        if not name:
            raise UploadError(400, "bad_request", "Every file needs a name. Nothing was "
                              "stored.")
        if upload.size > settings.KMS_MAX_UPLOAD_BYTES:
            raise UploadError(413, "too_large", f"{name!r} is {upload.size:,} bytes; the "
                              f"limit is {settings.KMS_MAX_UPLOAD_BYTES:,} "
                              "(KMS_MAX_UPLOAD_BYTES). Nothing was stored.")
        content = upload.file.read()
        try:
            detect_media_type(content, name)
        except ParseError as exc:
            raise UploadError(415, "unsupported_type", f"{exc} Nothing was stored.") from exc
        checked.append((name, content))
    with transaction.atomic():
        return [add_document(domain, uploader=access, source=name, filename=name,
                             content=content, uploaded_by=user) for name, content in checked]
