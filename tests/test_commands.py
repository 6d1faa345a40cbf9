"""The ingest and import_beir management commands (processing inline, no worker needed)."""

from __future__ import annotations

import gzip
import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kms.store.models import Document, Status

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command(*args, stdout=out, stderr=StringIO())
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def test_ingest_folder_reports_each_failure_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("# Falls\n\nCheck lying and standing blood pressure.\n")
    (tmp_path / "notes.txt").write_text("Bed rails are assessed on admission.\n")
    (tmp_path / "scan.pdf").write_bytes(b"this is not a pdf")
    (tmp_path / "empty.md").write_bytes(b"")
    code, out = run("ingest", str(tmp_path), "--domain", "healthcare", "--inline")
    assert code == 1
    assert "ok: 2 ready" in out and "failed: 2" in out
    assert "scan.pdf" in out and "not a valid PDF" in out
    assert "empty.md" in out and "empty" in out
    assert Document.objects.filter(source="guide.md", status=Status.READY).exists()
    code, out = run("ingest", str(tmp_path), "--domain", "healthcare", "--inline")
    assert "2 unchanged" in out


def test_ingest_rejects_an_unknown_domain_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Staff domains: .*healthcare"):
        call_command("ingest", str(tmp_path), "--domain", "nope", "--inline")
    with pytest.raises(CommandError, match="No such file"):
        call_command("ingest", str(tmp_path / "missing"), "--domain", "healthcare", "--inline")


def test_import_beir_ingests_a_small_corpus(tmp_path: Path) -> None:
    rows = [
        {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers the risk of a second stroke."},
        {"_id": "d2", "title": "Statins", "text": "Statins reduce LDL cholesterol."},
        {"_id": "d3", "title": "", "text": "Metformin is first-line in type 2 diabetes."},
    ]
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    code, out = run("import_beir", str(tmp_path), "--domain", "healthcare", "--inline")
    assert code == 0, out
    assert "Imported 3 rows" in out and "chunks/s" in out
    documents = Document.objects.filter(source__startswith=f"beir:{tmp_path.name}:")
    assert documents.filter(status=Status.READY).count() == 3
    assert documents.get(source__endswith=":d1").title == "Aspirin"


def test_import_beir_without_a_corpus_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="corpus.jsonl"):
        call_command("import_beir", str(tmp_path), "--domain", "healthcare", "--inline")


def test_missing_model_is_a_clear_error_and_keeps_the_documents(tmp_path: Path, settings) -> None:
    from search.apps import check_embedding_model

    settings.KMS_EMBEDDING_MODEL = str(tmp_path / "no-model")
    assert [error.id for error in check_embedding_model()] == ["kms.E001"]
    (tmp_path / "policy.md").write_text("# Leave\n\nBook leave six weeks ahead.\n")
    with pytest.raises(CommandError, match="No embedding model at .*KMS_EMBEDDING_MODEL"):
        call_command("ingest", str(tmp_path / "policy.md"), "--domain", "healthcare",
                     "--inline", stdout=StringIO(), stderr=StringIO())
    assert Document.objects.filter(source="policy.md").exists()


def test_search_and_ask_need_a_user_or_an_explicit_all(django_user_model) -> None:
    for command in ("search", "ask"):
        with pytest.raises(CommandError, match="one of the arguments --user --all is required"):
            call_command(command, "hand hygiene", "--domain", "healthcare")
        with pytest.raises(CommandError, match="No user 'ghost'"):
            call_command(command, "hand hygiene", "--domain", "healthcare", "--user", "ghost")
    django_user_model.objects.create_user("visitor")  # a member of no domain
    with pytest.raises(CommandError, match="Unknown domain 'healthcare'.*search: none"):
        call_command("search", "hand hygiene", "--domain", "healthcare", "--user", "visitor")
    out = StringIO()
    call_command("search", "hand hygiene", "--domain", "healthcare", "--all", stdout=out)
    assert "documents, hybrid" in out.getvalue()
