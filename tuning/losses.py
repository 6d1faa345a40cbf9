"""The sentence-transformers losses a fine-tuning run uses, chosen by its parameters."""

from __future__ import annotations

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, CrossEntropyLoss
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from torch import nn

from tuning.params import EmbedderParams, RerankerParams


def embedder_loss(model: SentenceTransformer, params: EmbedderParams) -> nn.Module:
    """In-batch-negatives contrastive loss (InfoNCE); hard negatives, if given, are extra
    columns. The cached variant (GradCache) gives the same gradients for a large batch with
    the memory of ``mini_batch_size`` rows: more negatives per query at the same memory."""
    if params.loss == "cached_mnrl":
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=params.mini_batch_size)
    return MultipleNegativesRankingLoss(model)


def reranker_loss(model: CrossEncoder, params: RerankerParams) -> nn.Module:
    """Binary cross-entropy on (query, passage, 1/0); positives are weighted by the negatives
    per pair, so the rare positive class is not drowned out (the sentence-transformers
    reranker recipe)."""
    weight = torch.tensor(float(max(params.negatives, 1)))
    return BinaryCrossEntropyLoss(model, pos_weight=weight)


def verifier_loss(model: CrossEncoder, label_counts: list[int]) -> nn.Module:
    """Cross-entropy over the labels, each weighted by the inverse of its frequency: not
    enough information is the most common pair, and contradictions the rarest and costliest
    to miss."""
    total = sum(label_counts)
    weights = [total / (len(label_counts) * count) if count else 0.0 for count in label_counts]
    return CrossEntropyLoss(model, weight=torch.tensor(weights, dtype=torch.float32))
