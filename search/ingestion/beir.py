"""Reading BEIR-format datasets (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv)."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class BeirDocument:
    id: str
    title: str
    text: str


def beir_prefix(dataset_dir: Path) -> str:
    """The source prefix ``import_beir`` gives the documents of this dataset."""
    return f"beir:{Path(dataset_dir).resolve().name}:"


def corpus_path(dataset_dir: Path) -> Path:
    for name in ("corpus.jsonl.gz", "corpus.jsonl"):
        if (dataset_dir / name).exists():
            return dataset_dir / name
    raise DatasetError(f"{dataset_dir} has no corpus.jsonl or corpus.jsonl.gz (BEIR layout).")


def read_corpus(dataset_dir: Path) -> Iterator[BeirDocument]:
    """Documents in file order; a malformed line raises DatasetError naming the line."""
    path = corpus_path(dataset_dir)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield BeirDocument(str(row["_id"]), row.get("title") or "", row.get("text") or "")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{number}: not a BEIR corpus row ({exc})") from exc


def read_queries(dataset_dir: Path) -> dict[str, str]:
    with (dataset_dir / "queries.jsonl").open(encoding="utf-8") as fh:
        return {str(row["_id"]): row["text"] for row in map(json.loads, fh) if row}


def read_qrels(dataset_dir: Path, split: str = "test") -> dict[str, dict[str, int]]:
    """query id -> {corpus id: relevance}; BEIR qrels have a header and may end lines in CRLF."""
    path = dataset_dir / "qrels" / f"{split}.tsv"
    if not path.exists():
        raise DatasetError(f"No qrels for split {split!r} at {path}.")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader, None)
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(row[2])
    return qrels


def read_split(dataset_dir: Path, split: str) -> tuple[dict[str, str], dict]:
    """The queries and the qrels of ``split``; DatasetError saying what is missing (and
    which splits there are) otherwise."""
    if not dataset_dir.is_dir():
        raise DatasetError(f"No such dataset directory: {dataset_dir}")
    for path in (dataset_dir / "queries.jsonl", dataset_dir / "qrels" / f"{split}.tsv"):
        if not path.is_file():
            splits = sorted(p.stem for p in (dataset_dir / "qrels").glob("*.tsv"))
            hint = f" Available splits: {', '.join(splits)}." if splits else ""
            raise DatasetError(
                f"Missing {path} (BEIR layout: corpus.jsonl[.gz], queries.jsonl, "
                f"qrels/<split>.tsv).{hint}"
            )
    try:
        queries, qrels = read_queries(dataset_dir), read_qrels(dataset_dir, split)
    except (ValueError, KeyError) as exc:  # DatasetError is a ValueError
        raise DatasetError(f"Cannot read {dataset_dir}: {exc}") from exc
    if not qrels:
        raise DatasetError(f"{dataset_dir / 'qrels' / f'{split}.tsv'} has no judgements.")
    return queries, qrels
