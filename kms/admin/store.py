"""Admin of the store: actions call the ingest and curation services, never the pipeline inline.

Every list, detail page, search and action works on the selectors of ``kms.access`` for the
signed-in account: domain staff see their domains' documents and nothing of another group's
restricted documents (not their text, their chunks, nor a chunk search hit).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth.models import Group
from django.contrib.postgres.aggregates import StringAgg
from django.core.exceptions import ValidationError
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.defaultfilters import pluralize
from django.utils.html import format_html

from kms import access
from kms.admin.common import ReadOnlyAdmin, access_of
from kms.store.models import (
    ApiToken,
    Chunk,
    Document,
    DocumentVersion,
    Domain,
    EmbeddingSpace,
    ModelRun,
    Publication,
)
from kms.tokens import issue_token, revoke_token
from search.ingestion import curation
from search.ingestion.documents import reembed, reprocess
from tuning import registry


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "purpose", "chunk_tokens", "chunk_overlap",
                    "document_count"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["member_groups"]
    readonly_fields = ["embedding_space", "next_space"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Domain]:
        visible = access_of(request)
        counts = (
            access.visible_documents(visible).filter(domain=OuterRef("pk")).order_by()
            .values("domain").annotate(n=Count("pk")).values("n")
        )
        return access.visible_domains(visible).annotate(
            visible_documents=Coalesce(Subquery(counts), 0)
        )

    @admin.display(description="Documents", ordering="visible_documents")
    def document_count(self, obj: Domain) -> int:
        return obj.visible_documents

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        """Deleting a domain lists every document in it, so only superusers may."""
        return request.user.is_superuser and super().has_delete_permission(request, obj)


class VersionInline(admin.TabularInline):  # inside a document the account may see
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


class DocumentActionForm(ActionForm):
    """The targets of the bulk "move" and "set groups" actions."""

    domain = forms.ModelChoiceField(Domain.objects.filter(purpose=Domain.Purpose.DOCUMENTS),
                                    required=False, label="Domain")
    groups = forms.ModelMultipleChoiceField(Group.objects.all(), required=False,
                                            label="Access groups")


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "domain", "status_badge", "publication", "media_type",
                    "version_number", "updated_at"]
    list_filter = [("domain", admin.RelatedOnlyFieldListFilter), "status", "publication",
                   "media_type", ("access_groups", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "source", "content_hash"]
    readonly_fields = ["domain", "source", "media_type", "content_hash", "status",
                       "status_message", "publication", "current_version", "uploaded_by",
                       "created_at", "updated_at"]
    filter_horizontal = ["access_groups"]
    inlines = [VersionInline]
    action_form = DocumentActionForm
    actions = ["publish", "archive", "restore", "process_again", "reembed_documents",
               "move_to_domain", "set_access_groups", "delete_documents"]
    list_select_related = ["domain", "current_version"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return access.visible_documents(access_of(request)).select_related("domain")

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

    def get_actions(self, request: HttpRequest) -> dict:
        """Deleting goes through the service, which also removes the stored files."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request: HttpRequest, obj: Document) -> None:
        curation.delete_documents(access_of(request), [obj.pk])

    def _publication(self, request, queryset, publication: str, done: str) -> None:
        count = curation.set_publication(access_of(request), queryset.values_list(
            "pk", flat=True), publication)
        self.message_user(request, f"{done} {count} document{pluralize(count)}.",
                          messages.SUCCESS)

    @admin.action(description="Publish (search and cite them)", permissions=["change"])
    def publish(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        self._publication(request, queryset, Publication.PUBLISHED, "Published")

    @admin.action(description="Archive (out of search; kept)", permissions=["change"])
    def archive(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        self._publication(request, queryset, Publication.ARCHIVED, "Archived")

    @admin.action(description="Restore archived documents", permissions=["change"])
    def restore(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        self._publication(request, queryset.filter(publication=Publication.ARCHIVED),
                          Publication.PUBLISHED, "Restored")

    @admin.action(description="Move to the domain chosen below", permissions=["change"])
    def move_to_domain(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        domain = Domain.objects.filter(pk=request.POST.get("domain") or None).first()
        if domain is None:
            self.message_user(request, "Choose the domain to move them to.", messages.ERROR)
            return
        try:
            count = curation.move_to_domain(access_of(request),
                                            queryset.values_list("pk", flat=True), domain)
        except curation.CurationError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"Moved {count} document{pluralize(count)} to {domain}.",
                          messages.SUCCESS)

    @admin.action(description="Set the access groups chosen below (none: the whole domain)",
                  permissions=["change"])
    def set_access_groups(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        groups = list(Group.objects.filter(pk__in=request.POST.getlist("groups")))
        count = curation.assign_groups(access_of(request),
                                       queryset.values_list("pk", flat=True), groups)
        names = ", ".join(g.name for g in groups) or "every member of the domain"
        self.message_user(request, f"{count} document{pluralize(count)} now visible to "
                          f"{names}.", messages.SUCCESS)

    @admin.action(description="Delete with every version, passage and file",
                  permissions=["delete"])
    def delete_documents(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = curation.delete_documents(access_of(request),
                                          queryset.values_list("pk", flat=True))
        self.message_user(request, f"Deleted {count} document{pluralize(count)}.",
                          messages.SUCCESS)

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
    list_filter = ["status", "media_type", ("document__domain", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["document__title", "filename", "content_hash"]
    actions = ["reembed_versions"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DocumentVersion]:
        return access.visible_versions(access_of(request)).select_related("document")

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
    """Read-only but for exclusion: chunks are derived data; a bad passage can be taken out
    of retrieval (and put back), anything else is changed in the document."""

    list_display = ["__str__", "page", "heading", "token_count", "spaces", "excluded"]
    list_filter = [("domain", admin.RelatedOnlyFieldListFilter), "excluded", "is_current",
                   ("vectors__space", admin.RelatedOnlyFieldListFilter)]
    actions = ["exclude_chunks", "include_chunks"]
    search_fields = ["text", "document__title"]
    list_select_related = ["version__document"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Chunk]:
        return access.visible_chunks(access_of(request)).annotate(
            space_names=StringAgg("vectors__space__name", ", ", distinct=True)
        )

    @admin.display(description="Vectors in")
    def spaces(self, obj: Chunk) -> str:
        return obj.space_names or "-"

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [f.name for f in Chunk._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_curate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("store.change_chunk")

    @admin.action(description="Exclude from retrieval", permissions=["curate"])
    def exclude_chunks(self, request: HttpRequest, queryset: QuerySet[Chunk]) -> None:
        count = curation.set_excluded(access_of(request), list(queryset.values_list(
            "pk", flat=True)), True)
        self.message_user(request, f"Excluded {count} passage{pluralize(count)} from "
                          "retrieval.", messages.SUCCESS)

    @admin.action(description="Include in retrieval again", permissions=["curate"])
    def include_chunks(self, request: HttpRequest, queryset: QuerySet[Chunk]) -> None:
        count = curation.set_excluded(access_of(request), list(queryset.values_list(
            "pk", flat=True)), False)
        self.message_user(request, f"Included {count} passage{pluralize(count)} again.",
                          messages.SUCCESS)

    def get_actions(self, request: HttpRequest) -> dict:
        """Chunks are deleted with their document or version, never one by one."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "show_delete": False}
        )


@admin.register(EmbeddingSpace)
class EmbeddingSpaceAdmin(ReadOnlyAdmin):
    """Read-only: a space is registered by the model that fills it."""

    list_display = ["name", "backend", "dimensions", "model_path", "created_at"]


@admin.register(ModelRun)
class ModelRunAdmin(admin.ModelAdmin):
    """The model registry: every run with its data, loss curve and gate; promote or roll back."""

    list_display = ["pk", "domain", "kind", "state_badge", "progress", "candidate_ndcg",
                    "served_ndcg", "training_seconds", "created_at"]
    list_filter = [("domain", admin.RelatedOnlyFieldListFilter), "kind", "state"]
    actions = ["promote_runs", "roll_back_runs"]
    list_select_related = ["domain"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelRun]:
        return ModelRun.objects.filter(
            domain__in=access.visible_domains(access_of(request))).select_related("domain")

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return [f.name for f in ModelRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started by manage.py finetune or the schedule

    @admin.display(description="State", ordering="state")
    def state_badge(self, obj: ModelRun):
        colour = {"promoted": "green", "failed": "#ba2121", "rejected": "#a60"}.get(
            obj.state, "#666")
        return format_html('<b style="color:{}" title="{}">{}</b>', colour, obj.message,
                           obj.get_state_display())

    @admin.display(description="Steps")
    def progress(self, obj: ModelRun) -> str:
        return f"{obj.progress_step}/{obj.progress_total}" if obj.progress_total else "-"

    @admin.display(description="nDCG@10 (new)")
    def candidate_ndcg(self, obj: ModelRun):
        return (obj.metrics.get("candidate") or {}).get("ndcg@10", "-")

    @admin.display(description="nDCG@10 (served)")
    def served_ndcg(self, obj: ModelRun):
        return (obj.metrics.get("served") or {}).get("ndcg@10", "-")

    @admin.display(description="Training s")
    def training_seconds(self, obj: ModelRun):
        return obj.data_counts.get("training_seconds", "-")

    @admin.action(description="Promote (serve) the selected run")
    def promote_runs(self, request: HttpRequest, queryset: QuerySet[ModelRun]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one run to promote.", messages.ERROR)
            return
        run = queryset.get()
        try:
            registry.promote(run)
        except registry.RegistryError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.log_change(request, run, "Promoted.")
        self.message_user(request, f"Run {run.pk} is served for {run.domain}.", messages.SUCCESS)

    @admin.action(description="Roll back: serve what was served before the selected run")
    def roll_back_runs(self, request: HttpRequest, queryset: QuerySet[ModelRun]) -> None:
        for run in queryset.filter(state=ModelRun.State.PROMOTED):
            try:
                previous = registry.roll_back(run.domain, run.kind)
            except registry.RegistryError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.log_change(request, run, "Rolled back.")
            served = f"run {previous.pk}" if previous else "the base model"
            self.message_user(request, f"{run.domain} {run.kind}: {served} is served again.",
                              messages.SUCCESS)


class ApiTokenForm(forms.ModelForm):
    days = forms.IntegerField(min_value=1, initial=90, help_text="How long it lasts.")

    class Meta:
        model = ApiToken
        fields = ["user", "name"]

    def clean_days(self) -> int:
        days = self.cleaned_data["days"]
        if days > settings.KMS_API_TOKEN_MAX_DAYS:
            raise ValidationError(f"At most {settings.KMS_API_TOKEN_MAX_DAYS} days "
                                  "(KMS_API_TOKEN_MAX_DAYS).")
        return days


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are issued here (the secret is shown once, in the message after saving) and
    revoked, never edited: a token's owner and expiry are fixed when it is made."""

    form = ApiTokenForm
    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at",
                    "last_used_at"]
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "user__username"]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        tokens = super().get_queryset(request).select_related("user")
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        token, secret = issue_token(form.cleaned_data["user"], form.cleaned_data["name"],
                                    form.cleaned_data["days"])  # the form checked the days
        obj.pk, obj.prefix = token.pk, token.prefix
        self.message_user(request, f"Token {token.prefix} for {token.user}: {secret} — copy it "
                          "now, it is not shown again.", messages.WARNING)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = 0
        for token in queryset:
            revoke_token(token)
            count += 1
        self.message_user(request, f"Revoked {count} token{pluralize(count)}.")
