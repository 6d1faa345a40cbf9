"""Requests per token (or per portal session's user), shared by every web process through
the Redis cache: ``KMS_API_RATE``, e.g. ``600/min``."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from ninja.throttling import SimpleRateThrottle


class TokenRateThrottle(SimpleRateThrottle):
    scope = "token"

    def __init__(self) -> None:
        super().__init__(settings.KMS_API_RATE)

    def allow_request(self, request: HttpRequest) -> bool:
        # Read per request, so a changed setting applies without a restart of the class.
        self.rate = settings.KMS_API_RATE
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request)

    def get_cache_key(self, request: HttpRequest) -> str | None:
        token = getattr(request, "api_token", None)
        if token is not None:
            ident = f"token-{token.pk}"
        elif getattr(request, "auth", None) is not None:
            ident = f"user-{request.auth.pk}"
        else:
            return None  # refused by authentication anyway
        return self.cache_format % {"scope": self.scope, "ident": ident}
