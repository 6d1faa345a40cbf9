"""The access suite: what each kind of user may see, through every way of reading the store.

Three domains; groups that are members of one domain, of two, or of none; documents open to
a domain's members and documents restricted to groups. Users: a member of one domain, a
member of a group inside a domain, a member of a group across domains, a member of a group
that belongs to no domain, a user with no groups, a domain's staff (admin access) and a
superuser. For each, 200 seeded random queries go through ``search()`` (every mode, every
domain), ``answer()`` (its sources and passages) and the admin's chunk search, and the admin's
lists and detail pages of documents, versions and chunks are read. What they may see is
worked out here from the fixture's own table, not from ``kms.access``; the count of items
they may not see must be 0.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from kms.access import Access
from kms.store.models import Chunk, Document, DocumentVersion, Domain
from search.answering.answers import answer
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_store
from search.retrieval.search import SearchError, search
from tests.conftest import OPERATOR

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

QUERIES_PER_USER = 200

# domain -> member groups
DOMAINS = {
    "healthcare": ["hc-staff", "clinicians"],
    "finance": ["fin-staff", "leadership"],
    "education": ["edu-staff", "leadership"],
}
# (domain, source, restricted to, text)
DOCUMENTS = [
    ("healthcare", "hand-hygiene.md", [], "Staff rub alcohol gel for twenty seconds before "
     "every patient contact and wash with soap after caring for diarrhoea."),
    ("healthcare", "visiting.md", [], "Visiting hours run from two until eight in the evening; "
     "two visitors per bed and children with an adult."),
    ("healthcare", "warfarin.md", ["clinicians"], "Warfarin doses keep the INR between two and "
     "three; vitamin K reverses a high INR before urgent surgery."),
    ("healthcare", "controlled-drugs.md", ["clinicians"], "Controlled drugs are counted by two "
     "registered nurses at every shift change and recorded in the register."),
    ("healthcare", "board-pay-hc.md", ["leadership"], "Executive pay at the trust is set by "
     "the remuneration committee against the national pay framework."),
    ("healthcare", "ghost-audit.md", ["ghost"], "The fraud audit of pharmacy invoices found "
     "duplicate payments to one supplier in March."),
    ("finance", "expenses.md", [], "Expense claims need receipts and are approved by the line "
     "manager within thirty days of the purchase."),
    ("finance", "corporate-card.md", [], "Corporate cards may not be used for cash withdrawals; "
     "the monthly limit is set by the finance director."),
    ("finance", "credit-approval.md", ["leadership"], "Credit above two million needs approval "
     "by the credit committee and a second signature from the risk officer."),
    ("finance", "board-pay-fin.md", ["leadership"], "Board remuneration is reviewed each year "
     "against peers and disclosed in the annual report."),
    ("education", "late-work.md", [], "Late coursework loses five marks per day for up to five "
     "days; after that it receives a mark of zero."),
    ("education", "appeals.md", [], "Students may appeal a grade within ten working days by "
     "writing to the academic registrar."),
    ("education", "fitness-to-study.md", ["leadership"], "A fitness to study review meets when "
     "a student's health puts their safety or progress at risk."),
]
# username -> groups, is_staff, is_superuser. Every account may use the admin with view
# permissions, so the admin's scoping is what is tested, not its login page.
USERS = {
    "hc-member": (["hc-staff"], True, False),
    "clinician": (["clinicians"], True, False),
    "leader": (["leadership"], True, False),
    "ghost": (["ghost"], True, False),
    "nobody": ([], True, False),
    "fin-curator": (["fin-staff"], True, False),
    "root": ([], True, True),
}


@dataclass
class World:
    users: dict[str, User]
    sources: dict[int, str]  # document id -> source
    may_see: dict[str, set[int]]  # username -> document ids, from the tables above
    may_search: dict[str, set[str]]  # username -> domain slugs


def expected_documents(username: str) -> set[str]:
    """The rule, restated from the tables: members of a domain see its open documents, and
    its restricted ones only through a group that restricts them."""
    groups, _, superuser = USERS[username]
    if superuser:
        return {source for _, source, _, _ in DOCUMENTS}
    return {
        source for domain, source, restricted, _ in DOCUMENTS
        if set(groups) & set(DOMAINS[domain]) and (not restricted or set(groups) & set(restricted))
    }


@pytest.fixture
def world(settings, tmp_path) -> World:
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    groups = {name: Group.objects.get_or_create(name=name)[0]
              for names in [*DOMAINS.values(), ["ghost"]] for name in names}
    domains = {}
    for slug, members in DOMAINS.items():
        domain = Domain.objects.get_or_create(slug=slug, defaults={"name": slug.title()})[0]
        domain.member_groups.set([groups[name] for name in members])
        domains[slug] = domain
    ids, sources = [], {}
    for slug, source, restricted, text in DOCUMENTS:
        title = source.removesuffix(".md").replace("-", " ").capitalize()
        result = add_document(
            domains[slug], uploader=OPERATOR, source=source, filename=source,
            content=f"# {title}\n\n{text}\n".encode(), queue=False,
            access_groups=[groups[name] for name in restricted],
        )
        ids.append(result.version_id)
        sources[result.document_id] = source
    process_inline(ids)
    for domain in domains.values():
        index_store.build_index(domain)
    viewing = Permission.objects.filter(
        content_type__app_label="store", codename__startswith="view_"
    )
    users = {}
    for username, (names, staff, superuser) in USERS.items():
        user = User.objects.create_user(username, password="pw-for-tests", is_staff=staff,
                                        is_superuser=superuser)
        user.groups.set([groups[name] for name in names])
        if staff:
            user.user_permissions.set(viewing)
        users[username] = user
    by_source = {source: pk for pk, source in sources.items()}
    may_see = {name: {by_source[s] for s in expected_documents(name)} for name in USERS}
    may_search = {
        name: {slug for slug, _, _, _ in DOCUMENTS if USERS[name][2]
               or set(USERS[name][0]) & set(DOMAINS[slug])}
        for name in USERS
    }
    return World(users, sources, may_see, may_search)


def random_queries(count: int, seed: int) -> list[str]:
    words = re.findall(r"[a-z]{4,}", " ".join(text.lower() for *_, text in DOCUMENTS))
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, rng.randint(1, 5))) for _ in range(count)]


def admin_ids(client: Client, model: str, query: str = "") -> set[int]:
    """The ids of the objects a changelist (the corpus fits one page) links to."""
    page = client.get(f"/admin/store/{model}/", {"q": query} if query else {})
    if page.status_code != 200:
        return set()
    return {int(pk) for pk in re.findall(rf"/admin/store/{model}/(\d+)/change/".encode(),
                                         page.content)}


def test_no_user_ever_sees_what_they_may_not(world: World) -> None:
    counts: dict[str, Counter] = {}
    document_of_chunk = dict(Chunk.objects.values_list("pk", "document_id"))
    document_of_version = dict(DocumentVersion.objects.values_list("pk", "document_id"))
    for n, (username, user) in enumerate(world.users.items()):
        access = Access.for_user(user)
        allowed = world.may_see[username]
        seen = Counter()
        client = Client()
        client.force_login(user)
        for i, query in enumerate(random_queries(QUERIES_PER_USER, seed=n)):
            slug = list(DOMAINS)[i % 3]
            mode = ("bm25", "dense", "hybrid")[i % 3 if i % 2 else (i + 1) % 3]
            try:
                response = search(query, domain=slug, access=access, mode=mode, k=10)
            except SearchError:
                assert slug not in world.may_search[username], (username, slug)
                seen["domains refused"] += 1
                continue
            assert slug in world.may_search[username], (username, slug)
            returned = {c.document_id for c in response.chunks} | {
                d.document_id for d in response.documents}
            seen["search items"] += len(returned)
            seen["search items not allowed"] += len(returned - allowed)
            result = answer(query, domain=slug, access=access)
            cited = {c.document_id for c in result.sources + result.passages}
            seen["answer items"] += len(cited)
            seen["answer items not allowed"] += len(cited - allowed)
            hits = admin_ids(client, "chunk", query.split()[0])
            seen["admin chunk-search items"] += len(hits)
            seen["admin chunk-search items not allowed"] += len(
                {document_of_chunk[pk] for pk in hits} - allowed)
        for model, owner in (("document", None), ("documentversion", document_of_version),
                             ("chunk", document_of_chunk)):
            listed = admin_ids(client, model)
            owners = listed if owner is None else {owner[pk] for pk in listed}
            seen[f"admin {model} list items"] += len(listed)
            seen[f"admin {model} list items not allowed"] += len(owners - allowed)
        for model, objects in (("document", Document.objects.all()),
                               ("documentversion", DocumentVersion.objects.all()),
                               ("chunk", Chunk.objects.all())):
            for obj in objects:
                document = obj.pk if model == "document" else obj.document_id
                for page_name in ("change", "history"):
                    page = client.get(f"/admin/store/{model}/{obj.pk}/{page_name}/")
                    shown = page.status_code == 200
                    seen[f"admin {model} {page_name} pages shown"] += shown
                    seen[f"admin {model} {page_name} pages not allowed"] += (
                        shown and document not in allowed)
        domains = {pk for pk in admin_ids(client, "domain")}
        slugs = set(Domain.objects.filter(pk__in=domains).values_list("slug", flat=True))
        seen["admin domain list items"] += len(slugs)
        seen["admin domain list items not allowed"] += len(slugs - world.may_search[username])
        counts[username] = seen
    print_counts(counts)
    for username, seen in counts.items():
        assert sum(v for k, v in seen.items() if k.endswith("not allowed")) == 0, (username, seen)
    # The suite can fail: users do see what they may.
    assert counts["clinician"]["search items"] and counts["leader"]["answer items"]
    for username in USERS:
        assert counts[username]["admin document change pages shown"] == len(
            world.may_see[username]), username
    assert counts["root"]["admin chunk change pages shown"] == Chunk.objects.count()
    assert counts["clinician"]["admin chunk-search items"] > counts["hc-member"][
        "admin chunk-search items"]
    assert counts["nobody"]["domains refused"] == QUERIES_PER_USER


def print_counts(counts: dict[str, Counter]) -> None:
    keys = sorted({k for seen in counts.values() for k in seen})
    print(f"\naccess suite: {QUERIES_PER_USER} queries per user")
    for key in keys:
        print(f"  {key:<46}" + " ".join(f"{name}={seen[key]}" for name, seen in counts.items()))
