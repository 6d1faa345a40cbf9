"""The model registry of trained domain models."""

from __future__ import annotations

from django.db import models

from kms.store.models.documents import Domain, EmbeddingSpace


class ModelRun(models.Model):
    """The model registry: one training run of a domain model, its files, data and numbers.

    A run is trained, judged by the gate on the domain's held-out pairs, and then either
    promoted (served) or kept as rejected with its numbers. At most one run per domain and
    kind trains at a time and at most one is promoted; roll back restores the run promoted
    before it (or the base model).
    """

    class Kind(models.TextChoices):
        EMBEDDER = "embedder", "Embedding model"
        RERANKER = "reranker", "Reranker"
        VERIFIER = "verifier", "Citation-support verifier"
        GENERATOR = "generator", "Answer generator"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        TRAINING = "training", "Training"
        REJECTED = "rejected", "Rejected by the gate"
        PROMOTED = "promoted", "Promoted (served)"
        RETIRED = "retired", "Retired (replaced or rolled back)"
        FAILED = "failed", "Failed"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="model_runs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(
        max_length=20, choices=State.choices, default=State.QUEUED, db_index=True
    )
    base_model = models.CharField(max_length=1000, help_text="What training started from.")
    model_dir = models.CharField(max_length=1000, blank=True)
    space = models.ForeignKey(
        EmbeddingSpace, null=True, blank=True, on_delete=models.PROTECT, related_name="runs",
        help_text="Embedder runs: the space of the trained model's vectors.",
    )
    params = models.JSONField(default=dict, blank=True, help_text="Training parameters.")
    data_options = models.JSONField(
        default=dict, blank=True, help_text="Where its pairs come from (dataset, synthetic).")
    data_counts = models.JSONField(default=dict, blank=True)
    loss_curve = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(
        default=dict, blank=True, help_text="The gate: candidate and served scores on the "
        "held-out pairs, the margin and the decision.",
    )
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "kind"], condition=models.Q(state__in=["queued", "training"]),
                name="modelrun_one_training_per_domain",
            ),
            models.UniqueConstraint(
                fields=["domain", "kind"], condition=models.Q(state="promoted"),
                name="modelrun_one_promoted_per_domain",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.domain} {self.kind} run {self.pk} ({self.state})"
