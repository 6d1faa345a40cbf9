"""Documents: upload one or several, list, detail with versions, download the original.

Every read goes through the access module's selectors, so a document the caller may not
see is "not found", never "forbidden" (which would tell them it exists). Uploads need the
``store.add_document`` permission and a domain the caller is a member of; a request with
any file that cannot be stored stores none of them.
"""

from __future__ import annotations

from datetime import datetime

from django.http import FileResponse, Http404, HttpRequest
from ninja import Field, File, Form, Query, Router, Schema, UploadedFile
from ninja.responses import Status

from kms.access import visible_document, visible_documents
from kms.store.models import Document, Publication
from kms.store.models import Status as DocumentStatus
from search.api import errors
from search.api.auth import access_of, channel
from search.api.errors import ApiError
from search.api.schemas import Text
from search.curation import audit
from search.ingestion import curation
from search.ingestion.uploads import Upload, UploadError, store_uploads
from search.retrieval.search import resolve_domain

router = Router(tags=["documents"])


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
    publication: str
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
    publication: Publication | None = None
    q: Text | None = Field(None, max_length=200, description="Words of the title.")
    page: int = Field(1, ge=1, le=10_000)
    per_page: int = Field(20, ge=1, le=100)


def _document(document: Document) -> dict:
    return {"id": document.pk, "domain": document.domain.slug, "title": document.title,
            "source": document.source, "media_type": document.media_type,
            "status": document.status, "status_message": document.status_message,
            "publication": document.publication, "current_version_id": document.current_version_id,
            "updated_at": document.updated_at}


def _permitted(request: HttpRequest, permission: str, doing: str) -> None:
    if not request.auth.has_perm(f"store.{permission}"):
        raise ApiError(403, "forbidden", f"You may not {doing} (the store.{permission} "
                       "permission is needed).")


def _visible(request: HttpRequest, document_id: int) -> Document:
    document = visible_document(access_of(request), document_id)
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
    if params.publication:
        documents = documents.filter(publication=params.publication)
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
    audit.record(request.auth, "view", channel(request), domain=document.domain.slug,
                 shown=[(document.pk, document.current_version_id)])
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
    chosen = document.stored_version(number=version)
    if chosen is None:
        raise Http404(f"Document {document_id} has no stored file"
                      + (f" for version {version}." if version is not None else "."))
    audit.record(request.auth, "download", channel(request), domain=document.domain.slug,
                 shown=[(document.pk, chosen.pk)])
    return FileResponse(chosen.file.open("rb"), as_attachment=True, filename=chosen.filename,
                        content_type=chosen.media_type or "application/octet-stream")


@router.post("", response={201: list[UploadResult], 403: errors.ErrorOut,
                           413: errors.ErrorOut, 415: errors.ErrorOut, **errors.COMMON})
def upload(request: HttpRequest, domain: Form[Text], files: File[list[UploadedFile]]):
    """Store one or several files as documents of ``domain`` (each file's name is its
    source: uploading it again adds a version). They are parsed, chunked and embedded in the
    background; follow them with the document list or detail."""
    target = resolve_domain(domain, access_of(request))
    try:
        stored = store_uploads(target, [Upload(f.name, f.size, f) for f in files],
                               user=request.auth, access=access_of(request))
    except UploadError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc
    results = [{"filename": r.source, "outcome": r.outcome, "document_id": r.document_id,
                "version_id": r.version_id, "message": r.message} for r in stored]
    return Status(201, results)


@router.post("/{document_id}/archive", response={200: DocumentOut, 403: errors.ErrorOut,
                                                 404: errors.ErrorOut, **errors.COMMON})
def archive(request: HttpRequest, document_id: int):
    """Take a document out of search and answers; it keeps its versions and download."""
    return _set_publication(request, document_id, Publication.ARCHIVED)


@router.post("/{document_id}/restore", response={200: DocumentOut, 403: errors.ErrorOut,
                                                 404: errors.ErrorOut, **errors.COMMON})
def restore(request: HttpRequest, document_id: int):
    """Publish an archived (or draft) document again."""
    return _set_publication(request, document_id, Publication.PUBLISHED)


def _set_publication(request: HttpRequest, document_id: int, publication: str) -> dict:
    _permitted(request, "change_document", "archive or restore documents")
    document = _visible(request, document_id)
    curation.set_publication(access_of(request), [document.pk], publication)
    document.refresh_from_db()
    return _document(document)


@router.delete("/{document_id}", response={204: None, 403: errors.ErrorOut,
                                           404: errors.ErrorOut, **errors.COMMON})
def delete(request: HttpRequest, document_id: int):
    """Delete a document with every version, passage and stored file."""
    _permitted(request, "delete_document", "delete documents")
    curation.delete_documents(access_of(request), [_visible(request, document_id).pk])
    return Status(204, None)
