"""Dense retrieval: cosine nearest neighbours of the query vector with pgvector HNSW.

Vectors live in ``ChunkVector``, one row per chunk and embedding space; each space has a
partial HNSW index over its rows cast to its dimension, and this query uses that same
expression and predicate so the planner walks it. Filters (domain, access, dates...) are
applied in the same SQL: pgvector 0.8's iterative index scans keep scanning the graph until
enough rows pass them, so a selective filter does not starve the result.
"""

from __future__ import annotations

import numpy as np
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, VectorField

from kms.store.models import Chunk, ChunkVector, EmbeddingSpace


def dense_search(
    query_vector: np.ndarray, space: EmbeddingSpace, chunk_filter: Q, k: int, ef_search: int
) -> list[tuple[int, int, float]]:
    """(chunk id, document id, cosine similarity) of the ``k`` nearest allowed chunks with
    a vector in ``space`` (the query vector's; vectors of other spaces are not comparable)."""
    if query_vector.shape[-1] != space.dimensions:
        raise ValueError(f"A {query_vector.shape[-1]}-d query vector cannot search space "
                         f"{space.name} ({space.dimensions}-d).")
    vector = Cast("embedding", VectorField(dimensions=space.dimensions))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(ef_search, k)])
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = list(
            ChunkVector.objects.filter(space_id=space.pk)
            .filter(chunk_id__in=Chunk.objects.filter(chunk_filter).values("pk"))
            .annotate(distance=CosineDistance(vector, query_vector))
            .order_by("distance")
            .values_list("chunk_id", "chunk__document_id", "distance")[:k]
        )
    # relaxed_order may return neighbours slightly out of order: sort exactly
    return sorted(
        ((pk, document, 1.0 - distance) for pk, document, distance in rows),
        key=lambda row: (-row[2], row[0]),
    )
