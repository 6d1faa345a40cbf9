"""The store's models, one module per idea; import them from here."""

from kms.store.models.audit import AccessEvent
from kms.store.models.conversations import Conversation, Turn
from kms.store.models.documents import (
    SEARCHABLE_CHUNKS,
    Chunk,
    ChunkSet,
    ChunkVector,
    Document,
    DocumentVersion,
    Domain,
    EmbeddingSpace,
    Publication,
    Status,
    version_upload_to,
)
from kms.store.models.feedback import CuratedPair, Feedback
from kms.store.models.indexes import LexicalIndex, LexicalIndexPart
from kms.store.models.registry import ModelRun
from kms.store.models.tokens import ApiToken

__all__ = [
    "SEARCHABLE_CHUNKS", "AccessEvent", "ApiToken", "Chunk", "ChunkSet", "ChunkVector",
    "Conversation", "CuratedPair", "Document", "DocumentVersion", "Domain", "EmbeddingSpace",
    "Feedback", "LexicalIndex", "LexicalIndexPart", "ModelRun", "Publication", "Status",
    "Turn", "version_upload_to",
]
