"""URL routes: the admin for now; the portal and the search API will be mounted here."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import path

admin.site.site_header = "kms administration"
admin.site.site_title = "kms"
admin.site.index_title = "Document store"


def health(request: HttpRequest) -> JsonResponse:
    """Liveness probe for load balancers and the run command."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", lambda request: redirect("admin:index")),
    path("healthz", health, name="health"),
    path("admin/", admin.site.urls),
]
