"""Published BM25 indexes, each a versioned artifact every node follows."""

from __future__ import annotations

from django.db import models

from kms.store.models.documents import Domain


class LexicalIndex(models.Model):
    """One published version of a domain's BM25 index at one level (chunks or documents).

    The newest row of a domain and level is the pointer every web and worker node follows;
    the artifact (the index's ``.npz`` bytes) lives in ``LexicalIndexPart`` rows or, where
    configured, in a Django storage under ``storage_name``. A row is inserted in the same
    transaction as its parts, so no node ever sees a version whose artifact is incomplete.
    """

    class Level(models.TextChoices):
        CHUNKS = "chunks", "Chunks"
        DOCUMENTS = "documents", "Documents"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="lexical_indexes")
    level = models.CharField(max_length=10, choices=Level.choices)
    version = models.PositiveBigIntegerField(help_text="Moves forward by one per build.")
    watermark = models.DateTimeField(
        help_text="Database time when the build began reading: changes after it are not in it."
    )
    fingerprint = models.CharField(
        max_length=100, help_text="Count and id sum of what it indexes: a deletion changes it."
    )
    entries = models.PositiveIntegerField()
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the artifact.")
    size_bytes = models.BigIntegerField()
    storage_name = models.CharField(
        max_length=500, blank=True,
        help_text="The artifact's name in KMS_BM25_ARTIFACT_STORAGE; empty: in the database.",
    )
    build_seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain", "level", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "level", "version"], name="lexicalindex_unique_version"
            )
        ]
        verbose_name_plural = "lexical indexes"

    def __str__(self) -> str:
        return f"{self.domain} BM25 {self.level} v{self.version}"


class LexicalIndexPart(models.Model):
    """A slice of an artifact stored in the database (bytea rows stay well below 1 GB)."""

    index = models.ForeignKey(LexicalIndex, on_delete=models.CASCADE, related_name="parts")
    position = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        ordering = ["index", "position"]
        constraints = [
            models.UniqueConstraint(fields=["index", "position"], name="lexicalindexpart_unique")
        ]

    def __str__(self) -> str:
        return f"{self.index} part {self.position}"
