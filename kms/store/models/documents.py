"""The document store: domains, documents, their versions and the embedded chunks.

A document is identified by ``(domain, source)``; uploading changed content under the same
source adds a version, identical content is recognised by its SHA-256 and not stored twice.
Search serves each document's ``current_version`` (its newest version with an active chunk
set), so a failed re-upload never takes away what was already searchable. A version's chunks
come in sets: a new set (after "process again" or a new embedding model) is built beside the
served one and made active in one transaction (blue/green), so reprocessing never takes a
document out of search. Who may see what is decided in ``kms.access``; what search serves
of it is :data:`SEARCHABLE_CHUNKS`: served, published and not excluded by a curator.

Vectors live beside the chunks, one row per chunk and *embedding space* (a model's weights
run by one backend, with its own dimension and HNSW index), so a domain can fill a new
space while search serves the old one, and roll back without re-embedding.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone
from pgvector.django import VectorField


class Domain(models.Model):
    """A knowledge domain (healthcare, finance, ...) with its own chunking and, later, models."""

    class Purpose(models.TextChoices):
        DOCUMENTS = "documents", "Staff documents"
        EVALUATION = "evaluation", "Evaluation or benchmark (owned by a command)"

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    chunk_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Token budget per chunk; empty uses KMS_CHUNK_TOKENS."
    )
    chunk_overlap = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overlap between chunks; empty uses KMS_CHUNK_OVERLAP."
    )
    options = models.JSONField(
        default=dict, blank=True, help_text="Per-domain retrieval and generation options."
    )
    member_groups = models.ManyToManyField(
        Group, blank=True, related_name="member_domains",
        help_text="Groups whose members see this domain's documents (a document with access "
        "groups of its own only to members of those groups too).",
    )
    purpose = models.CharField(
        max_length=20, choices=Purpose.choices, default=Purpose.DOCUMENTS,
        help_text="Evaluation domains belong to the command that made them, which may empty "
        "them; staff documents never go into one.",
    )
    embedding_space = models.ForeignKey(
        "EmbeddingSpace", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The space dense search serves; empty until the domain's first vectors.",
    )
    next_space = models.ForeignKey(
        "EmbeddingSpace", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The space being filled beside the served one (blue/green re-embedding); "
                  "search switches to it when every served chunk has its vector.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_chunk_tokens(self) -> int:
        return self.chunk_tokens or settings.KMS_CHUNK_TOKENS

    @property
    def effective_chunk_overlap(self) -> int:
        return settings.KMS_CHUNK_OVERLAP if self.chunk_overlap is None else self.chunk_overlap


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class Publication(models.TextChoices):
    """Curation: only published documents are searched and cited; archived ones keep their
    versions, viewer and download, and come back with *restore*."""

    DRAFT = "draft", "Draft (not searched until published)"
    PUBLISHED = "published", "Published"
    ARCHIVED = "archived", "Archived"


class Document(models.Model):
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="documents")
    title = models.CharField(max_length=500)
    source = models.CharField(
        max_length=1000, help_text="Where it came from: a file name, path or external id."
    )
    media_type = models.CharField(max_length=100, blank=True)
    content_hash = models.CharField(max_length=64, blank=True, db_index=True)
    access_groups = models.ManyToManyField(
        Group, blank=True, related_name="documents",
        help_text="Groups that may see this document; none means every member of the domain.",
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    status_message = models.TextField(blank=True)
    publication = models.CharField(
        max_length=20, choices=Publication.choices, default=Publication.PUBLISHED,
        db_index=True,
    )
    current_version = models.ForeignKey(
        "DocumentVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The newest version with active chunks: the one search serves.",
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="uploaded_documents",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "source"], name="document_unique_source")
        ]

    def __str__(self) -> str:
        return self.title

    def stored_version(self, *, number: int | None = None,
                       version_id: int | None = None) -> DocumentVersion | None:
        """The version whose original file a download sends: the one asked for (by number
        or id), else the served one, else the newest with a file; None: no stored file."""
        versions = self.versions.exclude(file="")
        if number is not None:
            return versions.filter(number=number).first()
        if version_id is not None:
            return versions.filter(pk=version_id).first()
        return (versions.filter(pk=self.current_version_id).first()
                or versions.order_by("-number").first())


def version_upload_to(version: DocumentVersion, filename: str) -> str:
    return f"documents/{version.content_hash[:2]}/{version.content_hash}/{filename}"


class DocumentVersion(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.FileField(upload_to=version_upload_to, max_length=500, blank=True)
    filename = models.CharField(max_length=255)
    content_hash = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    media_type = models.CharField(max_length=100, blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    status_message = models.TextField(blank=True)
    extracted_text = models.TextField(blank=True, help_text="The text the active chunks index.")
    structure = models.JSONField(
        default=dict, blank=True,
        help_text="Blocks and pages of the extracted text, so re-chunking needs no re-parse.",
    )
    page_count = models.PositiveIntegerField(null=True, blank=True)
    active_chunks = models.ForeignKey(
        "ChunkSet", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The chunk set served for this version.",
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Processing steps begun on this file and not finished; a file "
        "that stops the worker KMS_MAX_PROCESSING_ATTEMPTS times fails.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(
        default=timezone.now, help_text="When it was last sent to the workers."
    )
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["document", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="version_unique_number"),
            models.UniqueConstraint(
                fields=["document", "content_hash"], name="version_unique_content"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document} v{self.number}"


class ChunkSet(models.Model):
    """One chunking of a version with its vectors, built beside the served set (blue/green).

    A set is *building* while it is chunked and embedded, and becomes the version's
    ``active_chunks`` in one transaction once every chunk has a vector; the set it replaces is
    deleted in the same transaction, so search sees either the old chunks or the new ones.
    """

    class State(models.TextChoices):
        BUILDING = "building", "Building"
        ACTIVE = "active", "Active"

    class Source(models.TextChoices):
        PARSE = "parse", "Parsed from the stored file"
        COPY = "copy", "Copied from the active set (new vectors only)"

    version = models.ForeignKey(
        DocumentVersion, on_delete=models.CASCADE, related_name="chunk_sets"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.BUILDING)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.PARSE)
    # A parsed set's own text: the chunks' offsets point into it until it becomes the version's.
    extracted_text = models.TextField(blank=True)
    structure = models.JSONField(default=dict, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["version", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["version"], condition=models.Q(state="building"),
                name="chunkset_one_building_per_version",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} chunks ({self.state})"


class Chunk(models.Model):
    """A passage of a version's extracted text: what retrieval finds and answers cite."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    version = models.ForeignKey(DocumentVersion, on_delete=models.CASCADE, related_name="chunks")
    chunk_set = models.ForeignKey(ChunkSet, on_delete=models.CASCADE, related_name="chunks")
    # Copies of document facts, so search filters touch only this table and the planner can
    # walk the HNSW index instead of joining first (kept in step by search.ingestion.pipeline).
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="+")
    is_current = models.BooleanField(
        default=False, help_text="Belongs to the version its document serves."
    )
    published = models.BooleanField(
        default=True, help_text="Its document is published (a copy of Document.publication)."
    )
    excluded = models.BooleanField(
        default=False, help_text="A curator took this passage out of retrieval."
    )
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    start_offset = models.PositiveIntegerField(help_text="Into the version's extracted text.")
    end_offset = models.PositiveIntegerField()
    page = models.PositiveIntegerField(null=True, blank=True)
    page_end = models.PositiveIntegerField(null=True, blank=True)
    heading = models.CharField(max_length=1000, blank=True)
    token_count = models.PositiveIntegerField()

    class Meta:
        ordering = ["version", "ordinal"]
        constraints = [
            models.UniqueConstraint(
                fields=["chunk_set", "ordinal"], name="chunk_unique_ordinal_in_set"
            )
        ]
        indexes = [
            models.Index(
                fields=["domain", "document"], name="chunk_current_by_domain",
                condition=models.Q(is_current=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} #{self.ordinal}"


# What retrieval serves, on chunk columns alone (so the planner can walk the HNSW index).
SEARCHABLE_CHUNKS = models.Q(is_current=True, published=True, excluded=False)


class EmbeddingSpace(models.Model):
    """Vectors of one model run by one backend: only vectors of one space are comparable.

    ``name`` is the embedder's version (``model@sha12[+backend]``), so a changed model file
    or a quantisation that moves vectors is a new space. Each space has its own partial HNSW
    index on ``ChunkVector`` (built by ``search.ingestion.spaces.ensure_index``).
    """

    name = models.CharField(max_length=200, unique=True)
    model_path = models.CharField(max_length=1000)
    backend = models.CharField(max_length=20)
    dimensions = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.name

    @property
    def index_name(self) -> str:
        return f"chunkvector_hnsw_space_{self.pk}"


class ChunkVector(models.Model):
    """A chunk's vector in one embedding space (the column has no fixed dimension; the
    space's index casts it to its own)."""

    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="vectors")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, related_name="vectors")
    embedding = VectorField()
    embedded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["space", "chunk"], name="chunkvector_one_per_space")
        ]
        indexes = [models.Index(fields=["chunk"], name="chunkvector_by_chunk")]

    def __str__(self) -> str:
        return f"{self.chunk} in {self.space}"
