"""Hybrid search on the real database: modes, explanations, filters, access, bad input."""

from __future__ import annotations

import random

import pytest
from django.contrib.auth.models import Group, User

from kms.access import Access
from kms.store.models import Chunk, Document, Domain
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_cache
from search.retrieval import index_store as bm25_store
from search.retrieval.search import FusionOptions, SearchError, SearchFilters, search
from tests.conftest import OPERATOR

pytestmark = pytest.mark.django_db

TOPICS = {
    "sepsis": "Sepsis screening uses NEWS2; a score of five triggers review within thirty minutes.",
    "falls": "Falls prevention: check lying and standing blood pressure and review sedatives.",
    "warfarin": "Warfarin dosing follows the INR; target range two to three for most patients.",
    "hygiene": "Hand hygiene with alcohol rub for twenty seconds before every patient contact.",
    "pneumonia": "Community acquired pneumonia with CURB-65 of one is treated with amoxicillin.",
    "insulin": "Insulin infusions need hourly capillary glucose and potassium monitoring.",
    "transfusion": "Blood transfusion requires two identity checks at the bedside before starting.",
    "discharge": "Discharge planning starts on admission with an expected date of discharge.",
}


@pytest.fixture
def corpus(domain: Domain, settings, tmp_path) -> dict[str, Group]:
    """Public documents plus two restricted to group A and two to group B; index built."""
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    groups = {"a": Group.objects.create(name="ward-a"), "b": Group.objects.create(name="ward-b"),
              "staff": Group.objects.create(name="healthcare-staff")}
    domain.member_groups.add(*groups.values())
    owners = {"sepsis": "a", "falls": "a", "warfarin": "b", "insulin": "b"}
    ids = []
    for name, text in TOPICS.items():
        group = [groups[owners[name]]] if name in owners else []
        body = f"# {name.title()} guideline\n\n{text}\n\n## Notes\n\nApplies to {name} on wards."
        result = add_document(domain, uploader=OPERATOR, source=f"{name}.md", filename=f"{name}.md",
                              content=body.encode(), access_groups=group, queue=False)
        ids.append(result.version_id)
    process_inline(ids)
    bm25_store.build_index(domain)
    return groups


def test_each_mode_finds_the_document_and_explains_why(corpus) -> None:
    for mode in ("bm25", "dense", "hybrid"):
        response = search("amoxicillin for pneumonia", domain="healthcare", mode=mode, k=3,
                          access=OPERATOR)
        top = response.documents[0]
        assert top.source == "pneumonia.md", mode
        chunk = top.chunks[0]
        assert (chunk.bm25 is not None) == (mode in ("bm25", "hybrid"))
        assert (chunk.dense is not None) == (mode in ("dense", "hybrid"))
        assert chunk.score > 0
    hybrid = search("amoxicillin for pneumonia", domain="healthcare", mode="hybrid", k=3,
                    access=OPERATOR)
    chunk = hybrid.documents[0].chunks[0]
    assert chunk.bm25.rank == 1 and chunk.dense.rank >= 1
    assert "<mark>amoxicillin</mark>" in chunk.snippet.lower()
    assert hybrid.bm25_index_version


def test_both_fusion_methods_rank_the_obvious_document_first(corpus) -> None:
    for fusion in (FusionOptions("rrf", 60, 0.5), FusionOptions("weighted", 60, 0.3)):
        response = search("alcohol rub hand hygiene", domain="healthcare", fusion=fusion,
                          access=OPERATOR)
        assert response.documents[0].source == "hygiene.md"


def test_user_never_sees_another_groups_chunks(corpus) -> None:
    """200 random queries by a member of group A: no chunk of a group-B document, ever."""
    user = User.objects.create_user("nurse")
    user.groups.add(corpus["a"])
    access = Access.for_user(user)
    forbidden = set(
        Document.objects.filter(access_groups=corpus["b"]).values_list("pk", flat=True)
    )
    vocabulary = " ".join(TOPICS.values()).replace(";", " ").replace(",", " ").split()
    rng = random.Random(7)
    seen_a = False
    for i in range(200):
        query = " ".join(rng.sample(vocabulary, rng.randint(1, 6)))
        mode = ("bm25", "dense", "hybrid")[i % 3]
        response = search(query, domain="healthcare", access=access, mode=mode, k=20)
        returned = {c.document_id for c in response.chunks}
        assert not returned & forbidden, (query, mode)
        seen_a |= bool(returned & set(
            Document.objects.filter(access_groups=corpus["a"]).values_list("pk", flat=True)
        ))
    assert seen_a  # the user's own restricted documents are found


