"""What every portal view needs: the signed-in user's access, worked out once a request."""

from __future__ import annotations

from django.http import HttpRequest

from kms.access import Access, visible_domains
from kms.store.models import Domain


def access_of(request: HttpRequest) -> Access:
    if not hasattr(request, "_kms_access"):
        request._kms_access = Access.for_user(request.user)
    return request._kms_access


def staff_domains(request: HttpRequest) -> list[Domain]:
    """The domains the user may search and ask (staff documents, not evaluation ones)."""
    return list(visible_domains(access_of(request))
                .filter(purpose=Domain.Purpose.DOCUMENTS).order_by("name"))


def shown(hits) -> list[tuple[int, int]]:
    return [(h.document_id, h.version_id) for h in hits]
