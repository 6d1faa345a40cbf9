"""What users say of answers, citations and results, and the curated question/answer pairs
(the domain's gold set) that curators make, by hand or from that feedback."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from kms.store.models.conversations import Turn
from kms.store.models.documents import Chunk, Document, DocumentVersion, Domain


class Feedback(models.Model):
    class Target(models.TextChoices):
        ANSWER = "answer", "An answer"
        CITATION = "citation", "A citation of an answer"
        RESULT = "result", "A search result"

    class Rating(models.TextChoices):
        UP = "up", "Helpful / relevant"
        DOWN = "down", "Unhelpful / wrong"

    class State(models.TextChoices):
        NEW = "new", "New"
        REVIEWED = "reviewed", "Reviewed"
        PROMOTED = "promoted", "Promoted to a curated pair"
        DISMISSED = "dismissed", "Dismissed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                             related_name="feedback")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="feedback")
    target = models.CharField(max_length=20, choices=Target.choices)
    rating = models.CharField(max_length=10, choices=Rating.choices)
    comment = models.TextField(blank=True)
    query = models.TextField(help_text="The question asked or the search query.")
    answer_text = models.TextField(blank=True, help_text="The answer as it was shown.")
    turn = models.ForeignKey(Turn, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="feedback")
    citation = models.PositiveIntegerField(null=True, blank=True,
                                           help_text="The [n] the feedback is about.")
    document = models.ForeignKey(Document, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="feedback")
    version = models.ForeignKey(DocumentVersion, null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="+")
    chunk = models.ForeignKey(Chunk, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="feedback")
    state = models.CharField(max_length=20, choices=State.choices, default=State.NEW,
                             db_index=True)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "feedback"

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.get_target_display().lower()}: " \
               f"{self.query[:60]}"


class CuratedPair(models.Model):
    """A question with the answer a curator vouches for, and the documents that hold it:
    what evaluation and fine-tuning of the domain take as gold."""

    class Origin(models.TextChoices):
        CURATOR = "curator", "Written by a curator"
        FEEDBACK = "feedback", "Promoted from feedback"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="curated_pairs")
    question = models.TextField()
    answer = models.TextField()
    documents = models.ManyToManyField(Document, blank=True, related_name="curated_pairs",
                                       help_text="Where the answer is written.")
    origin = models.CharField(max_length=20, choices=Origin.choices, default=Origin.CURATOR)
    feedback = models.ForeignKey(Feedback, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="pairs")
    active = models.BooleanField(default=True, help_text="Used by evaluation and fine-tuning.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["domain", "-created_at"]
        verbose_name = "curated question/answer pair"

    def __str__(self) -> str:
        return self.question[:80]
