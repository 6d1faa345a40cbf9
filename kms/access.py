"""Who may see what: the one place that decides, as selectors every read goes through.

The rules, failing closed:

* A superuser sees everything.
* Any other user sees the documents of the domains their groups are members of
  (``Domain.member_groups``); nobody else's, and nothing at all without such a group.
* A document with access groups of its own is visible only to members of at least one of
  them, who must also be members of its domain.

Search, answers, the admin and (later) the portal, the API and downloads read documents,
versions and chunks only through these selectors, or through :func:`chunk_filter`, the same
rule written for the chunk table alone, so that SQL can walk the HNSW index under it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet

from kms.store.models import SEARCHABLE_CHUNKS, Chunk, Document, DocumentVersion, Domain


@dataclass(frozen=True)
class Access:
    """What one caller may see. ``None`` means "no limit" and only :meth:`everything` sets it.

    Build it with :meth:`for_user`, or :meth:`everything` for callers that act for the
    whole installation (an operator's ``--all``, evaluation commands); ``reason`` says which.
    """

    domain_ids: frozenset[int] | None
    group_ids: frozenset[int] | None
    reason: str = ""

    @property
    def unrestricted(self) -> bool:
        return self.domain_ids is None

    @classmethod
    def for_user(cls, user) -> Access:
        """A superuser sees everything; an inactive or anonymous user nothing."""
        if user is None or not getattr(user, "is_active", False):
            return cls(frozenset(), frozenset(), "no user")
        if user.is_superuser:
            return cls(None, None, f"superuser {user.get_username()}")
        group_ids = frozenset(user.groups.values_list("pk", flat=True))
        domain_ids = frozenset(
            Domain.member_groups.through.objects.filter(group_id__in=group_ids)
            .values_list("domain_id", flat=True)
        )
        return cls(domain_ids, group_ids, f"user {user.get_username()}")

    @classmethod
    def everything(cls, reason: str) -> Access:
        if not reason:
            raise ValueError("Say who acts without restriction (e.g. 'manage.py ask --all').")
        return cls(None, None, reason)

    def sees_domain(self, domain_id: int) -> bool:
        return self.domain_ids is None or domain_id in self.domain_ids


def _groups_allow(access: Access, document_ref: str) -> Q:
    """A document without access groups, or with one the caller belongs to."""
    through = Document.access_groups.through
    restricted = through.objects.filter(document_id=OuterRef(document_ref))
    return ~Exists(restricted) | Exists(restricted.filter(group_id__in=access.group_ids))


def document_q(access: Access, prefix: str = "") -> Q:
    """The rule as a filter on ``Document`` (``prefix`` e.g. ``"document__"`` from a relation)."""
    if access.unrestricted:
        return Q()
    domain = {f"{prefix}domain_id__in": access.domain_ids}
    return Q(**domain) & _groups_allow(access, f"{prefix}pk" if prefix else "pk")


def for_request(request, user) -> Access:
    """``user``'s access, worked out once per request however often a view asks for it
    (admin and portal: the signed-in user; the API: its token's user)."""
    cached = getattr(request, "_kms_access", None)
    if cached is None or cached[0] is not user:
        cached = request._kms_access = (user, Access.for_user(user))
    return cached[1]


def visible_document(access: Access, document_id: int) -> Document | None:
    """One document, if the caller may see it (with its domain and served version)."""
    return visible_documents(access).select_related("domain", "current_version").filter(
        pk=document_id).first()


def visible_domains(access: Access) -> QuerySet[Domain]:
    if access.unrestricted:
        return Domain.objects.all()
    return Domain.objects.filter(pk__in=access.domain_ids)


def visible_documents(access: Access) -> QuerySet[Document]:
    return Document.objects.filter(document_q(access))


def visible_versions(access: Access) -> QuerySet[DocumentVersion]:
    return DocumentVersion.objects.filter(document_q(access, "document__"))


def visible_chunks(access: Access) -> QuerySet[Chunk]:
    """Every chunk (of any version or set) of a visible document, e.g. for the admin."""
    if access.unrestricted:
        return Chunk.objects.all()
    return Chunk.objects.filter(
        Q(domain_id__in=access.domain_ids) & _groups_allow(access, "document_id")
    )


def chunk_filter(access: Access, domain: Domain) -> Q:
    """Searchable chunks (served, published, not excluded) of ``domain`` the caller may see,
    as a filter on the chunk table alone.

    Only chunk columns and a correlated subquery: a join here would lead the planner away
    from the HNSW index. A domain the caller is not a member of matches nothing.
    """
    served = SEARCHABLE_CHUNKS & Q(domain_id=domain.pk)
    if access.unrestricted:
        return served
    if not access.sees_domain(domain.pk):
        return Q(pk__in=[])
    return served & _groups_allow(access, "document_id")
