"""The demo corpus (``kms/demo``) that the run command loads on first start."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group

from kms.access import Access
from kms.store.models import Domain
from search.ingestion.documents import IngestResult, ingest_file, iter_files


def demo_dir() -> Path:
    return Path(settings.BASE_DIR) / "kms" / "demo"


def load_demo(root: Path | None = None) -> list[IngestResult]:
    """Queue every demo file into the domain named by its folder; unchanged files are skipped.

    Each domain gets a "<Name> staff" member group (its members see the domain), and
    ``manifest.json`` restricts some files to access groups, which become members of the
    file's domain too, to show access control at work.
    """
    root = root or demo_dir()
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    loader = Access.everything("demo corpus")
    results = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        domain, _ = Domain.objects.get_or_create(
            slug=folder.name, defaults={"name": folder.name.capitalize()}
        )
        domain.member_groups.add(Group.objects.get_or_create(name=f"{domain.name} staff")[0])
        for path in iter_files([folder]):
            source = str(path.relative_to(root))
            names = manifest.get(source, {}).get("access_groups", [])
            groups = [Group.objects.get_or_create(name=name)[0] for name in names]
            domain.member_groups.add(*groups)
            results.append(
                ingest_file(domain, path, uploader=loader, root=root, access_groups=groups)
            )
    return results
