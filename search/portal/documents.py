"""Document pages: the list with status and filters, upload (several files, then their
progress), the viewer of the extracted text at a cited passage, and the download through
the access check."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from kms.access import visible_document, visible_documents
from kms.store.models import Document, Publication, Status
from search.curation import audit
from search.ingestion.progress import progress
from search.ingestion.uploads import Upload, UploadError, store_uploads
from search.portal.common import access_of, staff_domains
from search.retrieval.search import SearchError, resolve_domain


def _visible(request: HttpRequest, document_id: int) -> Document:
    document = visible_document(access_of(request), document_id)
    if document is None:
        raise Http404(f"No document {document_id} that you can see.")
    return document


@login_required
def document_list(request: HttpRequest) -> HttpResponse:
    documents = visible_documents(access_of(request)).select_related(
        "domain", "current_version")
    domain, status = request.GET.get("domain", ""), request.GET.get("status", "")
    publication, words = request.GET.get("publication", ""), request.GET.get("q", "").strip()
    if domain:
        documents = documents.filter(domain__slug=domain)
    if status in Status.values:
        documents = documents.filter(status=status)
    if publication in Publication.values:
        documents = documents.filter(publication=publication)
    if words:
        documents = documents.filter(title__icontains=words.replace("\x00", ""))
    page = Paginator(documents, 25).get_page(request.GET.get("page"))
    return render(request, "portal/documents.html", {
        "page": page, "domains": staff_domains(request), "statuses": Status.choices,
        "publications": Publication.choices, "filters": {
            "domain": domain, "status": status, "publication": publication, "q": words},
        "can_upload": request.user.has_perm("store.add_document"), "nav": "documents"})


@login_required
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    """Store the chosen files (all or none), then follow them on the list."""
    files = request.FILES.getlist("files")
    try:
        domain = resolve_domain(request.POST.get("domain", ""), access_of(request))
        results = store_uploads(domain, [Upload(f.name, f.size, f) for f in files],
                                user=request.user, access=access_of(request))
    except (SearchError, UploadError) as exc:
        messages.error(request, str(exc))
        return redirect("portal:documents")
    for result in results:
        level = messages.ERROR if result.outcome == "failed" else messages.SUCCESS
        messages.add_message(request, level, f"{result.source}: {result.message}"
                             if result.message else f"{result.source}: {result.outcome}")
    return redirect("portal:documents")


@login_required
def statuses(request: HttpRequest) -> JsonResponse:
    """Status and progress of the listed documents, for the list's script to follow."""
    try:
        ids = [int(i) for i in request.GET.get("ids", "").split(",") if i][:100]
    except ValueError:
        return JsonResponse({"error": {"code": "bad_request",
                                       "message": "ids: document ids, comma separated."}},
                            status=400)
    rows = {}
    for document in visible_documents(access_of(request)).select_related(
            "current_version").filter(pk__in=ids):
        newest = document.versions.order_by("-number").first()
        done = progress([newest.pk]) if newest and document.status == Status.PROCESSING \
            else None
        rows[document.pk] = {
            "status": document.status, "label": document.get_status_display(),
            "message": document.status_message,
            "version": f"v{document.current_version.number}" if document.current_version
            else "-",
            "progress": f"{done.embedded}/{done.chunks} passages embedded"
            if done and done.chunks else ""}
    return JsonResponse({"documents": rows})


def _highlight(text: str, start: int | None, end: int | None) -> dict:
    if start is None or end is None or not 0 <= start < end <= len(text):
        return {"before": text, "cited": "", "after": ""}
    return {"before": text[:start], "cited": text[start:end], "after": text[end:]}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@login_required
def viewer(request: HttpRequest, document_id: int) -> HttpResponse:
    """The extracted text of a version (the served one unless ``version``), with the
    character span ``start``-``end`` highlighted: where a citation points."""
    document = _visible(request, document_id)
    versions = list(document.versions.order_by("-number"))
    wanted = _int(request.GET.get("version"))
    version = next((v for v in versions if v.pk == wanted), None) or document.current_version \
        or (versions[0] if versions else None)
    audit.record(request.user, "view", "portal", domain=document.domain.slug,
                 shown=[(document.pk, version.pk if version else None)])
    text = version.extracted_text if version else ""
    return render(request, "portal/document.html", {
        "document": document, "versions": versions, "version": version,
        "page_number": _int(request.GET.get("page")),
        "text": _highlight(text, _int(request.GET.get("start")), _int(request.GET.get("end"))),
        "nav": "documents"})


@login_required
def download(request: HttpRequest, document_id: int) -> FileResponse:
    """The original file, only through the access check (there is no public file URL)."""
    document = _visible(request, document_id)
    chosen = document.stored_version(version_id=_int(request.GET.get("version")))
    if chosen is None:
        raise Http404(f"Document {document_id} has no stored file for that version.")
    audit.record(request.user, "download", "portal", domain=document.domain.slug,
                 shown=[(document.pk, chosen.pk)])
    return FileResponse(chosen.file.open("rb"), as_attachment=True, filename=chosen.filename,
                        content_type=chosen.media_type or "application/octet-stream")
