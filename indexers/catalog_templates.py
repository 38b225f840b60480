"""Template catalogue input: JSONL or CSV records, validated, with line-numbered rejects.

A catalogue is one file of design templates. Each record has::

    id           required, unique within the file
    title        required
    description  optional free text
    tags         JSONL: a list of strings; CSV: one string separated by ``;`` or ``|``
    category     optional, one label
    thumbnail    optional image path, relative to the catalogue's folder; must exist if given
                 (stored resolved to an absolute path)

Other keys or columns are ignored.

Records that cannot be used (bad JSON or CSV row, missing id/title, duplicate id, missing
thumbnail) are skipped and returned as rejects with file, line and reason, never dropped
silently; ``write_rejects`` stores them as JSONL ``{"file", "line", "id", "reason"}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DataError
from .jsonl import first_error, json_objects, numbered_lines

__all__ = [
    "CATALOG_SUFFIXES",
    "TemplateCatalog",
    "TemplateRecord",
    "TemplateReject",
    "read_templates",
    "records_checksum",
    "split_tags",
    "write_rejects",
]

log = logging.getLogger(__name__)

CATALOG_SUFFIXES = (".jsonl", ".csv")
_TAG_SEP = re.compile(r"[;|]")


def split_tags(value: str) -> list[str]:
    """Split a CSV tag cell such as ``"sale; summer|promo"`` into clean tags."""
    return [t.strip() for t in _TAG_SEP.split(value) if t.strip()]


class TemplateRecord(BaseModel):
    """One design template as it is indexed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, description="stable template id, unique in the catalogue")
    title: str = Field(min_length=1, description="short human title, the strongest field")
    description: str = Field(default="", description="free text describing the template")
    tags: tuple[str, ...] = Field(default=(), description="labels; filters require all of them")
    category: str = Field(default="", description="one category label, e.g. 'poster'")
    thumbnail: str | None = Field(default=None, description="absolute path of the preview image")

    @field_validator("id", "title", mode="before")
    @classmethod
    def _required_text(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # CSV-ish numeric ids in JSONL are common; keep them as text
        if isinstance(v, str):
            v = " ".join(v.split())
            if not v:
                raise ValueError("must not be blank")
        return v

    @field_validator("description", "category", mode="before")
    @classmethod
    def _optional_text(cls, v: Any) -> Any:
        if v is None:
            return ""
        return " ".join(v.split()) if isinstance(v, str) else v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            return tuple(split_tags(v))
        if isinstance(v, (list, tuple)):
            if not all(isinstance(t, str) for t in v):
                raise ValueError("tags must be strings")
            return tuple(t.strip() for t in v if t.strip())
        return v

    @field_validator("thumbnail", mode="before")
    @classmethod
    def _thumbnail(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            return None
        return v


@dataclass(frozen=True)
class TemplateReject:
    """A catalogue line or row that was skipped, with where and why."""

    file: str
    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class TemplateCatalog:
    """Valid records in file order plus the rejects."""

    records: list[TemplateRecord] = field(default_factory=list)
    rejects: list[TemplateReject] = field(default_factory=list)


def records_checksum(records: Iterable[TemplateRecord]) -> str:
    """sha256 over the records sorted by id (canonical JSON), independent of file order."""
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r.id):
        h.update(
            json.dumps(rec.model_dump(mode="json"), sort_keys=True, ensure_ascii=False).encode()
        )
        h.update(b"\n")
    return h.hexdigest()


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line where the record starts, raw dict, row error or None) from a CSV file.

    The first row is the header. A malformed row still yields what could be parsed, so its
    reject can name the id. Quoting is strict: an unclosed quote is reported, not merged with
    the following lines into one field.
    """
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("id", "title") if c not in header]
        if missing:
            raise DataError(
                f"CSV catalogue {path} has no column(s) {', '.join(missing)} in its header "
                f"{header}; the first row must name the columns (id,title,description,tags,...)"
            )
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, None, f"bad CSV row: {e}"
                continue
            if not any(cell.strip() for cell in row):
                continue  # an empty row, like a blank JSONL line
            raw = dict(zip(header, row, strict=False))
            if len(row) != len(header):
                yield start, raw, f"row has {len(row)} fields, header has {len(header)}"
                continue
            yield start, raw, None


def read_templates(
    path: str | os.PathLike[str], rejects_path: str | os.PathLike[str] | None = None
) -> TemplateCatalog:
    """Read and validate a template catalogue (``.jsonl`` or ``.csv``).

    Args:
        path: the catalogue file.
        rejects_path: when given, the rejects are also written there as JSONL (the file is
            replaced, and written even when empty so a run always leaves its report).

    Returns:
        The valid records (file order, first occurrence of each id) and the rejects.

    Raises:
        DataError: the file is missing, unreadable, has an unknown extension, or a CSV header
            lacks the ``id``/``title`` columns.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CATALOG_SUFFIXES:
        raise DataError(
            f"catalogue {path} has extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(CATALOG_SUFFIXES)}"
        )
    if path.is_dir():
        raise DataError(
            f"catalogue {path} is a directory; pass a {'/'.join(CATALOG_SUFFIXES)} file"
        )
    base = path.parent
    rows = (json_objects(numbered_lines(path, "catalogue")) if suffix == ".jsonl"
            else _csv_rows(path))
    out = TemplateCatalog()
    first_seen: dict[str, int] = {}
    try:
        for n, raw, err in rows:
            rid = None
            if raw is not None and raw.get("id") not in (None, ""):
                rid = str(raw.get("id")).strip() or None
            if err is not None:
                out.rejects.append(TemplateReject(str(path), n, rid, err))
                continue
            assert raw is not None
            try:
                rec = TemplateRecord.model_validate(raw)
            except ValidationError as e:
                out.rejects.append(TemplateReject(str(path), n, rid,
                                                  first_error(e, missing="missing")))
                continue
            if rec.id in first_seen:
                reason = f"duplicate id {rec.id!r} (first seen at line {first_seen[rec.id]})"
                out.rejects.append(TemplateReject(str(path), n, rec.id, reason))
                continue
            if rec.thumbnail is not None:
                thumb = Path(rec.thumbnail)
                thumb = thumb if thumb.is_absolute() else base / thumb
                if not thumb.is_file():
                    reason = f"thumbnail {rec.thumbnail!r} does not exist (looked at {thumb})"
                    out.rejects.append(TemplateReject(str(path), n, rec.id, reason))
                    continue
                rec = rec.model_copy(update={"thumbnail": str(thumb.resolve())})
            first_seen[rec.id] = n
            out.records.append(rec)
    except FileNotFoundError as e:
        raise DataError(f"catalogue {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"catalogue {path} cannot be read: {e}") from e
    for r in out.rejects:  # the caller reports the count and the rejects file (one line)
        log.debug("skipped template %s", r)
    if rejects_path is not None:
        write_rejects(rejects_path, out.rejects)
    return out


def write_rejects(path: str | os.PathLike[str], rejects: Iterable[TemplateReject]) -> int:
    """Write rejects as JSONL ``{"file", "line", "id", "reason"}``; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
            n += 1
    return n