def test_domain_staff_see_public_documents_outsiders_nothing_superusers_all(corpus) -> None:
    outsider = Access.for_user(User.objects.create_user("visitor"))
    with pytest.raises(SearchError, match="Unknown domain 'healthcare'.*you can search: none"):
        search("warfarin INR target range", domain="healthcare", access=outsider)
    member = User.objects.create_user("porter")
    member.groups.add(corpus["staff"])
    response = search("warfarin INR target range", domain="healthcare",
                      access=Access.for_user(member))
    sources = {d.source for d in response.documents}
    assert sources and not sources & {"warfarin.md", "insulin.md", "sepsis.md", "falls.md"}
    admin = User.objects.create_superuser("root", password="x")
    response = search("warfarin INR target range", domain="healthcare",
                      access=Access.for_user(admin))
    assert response.documents[0].source == "warfarin.md"


def test_filters_restrict_documents_and_media_types(corpus) -> None:
    falls = Document.objects.get(source="falls.md")
    only_falls = SearchFilters(document_ids=(falls.pk,))
    response = search("patient", domain="healthcare", filters=only_falls, access=OPERATOR)
    assert {d.document_id for d in response.documents} == {falls.pk}
    response = search("patient", domain="healthcare",
                      filters=SearchFilters(media_types=("application/pdf",)), access=OPERATOR)
    assert response.documents == []
    note = add_document(corpus["staff"].member_domains.get(), uploader=OPERATOR,
                        source="patient-leaflet.txt", filename="patient-leaflet.txt",
                        content=b"Every patient gets a leaflet about falls on admission.",
                        queue=False)
    process_inline([note.version_id])
    only_text = SearchFilters(media_types=("text/plain",))
    for mode in ("dense", "hybrid"):
        response = search("patient leaflet falls", domain="healthcare", mode=mode,
                          filters=only_text, access=OPERATOR)
        assert [d.document_id for d in response.documents] == [note.document_id], mode


def test_a_replaced_version_is_not_served(corpus, domain: Domain) -> None:
    result = add_document(domain, uploader=OPERATOR, source="discharge.md", filename="discharge.md",
                          content=b"# Discharge\n\nPatients leave by noon with a summary letter.\n",
                          queue=False)
    process_inline([result.version_id])
    response = search("expected date of discharge", domain="healthcare", mode="bm25",
                      access=OPERATOR)
    served = Document.objects.get(source="discharge.md").current_version_id
    assert all(c.version_id == served for c in response.chunks)
    old_chunks = Chunk.objects.filter(document__source="discharge.md").exclude(version_id=served)
    assert old_chunks.exists()  # kept for old citations, never returned


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "Enter a question"), ("   ", "Enter a question"), ("x" * 10_000, "limit is")],
)
def test_bad_queries_get_clear_errors(corpus, query: str, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        search(query, domain="healthcare", access=OPERATOR)


def test_stop_words_only_and_unknown_domain(corpus) -> None:
    response = search("is it the of these", domain="healthcare", access=OPERATOR)
    assert response.documents == [] and "common words" in response.message
    with pytest.raises(SearchError, match="Unknown domain 'nowhere'.*healthcare"):
        search("sepsis", domain="nowhere", access=OPERATOR)
    with pytest.raises(SearchError, match="Unknown mode"):
        search("sepsis", domain="healthcare", mode="magic", access=OPERATOR)
    with pytest.raises(SearchError, match="bm25_weight"):
        search("sepsis", domain="healthcare", fusion=FusionOptions("weighted", 60, 2.0),
               access=OPERATOR)


def test_rebuilt_index_is_picked_up_without_restart(corpus, domain: Domain) -> None:
    first = index_cache.current_index("healthcare")
    result = add_document(domain, uploader=OPERATOR, source="stroke.md", filename="stroke.md",
                          content=b"# Stroke\n\nThrombolysis within four and a half hours.\n",
                          queue=False)
    process_inline([result.version_id])
    assert search("thrombolysis", domain="healthcare", mode="bm25", access=OPERATOR).documents == []
    bm25_store.build_index(domain)
    assert index_cache.current_index("healthcare").version != first.version
    hit = search("thrombolysis", domain="healthcare", mode="bm25", access=OPERATOR).documents[0]
    assert hit.source == "stroke.md"


def test_domain_without_index_still_answers_with_dense(domain: Domain) -> None:
    result = add_document(domain, uploader=OPERATOR, source="x.md", filename="x.md",
                          content=b"# Hip fracture\n\nSurgery within 36 hours.\n", queue=False)
    process_inline([result.version_id])
    response = search("hip fracture surgery", domain="healthcare", mode="hybrid", access=OPERATOR)
    assert response.documents[0].source == "x.md"
    assert "not built yet" in response.message
