"""The profile page: your API tokens (the secret of a new one is shown once), revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from kms.tokens import TokenError, issue_token, revoke_token


@login_required
@require_http_methods(["GET", "POST"])
def profile(request: HttpRequest) -> HttpResponse:
    secret = ""
    if request.method == "POST" and request.POST.get("revoke"):
        token = request.user.api_tokens.filter(pk=request.POST["revoke"]).first()
        if token is not None:
            revoke_token(token)
            messages.success(request, f"Token {token.name!r} is revoked.")
    elif request.method == "POST":
        try:
            days = int(request.POST.get("days") or 0) or None
            _, secret = issue_token(request.user, request.POST.get("name", "")
                                    .replace("\x00", ""), days)
        except (TokenError, ValueError) as exc:
            messages.error(request, str(exc))
    return render(request, "portal/profile.html", {
        "tokens": request.user.api_tokens.all(), "secret": secret, "nav": "profile"})
