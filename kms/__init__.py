"""kms: domain knowledge management with hybrid retrieval-augmented generation."""

from kms.celery import app as celery_app

__all__ = ["celery_app"]
