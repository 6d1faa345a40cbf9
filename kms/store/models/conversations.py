"""Conversations: a user's thread of questions in one domain, each turn with its answer."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from kms.store.models.documents import Domain


class Conversation(models.Model):
    """Only its user reads it: another user's conversation id is "not found"."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="conversations")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class Turn(models.Model):
    """One question of a conversation: what was asked, what retrieval was given, the answer."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE,
                                     related_name="turns")
    number = models.PositiveIntegerField()
    question = models.TextField()
    standalone_question = models.TextField(
        help_text="The question rewritten from the thread so that it stands alone: what "
        "retrieval and the generator were given (the question itself when it already does)."
    )
    answer = models.JSONField(default=dict, help_text="The verified answer as it was shown.")
    abstained = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "number"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "number"], name="turn_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.conversation} #{self.number}"

    @property
    def rewritten(self) -> bool:
        return self.standalone_question != self.question
