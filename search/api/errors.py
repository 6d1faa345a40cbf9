"""One error format for every 4xx: ``{"error": {"code": ..., "message": ...}}``.

``code`` is stable (clients branch on it); ``message`` says what to change.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

from search.answering.generation.base import GeneratorError
from search.retrieval.search import SearchError

CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 413: "too_large", 429: "throttled"}


class ErrorBody(Schema):
    code: str
    message: str
    details: list[dict] | None = None


class ErrorOut(Schema):
    error: ErrorBody


COMMON = {400: ErrorOut, 401: ErrorOut, 422: ErrorOut, 429: ErrorOut}


class ApiError(Exception):
    """An error the API answers with ``status`` and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(api: NinjaAPI, request: HttpRequest, status: int, code: str, message: str,
                   details: list[dict] | None = None) -> HttpResponse:
    body = {"code": code, "message": message}
    if details:
        body["details"] = details
    return api.create_response(request, {"error": body}, status=status)


def install(api: NinjaAPI) -> None:
    """Route every failure the API can meet into the one format."""

    @api.exception_handler(ApiError)
    def api_error(request, exc: ApiError):
        return error_response(api, request, exc.status, exc.code, exc.message)

    @api.exception_handler(ValidationError)
    def invalid(request, exc: ValidationError):
        details = [{"location": ".".join(str(p) for p in e.get("loc", ())),
                    "message": e.get("msg", "")} for e in exc.errors]
        return error_response(api, request, 422, "invalid_request",
                              "The request does not match the schema; see details.", details)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request, exc: AuthenticationError):
        message = str(exc)
        if message in ("", "Unauthorized"):
            message = ("Send a valid API token as 'Authorization: Bearer kms_...' (create "
                       "one in the admin), or sign in to the portal.")
        return error_response(api, request, 401, "unauthenticated", message)

    @api.exception_handler(Http404)
    def not_found(request, exc: Http404):
        return error_response(api, request, 404, "not_found", str(exc) or "Not found.")

    @api.exception_handler(HttpError)
    def http_error(request, exc: HttpError):
        code = CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(api, request, exc.status_code, code, str(exc))

    @api.exception_handler(SearchError)
    def bad_search(request, exc: SearchError):
        return error_response(api, request, 400, "bad_request", str(exc))

    @api.exception_handler(GeneratorError)
    def generator_down(request, exc: GeneratorError):
        return error_response(api, request, 503, "generator_unavailable", str(exc))
