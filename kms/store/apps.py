from django.apps import AppConfig


class StoreConfig(AppConfig):
    name = "kms.store"
    label = "store"
    verbose_name = "Document store"

    def ready(self) -> None:
        """Who changed what, by django-auditlog: what curators and administrators change,
        not the pipeline's own bookkeeping (status, vectors, progress)."""
        from auditlog.registry import auditlog

        from kms.store import models

        auditlog.register(models.Domain, exclude_fields=["embedding_space", "next_space"],
                          m2m_fields={"member_groups"})
        auditlog.register(models.Document, include_fields=["title", "domain", "publication",
                                                           "access_groups"],
                          m2m_fields={"access_groups"})
        auditlog.register(models.Chunk, include_fields=["excluded"])
        auditlog.register(models.CuratedPair, m2m_fields={"documents"})
        auditlog.register(models.Feedback, include_fields=["state", "reviewed_by"])
        auditlog.register(models.ApiToken, include_fields=["name", "expires_at", "revoked_at"])
        auditlog.register(models.ModelRun, include_fields=["state", "promoted_at"])
