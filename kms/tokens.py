"""API tokens: issue (the secret is returned once), revoke, and resolve a presented secret.

A secret is ``kms_<prefix>_<random>``; the row keeps the prefix and the SHA-256 of the
whole secret, so a leaked database does not leak usable tokens, and lookup is by prefix
followed by a constant-time comparison of digests.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from kms.store.models import ApiToken

PREFIX_BYTES = 6  # 12 hex characters


class TokenError(ValueError):
    """A token that cannot be issued or used; the message says why."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_token(user, name: str, days: int | None = None) -> tuple[ApiToken, str]:
    """A new token of ``user`` valid for ``days`` (KMS_API_TOKEN_DAYS), and its secret."""
    days = settings.KMS_API_TOKEN_DAYS if days is None else days
    if not 1 <= days <= settings.KMS_API_TOKEN_MAX_DAYS:
        raise TokenError(f"A token lasts 1 to {settings.KMS_API_TOKEN_MAX_DAYS} days, "
                         f"not {days} (KMS_API_TOKEN_MAX_DAYS).")
    if not name.strip():
        raise TokenError("Name the token (what it is for).")
    prefix = secrets.token_hex(PREFIX_BYTES)
    secret = f"kms_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(user=user, name=name.strip()[:100], prefix=prefix,
                                    digest=_digest(secret),
                                    expires_at=timezone.now() + timedelta(days=days))
    return token, secret


def revoke_token(token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def token_for_secret(secret: str) -> ApiToken:
    """The active token the secret belongs to; TokenError says what is wrong with it."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "kms":
        raise TokenError("Not a kms API token (they start with kms_).")
    token = ApiToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if token is None or not hmac.compare_digest(token.digest, _digest(secret)):
        raise TokenError("Unknown API token.")
    if token.revoked_at is not None:
        raise TokenError("This API token was revoked; create a new one.")
    if token.expires_at <= timezone.now():
        raise TokenError("This API token has expired; create a new one.")
    if not token.user.is_active:
        raise TokenError("The token's user is inactive.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
