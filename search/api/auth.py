"""Who is calling: a bearer API token, or the portal's session (with Django's CSRF check)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, SessionAuth

from kms.access import Access, for_request
from kms.tokens import TokenError, token_for_secret


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        try:
            found = token_for_secret(token)
        except TokenError as exc:
            raise AuthenticationError(message=str(exc)) from exc
        request.api_token = found
        return found.user


def access_of(request: HttpRequest) -> Access:
    """The caller's access: always through the access module, never a default."""
    return for_request(request, request.auth)


def channel(request: HttpRequest) -> str:
    """Where a read came from, for the audit log: a token's call or the portal's."""
    return "api" if getattr(request, "api_token", None) is not None else "portal"


AUTH = [TokenAuth(), SessionAuth()]
