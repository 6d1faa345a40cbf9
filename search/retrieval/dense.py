"""Dense retrieval: cosine nearest neighbours of the query vector with pgvector HNSW.

Filters (domain, access, dates...) are applied in the same SQL. pgvector 0.8's iterative
index scans keep scanning the HNSW graph until enough rows pass them, so a selective filter
does not starve the result (plain HNSW would stop after ``ef_search`` candidates).
"""

from __future__ import annotations

import numpy as np
from django.db import connection, transaction
from django.db.models import Q
from pgvector.django import CosineDistance

from kms.store.models import Chunk


def dense_search(
    query_vector: np.ndarray, space: str, chunk_filter: Q, k: int, ef_search: int
) -> list[tuple[int, int, float]]:
    """(chunk id, document id, cosine similarity) of the ``k`` nearest allowed chunks whose
    vectors are of the query vector's embedding ``space`` (a vector of another model or
    quantisation is not comparable; it is found again once re-embedded)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(ef_search, k)])
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = list(
            Chunk.objects.filter(chunk_filter, embedding__isnull=False, embedding_model=space)
            .annotate(distance=CosineDistance("embedding", query_vector))
            .order_by("distance")
            .values_list("pk", "document_id", "distance")[:k]
        )
    # relaxed_order may return neighbours slightly out of order: sort exactly
    return sorted(
        ((pk, document, 1.0 - distance) for pk, document, distance in rows),
        key=lambda row: (-row[2], row[0]),
    )
