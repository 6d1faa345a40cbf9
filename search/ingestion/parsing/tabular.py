"""CSV → one ``name: value; …`` block per data row, so every row reads on its own in a chunk.

Named ``tabular`` rather than ``csv`` so it never shadows the standard library module.
"""

from __future__ import annotations

import csv
import io

from search.ingestion.parsing.text import decode_text
from search.ingestion.parsing.types import DocumentBuilder, ParsedDocument, ParseError

_DELIMITERS = ",;\t|"


def parse_csv(data: bytes) -> ParsedDocument:
    """The first row names the columns; empty values are left out of a row's text."""
    text = decode_text(data)
    try:
        rows = [row for row in csv.reader(io.StringIO(text), _dialect(text)) if any(_cells(row))]
    except csv.Error as err:
        raise ParseError(f"The CSV file cannot be read ({err}).") from err
    if not rows:
        raise ParseError("The CSV file is empty.")
    if len(rows) == 1:
        raise ParseError("The CSV file has a header row but no data rows.")
    header = _cells(rows[0])
    builder = DocumentBuilder()
    for row in rows[1:]:
        values = _cells(row)
        names = header + [f"column {i + 1}" for i in range(len(header), len(values))]
        pairs = [
            f"{name or f'column {i + 1}'}: {value}"
            for i, (name, value) in enumerate(zip(names, values, strict=False))
            if value
        ]
        builder.add("; ".join(pairs), "table_row")
    return builder.build()


def _dialect(text: str) -> type[csv.Dialect]:
    """Sniff the delimiter from the first lines; fall back to plain commas."""
    sample = text[:65536]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except csv.Error:
        return csv.excel


def _cells(row: list[str]) -> list[str]:
    return [" ".join(cell.split()) for cell in row]
