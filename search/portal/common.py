"""What every portal view needs: the signed-in user's access, worked out once a request."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest

from kms.access import Access, for_request, visible_domains
from kms.store.models import Domain


def refuse_nul(value: str) -> None:
    """PostgreSQL text cannot hold NUL: a form refuses it at the edge, as the API does."""
    if "\x00" in value:
        raise ValidationError("The text must not contain NUL characters.")


def access_of(request: HttpRequest) -> Access:
    return for_request(request, request.user)


def staff_domains(request: HttpRequest) -> list[Domain]:
    """The domains the user may search and ask (staff documents, not evaluation ones)."""
    return list(visible_domains(access_of(request))
                .filter(purpose=Domain.Purpose.DOCUMENTS).order_by("name"))

