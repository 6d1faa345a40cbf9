"""Admin of what people said and read: the feedback review queue (promote to a curated pair),
the curated question/answer pairs of each domain, and the read-only audit log of reads.

Curators see the feedback, pairs and events of the domains they are members of.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import pluralize
from django.utils.html import format_html

from kms import access
from kms.admin.common import ReadOnlyAdmin, access_of
from kms.store.models import AccessEvent, CuratedPair, Feedback
from search.curation.feedback import FeedbackError, promote, review


def _domain_ids(request: HttpRequest):
    return access.visible_domains(access_of(request)).values("pk")


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """The review queue: new feedback first; promote what deserves to be gold."""

    list_display = ["created_at", "domain", "target", "rating_badge", "short_query",
                    "citation", "document", "user", "state"]
    list_filter = ["state", "target", "rating", ("domain", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["query", "answer_text", "comment"]
    list_select_related = ["domain", "document", "user"]
    actions = ["promote_to_pairs", "mark_reviewed", "dismiss"]
    readonly_fields = ["user", "domain", "target", "rating", "comment", "query", "answer_text",
                       "turn", "citation", "document", "version", "chunk", "state",
                       "reviewed_by", "reviewed_at", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Feedback]:
        return super().get_queryset(request).filter(domain__in=_domain_ids(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Rating", ordering="rating")
    def rating_badge(self, obj: Feedback):
        colour = "green" if obj.rating == Feedback.Rating.UP else "#ba2121"
        return format_html('<b style="color:{}">{}</b>', colour, obj.get_rating_display())

    @admin.display(description="Question or query")
    def short_query(self, obj: Feedback) -> str:
        return obj.query[:80]

    @admin.action(description="Promote to curated question/answer pairs",
                  permissions=["change"])
    def promote_to_pairs(self, request: HttpRequest, queryset: QuerySet[Feedback]) -> None:
        made = 0
        for feedback in queryset.select_related("turn", "domain"):
            try:
                promote(feedback, request.user)
                made += 1
            except FeedbackError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"Made {made} curated pair{pluralize(made)}; edit them "
                          "under Curated question/answer pairs.", messages.SUCCESS)

    @admin.action(description="Mark as reviewed", permissions=["change"])
    def mark_reviewed(self, request: HttpRequest, queryset: QuerySet[Feedback]) -> None:
        count = review(queryset, request.user, Feedback.State.REVIEWED)
        self.message_user(request, f"{count} marked as reviewed.")

    @admin.action(description="Dismiss", permissions=["change"])
    def dismiss(self, request: HttpRequest, queryset: QuerySet[Feedback]) -> None:
        count = review(queryset, request.user, Feedback.State.DISMISSED)
        self.message_user(request, f"{count} dismissed.")


@admin.register(CuratedPair)
class CuratedPairAdmin(admin.ModelAdmin):
    """The domain's gold questions and answers: what evaluation and fine-tuning take."""

    list_display = ["question", "domain", "origin", "active", "created_by", "updated_at"]
    list_filter = [("domain", admin.RelatedOnlyFieldListFilter), "origin", "active"]
    search_fields = ["question", "answer"]
    autocomplete_fields = ["documents"]
    readonly_fields = ["origin", "feedback", "created_by", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CuratedPair]:
        return super().get_queryset(request).filter(domain__in=_domain_ids(request))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "domain":
            kwargs["queryset"] = access.visible_domains(access_of(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "documents":
            kwargs["queryset"] = access.visible_documents(access_of(request))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: CuratedPair, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(AccessEvent)
class AccessEventAdmin(ReadOnlyAdmin):
    """Read-only and append-only (the database refuses changes): who read what."""

    list_display = ["at", "username", "action", "channel", "domain", "short_query",
                    "document_list"]
    list_filter = ["action", "channel", "domain"]
    search_fields = ["username", "query"]
    date_hierarchy = "at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[AccessEvent]:
        queryset = super().get_queryset(request)
        if access_of(request).unrestricted:
            return queryset
        return queryset.filter(domain__in=access.visible_domains(access_of(request))
                               .values("slug"))

    @admin.display(description="Query")
    def short_query(self, obj: AccessEvent) -> str:
        return obj.query[:80]

    @admin.display(description="Document/version ids")
    def document_list(self, obj: AccessEvent) -> str:
        return ", ".join(f"{d['document']}/{d['version']}" for d in obj.documents[:10])
