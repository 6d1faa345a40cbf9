"""Storing documents: versions, de-duplication, limits, queueing on commit."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from kms.access import Access
from kms.store.models import Document, DocumentVersion, Domain, Status
from search.ingestion.documents import UnknownDomainError, add_document, get_domain, iter_files
from tests.conftest import OPERATOR

pytestmark = pytest.mark.django_db


def test_migration_creates_the_three_domains() -> None:
    assert set(Domain.objects.values_list("slug", flat=True)) >= {
        "healthcare", "finance", "education"
    }


def test_unknown_domain_names_the_known_ones() -> None:
    with pytest.raises(UnknownDomainError, match="unknown. Staff domains: .*healthcare"):
        get_domain("astrology")
    Domain.objects.create(slug="bench", name="Bench", purpose=Domain.Purpose.EVALUATION)
    with pytest.raises(UnknownDomainError, match="'bench' belongs to an evaluation command"):
        get_domain("bench")


def test_new_document_gets_version_one_and_queues_on_commit(
    domain: Domain, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = add_document(domain, uploader=OPERATOR, source="a.md", filename="a.md",
                              content=b"# A\n\nText.")
    assert result.outcome == "queued"
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.number == 1
    assert version.status == Status.PENDING
    assert version.file.read() == b"# A\n\nText."
    assert len(callbacks) == 1


def test_same_content_again_is_unchanged_and_changed_content_is_a_new_version(
    domain: Domain,
) -> None:
    first = add_document(domain, uploader=OPERATOR, source="a.md", filename="a.md",
                         content=b"one", queue=False)
    again = add_document(domain, uploader=OPERATOR, source="a.md", filename="a.md",
                         content=b"one", queue=False)
    changed = add_document(domain, uploader=OPERATOR, source="a.md", filename="a.md",
                           content=b"two", queue=False)
    assert again.outcome == "unchanged"
    assert again.version_id == first.version_id
    assert changed.outcome == "queued"
    assert DocumentVersion.objects.get(pk=changed.version_id).number == 2
    assert Document.objects.filter(domain=domain, source="a.md").count() == 1


def test_identical_content_under_another_name_is_a_duplicate(domain: Domain) -> None:
    first = add_document(domain, uploader=OPERATOR, source="a.md", filename="a.md",
                         content=b"same", queue=False)
    twin = add_document(domain, uploader=OPERATOR, source="b.md", filename="b.md",
                        content=b"same", queue=False)
    assert twin.outcome == "duplicate"
    assert twin.document_id == first.document_id
    assert not Document.objects.filter(source="b.md").exists()


def test_too_large_file_fails_with_reason_and_is_not_stored(domain: Domain, settings) -> None:
    settings.KMS_MAX_UPLOAD_BYTES = 10
    result = add_document(domain, uploader=OPERATOR, source="big.txt", filename="big.txt",
                          content=b"x" * 11)
    assert result.outcome == "failed"
    assert "limit is" in result.message and "KMS_MAX_UPLOAD_BYTES" in result.message
    version = DocumentVersion.objects.get(pk=result.version_id)
    assert version.status == Status.FAILED
    assert not version.file
    assert Document.objects.get(pk=result.document_id).status == Status.FAILED


def test_access_groups_are_attached(domain: Domain) -> None:
    group = Group.objects.create(name="clinicians")
    result = add_document(
        domain, uploader=OPERATOR, source="c.md", filename="c.md", content=b"c",
        access_groups=[group], queue=False,
    )
    assert list(Document.objects.get(pk=result.document_id).access_groups.all()) == [group]


def test_upload_messages_never_name_a_document_the_uploader_cannot_see(
    domain: Domain, django_user_model
) -> None:
    secret, staff = Group.objects.create(name="board"), Group.objects.create(name="hc-staff")
    domain.member_groups.add(secret, staff)
    hidden = add_document(domain, uploader=OPERATOR, source="board-minutes.md",
                          filename="board-minutes.md", content=b"# Board minutes\n\nPay rise.",
                          access_groups=[secret], queue=False)
    clerk = django_user_model.objects.create_user("clerk")
    clerk.groups.add(staff)
    uploader = Access.for_user(clerk)
    copy = add_document(domain, uploader=uploader, source="copy.md", filename="copy.md",
                        content=b"# Board minutes\n\nPay rise.", queue=False)
    assert copy.outcome == "queued" and copy.document_id != hidden.document_id
    assert copy.message == ""  # nothing says a hidden twin exists
    same_name = add_document(domain, uploader=uploader, source="board-minutes.md",
                             filename="board-minutes.md", content=b"# Other", queue=False)
    assert same_name.outcome == "failed" and same_name.document_id is None
    assert "cannot see" in same_name.message
    assert DocumentVersion.objects.filter(document_id=hidden.document_id).count() == 1
    outsider = add_document(Domain.objects.get(slug="finance"), uploader=uploader,
                            source="x.md", filename="x.md", content=b"x", queue=False)
    assert outsider.outcome == "failed" and "not a member" in outsider.message
    visible = add_document(domain, uploader=uploader, source="rota.md", filename="rota.md",
                           content=b"# Rota", queue=False)
    again = add_document(domain, uploader=uploader, source="rota-copy.md",
                         filename="rota-copy.md", content=b"# Rota", queue=False)
    assert again.outcome == "duplicate" and again.document_id == visible.document_id
    assert "rota.md" in again.message


def test_iter_files_walks_folders_and_skips_hidden(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    assert [p.name for p in iter_files([tmp_path])] == ["a.txt", "b.md"]
    with pytest.raises(FileNotFoundError, match="No such file"):
        list(iter_files([tmp_path / "missing"]))
