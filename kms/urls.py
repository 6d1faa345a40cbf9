"""URL routes: the staff portal (``/portal/``, and ``/``), the admin, the search API."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import include, path, re_path

from search.api.v1 import api

admin.site.site_header = "kms administration"
admin.site.site_title = "kms"
admin.site.index_title = "Document store"


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Unknown API paths answer in the API's error format, not with an HTML page."""
    return JsonResponse({"error": {"code": "not_found", "message": f"No API endpoint "
                                   f"{request.path}; see /api/v1/docs."}}, status=404)


def health(request: HttpRequest) -> JsonResponse:
    """Liveness probe for load balancers and the run command."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", lambda request: redirect("portal:search")),
    path("portal/", include("search.portal.urls")),
    path("healthz", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", api_not_found),
]
