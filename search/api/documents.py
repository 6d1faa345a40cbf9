"""Documents: upload one or several, list, detail with versions, download the original.

Every read goes through the access module's selectors, so a document the caller may not
see is "not found", never "forbidden" (which would tell them it exists). Uploads need the
``store.add_document`` permission and a domain the caller is a member of; a request with
any file that cannot be stored stores none of them.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest
from ninja import Field, File, Form, Query, Router, Schema, UploadedFile
from ninja.responses import Status

from kms.access import visible_documents
from kms.store.models import Document
from kms.store.models import Status as DocumentStatus
from search.api import errors
from search.api.auth import access_of
from search.api.errors import ApiError
from search.api.schemas import Text
from search.ingestion.documents import add_document
from search.ingestion.parsing import ParseError
from search.ingestion.parsing.detect import detect_media_type
from search.retrieval.search import resolve_domain

router = Router(tags=["documents"])
MAX_FILES = 20


class VersionOut(Schema):
    id: int
    number: int
    filename: str
    media_type: str
    size_bytes: int
    status: str
    status_message: str
    page_count: int | None
    created_at: datetime
    processed_at: datetime | None


class DocumentOut(Schema):
    id: int
    domain: str
    title: str
    source: str
    media_type: str
    status: str
    status_message: str
    current_version_id: int | None
    updated_at: datetime


class DocumentDetail(DocumentOut):
    versions: list[VersionOut]


class DocumentPage(Schema):
    page: int
    per_page: int
    total: int
    documents: list[DocumentOut]


class UploadResult(Schema):
    filename: str
    outcome: str
    document_id: int | None
    version_id: int | None
    message: str


class ListParams(Schema):
    domain: Text | None = Field(None, max_length=100)
    status: DocumentStatus | None = None
    q: Text | None = Field(None, max_length=200, description="Words of the title.")
    page: int = Field(1, ge=1, le=10_000)
    per_page: int = Field(20, ge=1, le=100)


def _document(document: Document) -> dict:
    return {"id": document.pk, "domain": document.domain.slug, "title": document.title,
            "source": document.source, "media_type": document.media_type,
            "status": document.status, "status_message": document.status_message,
            "current_version_id": document.current_version_id,
            "updated_at": document.updated_at}


def _visible(request: HttpRequest, document_id: int) -> Document:
    document = visible_documents(access_of(request)).select_related("domain").filter(
        pk=document_id).first()
    if document is None:
        raise Http404(f"No document {document_id} that you can see.")
    return document


@router.get("", response={200: DocumentPage, **errors.COMMON})
def list_documents(request: HttpRequest, params: Query[ListParams]):
    """The documents you can see, newest first, by domain, status and title words."""
    documents = visible_documents(access_of(request)).select_related("domain")
    if params.domain:
        documents = documents.filter(domain=resolve_domain(params.domain, access_of(request)))
    if params.status:
        documents = documents.filter(status=params.status)
    if params.q:
        documents = documents.filter(title__icontains=params.q)
    start = (params.page - 1) * params.per_page
    return {"page": params.page, "per_page": params.per_page, "total": documents.count(),
            "documents": [_document(d) for d in documents[start:start + params.per_page]]}


@router.get("/{document_id}", response={200: DocumentDetail, 404: errors.ErrorOut,
                                            **errors.COMMON})
def document_detail(request: HttpRequest, document_id: int):
    """A document with its status and every version (newest first)."""
    document = _visible(request, document_id)
    versions = document.versions.order_by("-number").values(
        "id", "number", "filename", "media_type", "size_bytes", "status", "status_message",
        "page_count", "created_at", "processed_at")
    return {**_document(document), "versions": list(versions)}


@router.get("/{document_id}/download", response={404: errors.ErrorOut, **errors.COMMON},
            openapi_extra={"responses": {200: {"description": "The original file.",
                                               "content": {"application/octet-stream": {}}}}})
def download(request: HttpRequest, document_id: int, version: int | None = None):
    """The original file of the served version (or of ``version``), through the access
    check: there is no public URL of a stored file."""
    document = _visible(request, document_id)
    versions = document.versions.exclude(file="")
    chosen = (versions.filter(number=version).first() if version is not None
              else versions.filter(pk=document.current_version_id).first()
              or versions.order_by("-number").first())
    if chosen is None:
        raise Http404(f"Document {document_id} has no stored file"
                      + (f" for version {version}." if version is not None else "."))
    return FileResponse(chosen.file.open("rb"), as_attachment=True, filename=chosen.filename,
                        content_type=chosen.media_type or "application/octet-stream")


@router.post("", response={201: list[UploadResult], 403: errors.ErrorOut,
                           413: errors.ErrorOut, 415: errors.ErrorOut, **errors.COMMON})
def upload(request: HttpRequest, domain: Form[Text], files: File[list[UploadedFile]]):
    """Store one or several files as documents of ``domain`` (each file's name is its
    source: uploading it again adds a version). They are parsed, chunked and embedded in the
    background; follow them with the document list or detail."""
    if not request.auth.has_perm("store.add_document"):
        raise ApiError(403, "forbidden", "You may not upload documents (the "
                       "store.add_document permission is needed).")
    target = resolve_domain(domain, access_of(request))
    if len(files) > MAX_FILES:
        raise ApiError(413, "too_large", f"At most {MAX_FILES} files per request, not "
                       f"{len(files)}.")
    checked = []
    for upload_file in files:
        name = (upload_file.name or "").replace("\x00", "").rsplit("/", 1)[-1].strip()
        if not name:
            raise ApiError(400, "bad_request", "Every file needs a name. Nothing was stored.")
        if upload_file.size > settings.KMS_MAX_UPLOAD_BYTES:
            raise ApiError(413, "too_large", f"{name!r} is {upload_file.size:,} bytes; the "
                           f"limit is {settings.KMS_MAX_UPLOAD_BYTES:,} (KMS_MAX_UPLOAD_BYTES)."
                           " Nothing was stored.")
        content = upload_file.read()
        try:
            detect_media_type(content, name)
        except ParseError as exc:
            raise ApiError(415, "unsupported_type", f"{exc} Nothing was stored.") from exc
        checked.append((name, content))
    results = []
    with transaction.atomic():
        for name, content in checked:
            result = add_document(target, uploader=access_of(request), source=name,
                                  filename=name, content=content, uploaded_by=request.auth)
            results.append({"filename": name, "outcome": result.outcome,
                            "document_id": result.document_id,
                            "version_id": result.version_id, "message": result.message})
    return Status(201, results)
