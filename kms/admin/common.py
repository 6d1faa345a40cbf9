"""What every admin page needs."""

from __future__ import annotations

from django.http import HttpRequest

from kms import access


def access_of(request: HttpRequest) -> access.Access:
    """The signed-in account's access, worked out once per request."""
    if not hasattr(request, "_kms_access"):
        request._kms_access = access.Access.for_user(request.user)
    return request._kms_access
