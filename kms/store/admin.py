"""Admin for curating the store; actions call the ingest services, never the pipeline inline."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import pluralize
from django.utils.html import format_html

from kms.store.models import Chunk, Document, DocumentVersion, Domain
from search.ingestion.documents import reembed, reprocess


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "chunk_tokens", "chunk_overlap", "document_count"]
    prepopulated_fields = {"slug": ["name"]}

    @admin.display(description="Documents")
    def document_count(self, obj: Domain) -> int:
        return obj.documents.count()


class VersionInline(admin.TabularInline):
    model = DocumentVersion
    fields = ["number", "filename", "media_type", "size_bytes", "status", "status_message",
              "page_count", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def _current_versions(queryset: QuerySet[Document]) -> list[int]:
    return [pk for pk in queryset.values_list("current_version_id", flat=True) if pk]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "domain", "status_badge", "media_type", "version_number",
                    "updated_at"]
    list_filter = ["domain", "status", "media_type", "access_groups"]
    search_fields = ["title", "source", "content_hash"]
    readonly_fields = ["domain", "source", "media_type", "content_hash", "status",
                       "status_message", "current_version", "uploaded_by", "created_at",
                       "updated_at"]
    filter_horizontal = ["access_groups"]
    inlines = [VersionInline]
    actions = ["process_again", "reembed_documents"]
    list_select_related = ["domain", "current_version"]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Document):
        colour = {"ready": "green", "failed": "#ba2121"}.get(obj.status, "#666")
        return format_html('<b style="color:{}" title="{}">{}</b>', colour,
                           obj.status_message, obj.get_status_display())

    @admin.display(description="Version")
    def version_number(self, obj: Document):
        return obj.current_version.number if obj.current_version else "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Documents come in through ingestion (``manage.py ingest``, later the portal)."""
        return False

    @admin.action(description="Process again (parse, chunk, embed) the newest version")
    def process_again(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        newest = [doc.versions.order_by("-number").values_list("pk", flat=True).first()
                  for doc in queryset]
        ids = [pk for pk in newest if pk]
        reprocess(ids)
        for document in queryset:
            self.log_change(request, document, "Queued for processing again.")
        self.message_user(request, f"Queued {len(ids)} version{pluralize(len(ids))} for "
                          "processing; they stay searchable meanwhile.")

    @admin.action(description="Re-embed the served version with the current model")
    def reembed_documents(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        ids = _current_versions(queryset)
        count = reembed(ids)
        for document in queryset:
            self.log_change(request, document, "Queued for re-embedding.")
        self.message_user(request, f"Queued {count} chunk{pluralize(count)} of {len(ids)} "
                          f"document{pluralize(len(ids))} for re-embedding.", messages.SUCCESS)


@admin.register(DocumentVersion)
class DocumentVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "media_type", "size_bytes", "page_count", "created_at"]
    list_filter = ["status", "media_type", "document__domain"]
    search_fields = ["document__title", "filename", "content_hash"]
    actions = ["reembed_versions"]

    exclude = ["structure", "file"]  # uploads are not served over HTTP: they may be restricted

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [f.name for f in DocumentVersion._meta.fields if f.name not in self.exclude]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.action(description="Re-embed the selected versions with the current model")
    def reembed_versions(self, request: HttpRequest, queryset: QuerySet[DocumentVersion]) -> None:
        count = reembed(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Queued {count} chunk{pluralize(count)} for re-embedding.")


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    """Read-only: chunks are derived data; change the document and process it again."""

    list_display = ["__str__", "page", "heading", "token_count", "embedding_model", "has_vector"]
    list_filter = ["document__domain", "embedding_model"]
    search_fields = ["text", "document__title"]
    list_select_related = ["version__document"]
    exclude = ["embedding"]

    @admin.display(boolean=True, description="Vector")
    def has_vector(self, obj: Chunk) -> bool:
        return obj.embedding is not None

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [f.name for f in Chunk._meta.fields if f.name != "embedding"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict:
        """Chunks are deleted with their document or version, never one by one."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "show_delete": False}
        )
