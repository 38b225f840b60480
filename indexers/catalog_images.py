"""Image catalogues: a folder of image files or a JSONL manifest, validated into ``ImageRecord``.

Folder: every file below it (recursively) with a suffix in ``IMAGE_SUFFIXES``; the id is the
path relative to the folder without its suffix (``cats/tabby.jpg`` -> ``cats/tabby``).

Manifest: one JSON object per line::

    {"id": "a1", "path": "imgs/a1.png", "title": "...", "tags": ["cat"], "license": "cc0",
     "photographer": "..."}          # unknown keys are kept under ``meta``
    {"id": "a2", "url": "file:///data/a2.jpg"}   # url: local path or file:// URL only

Relative paths are resolved against the manifest's folder. A record that cannot be used (bad
JSON, missing id, duplicate id, missing file, unsupported URL, and later an image that does
not decode) is appended to a rejects file as
``{"file": ..., "line": ..., "id": ..., "reason": ...}`` and skipped, never dropped silently.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import DataError
from .jsonl import first_error, json_objects, numbered_lines

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageRecord",
    "ManifestEntry",
    "RejectLog",
    "load_catalog",
    "open_image",
    "read_manifest",
    "scan_folder",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ImageRecord(BaseModel):
    """One usable catalogue entry.

    ``source``/``line`` say where the record came from (the manifest and its 1-based line, or
    the image file itself with line None) so that a later decode failure can be reported there.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    path: Path  # absolute
    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    license: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    source: str  # manifest or image file the record came from
    line: int | None = None  # 1-based manifest line; None for folder catalogues

    def metadata(self) -> dict[str, Any]:
        """The JSON-serialisable metadata stored with the vector and returned with each hit."""
        out: dict[str, Any] = {"path": str(self.path)}
        if self.title is not None:
            out["title"] = self.title
        out["tags"] = list(self.tags)
        if self.license is not None:
            out["license"] = self.license
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


class ManifestEntry(BaseModel):
    """Schema of one manifest line; extra keys are collected into ``meta``."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    path: str | None = None
    url: str | None = None
    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    license: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _strip_id(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("id is blank")
        return v

    @model_validator(mode="after")
    def _needs_location(self) -> ManifestEntry:
        if not self.path and not self.url:
            raise ValueError("needs 'path' or 'url'")
        return self

    def local_path(self, base: Path) -> Path:
        """Resolve ``path``/``url`` to an absolute local path.

        Raises:
            ValueError: for a URL that is not a local path or ``file://`` URL.
        """
        if self.path:
            raw = self.path
        else:
            parts = urllib.parse.urlsplit(self.url or "")
            if parts.scheme == "file":
                if parts.netloc not in ("", "localhost"):
                    raise ValueError(f"file URL {self.url!r} names a remote host {parts.netloc!r}")
                raw = urllib.request.url2pathname(parts.path)
            elif parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
                raw = self.url or ""
            else:
                raise ValueError(
                    f"url scheme {parts.scheme!r} is not supported ({self.url!r}): only local "
                    f"paths and file:// URLs; download the image and give its path"
                )
        p = Path(raw).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    def extra_meta(self) -> dict[str, Any]:
        return {**self.meta, **(self.model_extra or {})}


class RejectLog:
    """Append-only JSONL log of skipped records (``file``, ``line``, ``id``, ``reason``).

    Args:
        path: rejects file; created (with parents) on first write.
        truncate: start from an empty file instead of appending.
    """

    def __init__(self, path: str | os.PathLike[str], truncate: bool = False):
        self.path = Path(path)
        self.count = 0
        if truncate and self.path.exists():
            self.path.unlink()

    def add(
        self, file: str | os.PathLike[str], line: int | None, id: str | None, reason: str
    ) -> dict:
        """Record one rejected record and return the row written."""
        row = {"file": str(file), "line": line, "id": id, "reason": reason}
        self.extend([row])
        return row

    def extend(self, rows: list[dict]) -> None:
        """Append rows already in the reject format (e.g. replayed from a resumed build)."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += len(rows)

    def rows(self) -> list[dict]:
        """Everything in the rejects file so far."""
        if not self.path.exists():
            return []
        return [
            json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()
        ]


def read_manifest(path: str | os.PathLike[str], rejects: RejectLog) -> list[ImageRecord]:
    """Validate a JSONL manifest into records, logging every bad line to ``rejects``.

    Args:
        path: the manifest file.
        rejects: where unusable lines go.

    Returns:
        Usable records in file order (the first occurrence of a duplicated id wins).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist or is not a file")
    base = path.parent.resolve()
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    lines = numbered_lines(path, "manifest", encoding_errors="replace")
    for lineno, obj, reason in json_objects(lines, bad_json="bad JSON"):
        if obj is None:
            rejects.add(path, lineno, None, reason)
            continue
        rid = obj["id"] if isinstance(obj.get("id"), str) else None
        try:
            entry = ManifestEntry.model_validate(obj)
            image_path = entry.local_path(base)
        except ValidationError as e:
            rejects.add(path, lineno, rid, f"invalid record: {first_error(e)}")
            continue
        except ValueError as e:
            rejects.add(path, lineno, rid, str(e))
            continue
        if entry.id in first_line:
            rejects.add(
                path,
                lineno,
                entry.id,
                f"duplicate id {entry.id!r} (first on line {first_line[entry.id]})",
            )
            continue
        if not image_path.is_file():
            rejects.add(path, lineno, entry.id, f"image file not found: {image_path}")
            continue
        first_line[entry.id] = lineno
        records.append(
            ImageRecord(
                id=entry.id,
                path=image_path,
                title=entry.title,
                tags=entry.tags,
                license=entry.license,
                meta=entry.extra_meta(),
                source=str(path),
                line=lineno,
            )
        )
    return records


def scan_folder(root: str | os.PathLike[str], rejects: RejectLog) -> list[ImageRecord]:
    """List the images below ``root`` (sorted, recursive) as records.

    Two files that differ only in suffix (``a.jpg``, ``a.png``) share the id ``a``: the first in
    sorted order is kept and the other rejected as a duplicate.

    Returns:
        Records with ``id`` = relative path without suffix, using ``/`` separators.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    root = root.resolve()
    records: list[ImageRecord] = []
    seen: dict[str, Path] = {}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for p in files:
        rid = p.relative_to(root).with_suffix("").as_posix()
        if rid in seen:
            rejects.add(p, None, rid, f"duplicate id {rid!r} (already used by {seen[rid].name})")
            continue
        seen[rid] = p
        records.append(ImageRecord(id=rid, path=p, source=str(p)))
    return records


def load_catalog(source: str | os.PathLike[str], rejects: RejectLog) -> list[ImageRecord]:
    """Read a folder or a JSONL manifest, whichever ``source`` is.

    Raises:
        DataError: ``source`` does not exist.
    """
    source = Path(source)
    if source.is_dir():
        return scan_folder(source, rejects)
    if source.is_file():
        return read_manifest(source, rejects)
    raise DataError(
        f"image catalogue {source} does not exist; give an image folder or a JSONL manifest"
    )


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image as RGB (the first frame of an animation).

    Raises:
        DataError: the file is unreadable, truncated, corrupt or too large to decode safely.
    """
    try:
        with Image.open(path) as im:
            im.load()  # PIL decodes lazily: force it so corrupt files fail here
            return im.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
