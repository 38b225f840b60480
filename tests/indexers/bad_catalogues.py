"""Broken template catalogues, as a bad export produces them, each with the counts it must give.

Each writer puts one file under ``folder`` and returns it with (valid records, rejected
records) as ``read_templates`` counts them, checkable by eye from the comments::

    malformed.jsonl     100 lines: 5 good, 95 cut short (not JSON) or missing their title
    duplicates.jsonl    100 lines, ids cycling over 5 values: 5 kept, 95 duplicate ids
    wrong_header.csv    header of 5 columns, 100 rows of 6 fields (an unnamed column) and one
                        row of 5: 1 kept, 100 rejected
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from indexers.catalog_templates import TemplateRecord

__all__ = ["BAD_CATALOGUES", "write_bad", "write_jsonl"]


def write_jsonl(path: Path, records: Sequence[TemplateRecord]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def _malformed(folder: Path, good: Sequence[TemplateRecord]) -> Path:
    lines = [r.model_dump_json() for r in good[:5]]
    for r in good[5:100]:
        if len(lines) % 2:
            lines.append(r.model_dump_json()[:25])  # cut mid-record
        else:
            lines.append(json.dumps({"id": r.id, "description": r.description}))  # no title
    path = folder / "malformed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _duplicates(folder: Path, good: Sequence[TemplateRecord]) -> Path:
    lines = [good[i].model_copy(update={"id": f"dup{i % 5}"}).model_dump_json()
             for i in range(100)]
    path = folder / "duplicates.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wrong_header(folder: Path, good: Sequence[TemplateRecord]) -> Path:
    path = folder / "wrong_header.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "description", "tags", "category"])
        for i, r in enumerate(good[:101]):
            row = [r.id, r.title, r.description, ";".join(r.tags), r.category]
            w.writerow(row if i == 0 else [*row, "9.99"])  # the export added a price column
    return path


# name -> (writer, valid records, rejected records)
BAD_CATALOGUES = {
    "malformed": (_malformed, 5, 95),
    "duplicates": (_duplicates, 5, 95),
    "wrong_header": (_wrong_header, 1, 100),
}


def write_bad(name: str, folder: Path, good: Sequence[TemplateRecord]) -> tuple[Path, int, int]:
    """Write the catalogue ``name`` from ``good`` (at least 101 records) into ``folder``."""
    writer, n_valid, n_rejected = BAD_CATALOGUES[name]
    return writer(folder, good), n_valid, n_rejected
