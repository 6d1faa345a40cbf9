"""What every admin page needs."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from kms import access


def access_of(request: HttpRequest) -> access.Access:
    """The signed-in account's access, worked out once per request."""
    return access.for_request(request, request.user)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Pages that only show: what the system records (spaces, the access log)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
