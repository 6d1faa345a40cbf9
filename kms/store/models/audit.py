"""The read side of the audit log: who searched, asked, viewed and downloaded what.

Append-only: rows are never changed, and the database refuses an UPDATE or a DELETE (a
trigger) except the retention purge, which says so for its own transaction. Changes to
models are recorded by django-auditlog; this table is for reads, which it does not see.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AccessEvent(models.Model):
    class Action(models.TextChoices):
        SEARCH = "search", "Searched"
        ASK = "ask", "Asked"
        VIEW = "view", "Viewed"
        DOWNLOAD = "download", "Downloaded"

    class Channel(models.TextChoices):
        API = "api", "API"
        PORTAL = "portal", "Portal"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    # No constraint: a deleted user's events stay (the trigger refuses the SET NULL update).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.DO_NOTHING,
                             db_constraint=False, related_name="+")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=20, choices=Action.choices)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    domain = models.CharField(max_length=100, blank=True)
    query = models.TextField(blank=True)
    documents = models.JSONField(
        default=list, blank=True,
        help_text="The documents and versions shown: [{document, version}, ...].",
    )

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.at:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("Access events are append-only.")
        super().save(*args, **kwargs)
