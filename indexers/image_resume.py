"""Resumable image builds: the commit log of encoded batches, and what of it may be reused.

An image build's version directory holds, until it is published::

    build.json         the plan: encoder, dim, shard, catalogue checksum, source, config
    chunks.jsonl       commit log, one line per finished batch:
                       {"chunk", "ids", "fps", "rejects", "reject_fps"}
    chunk-000000.npy   (B, D) float32 vectors of that batch (written, fsynced, renamed, then
                       committed by the log line; a chunk without its line is ignored)

Resume key: an unfinished build is continued only when its encoder, dim, shard and catalogue
checksum (sha256 of the manifest's bytes, or of a folder's sorted list of image files) equal
the new run's; otherwise a new build starts. Inside a resumed build a committed vector, or a
decode reject, is reused only while its file's fingerprint (resolved path, size, modification
time in ns) is unchanged: a file changed since it was encoded is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .catalog_images import IMAGE_SUFFIXES
from .store import IndexStore

__all__ = ["BUILD_FILE", "CHUNK_LOG", "catalog_checksum", "commit_chunk", "committed",
           "fingerprint", "gather", "pick_version", "read_chunk_log"]

log = logging.getLogger(__name__)

BUILD_FILE, CHUNK_LOG = "build.json", "chunks.jsonl"
RESUME_KEY = ("encoder", "dim", "shard", "catalog")  # plan fields that must match to resume


def catalog_checksum(source: str | os.PathLike[str]) -> str:
    """sha256 of a manifest file's bytes, or of a folder's sorted relative image paths."""
    source, h = Path(source), hashlib.sha256()
    if source.is_dir():
        files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        h.update("\n".join(files).encode("utf-8"))
    else:
        with source.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Short hash of a file's resolved path, size and mtime (ns); "" when it cannot be read.

    Size plus mtime is what make and rsync trust: reading every image again to hash its
    content would cost as much as decoding it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ""
    key = f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def fsync_write(path: Path, data: bytes, mode: str = "wb") -> None:
    with path.open(mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_chunk_log(version: Path) -> list[dict]:
    """Committed batches of a version, dropping a torn last line or a batch whose file is bad."""
    path = version / CHUNK_LOG
    if not path.exists():
        return []
    entries, dirty = [], False
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(raw)
            rows = np.load(version / e["chunk"], mmap_mode="r").shape[0]
            if rows != len(e["ids"]):
                raise ValueError(f"{e['chunk']} holds {rows} rows for {len(e['ids'])} ids")
            entries.append(e)
        except (ValueError, KeyError, OSError, TypeError) as err:
            log.warning("ignoring damaged commit in %s: %s", path, err)
            dirty = True
    if dirty:  # rewrite without the bad lines so later appends stay parseable
        tmp = version / f".{CHUNK_LOG}.tmp"
        fsync_write(tmp, "".join(json.dumps(e) + "\n" for e in entries).encode())
        os.replace(tmp, path)
    return entries


def commit_chunk(version: Path, index: int, vecs: np.ndarray, ids: list[str],
                 rejects: list[dict], fps: Mapping[str, str]) -> None:
    """Durably store one batch: vectors first, then the log line that makes them count.

    Args:
        vecs: (B, D) vectors of ``ids``; rejects: decode failures of the batch.
        fps: id -> ``fingerprint`` of its file when the batch was read.
    """
    name = f"chunk-{index:06d}.npy"
    tmp = version / f".{name}.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, vecs)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, version / name)
    line = {"chunk": name, "ids": ids, "fps": [fps[i] for i in ids], "rejects": rejects,
            "reject_fps": [fps[r["id"]] for r in rejects]}
    fsync_write(version / CHUNK_LOG, (json.dumps(line, ensure_ascii=False) + "\n").encode(),
                mode="ab")


def committed(entries: Sequence[dict], fps: Mapping[str, str]
              ) -> tuple[dict[str, tuple[str, int]], list[dict], int]:
    """What of the commit log still holds for the catalogue's files as they are now.

    Args:
        entries: ``read_chunk_log`` output, oldest first (a later commit of an id wins).
        fps: id -> current ``fingerprint`` of every record of the catalogue.

    Returns:
        id -> (chunk file, row) of each reusable vector; the reusable decode-reject rows; and
        how many committed ids of the catalogue are stale (their file changed).
    """
    at: dict[str, tuple[str, int]] = {}
    bad: dict[str, dict] = {}
    seen: set[str] = set()
    for e in entries:  # logs written before fingerprints existed have no "fps": nothing reused
        ids_fps = e.get("fps") or [""] * len(e["ids"])
        for j, (i, fp) in enumerate(zip(e["ids"], ids_fps, strict=True)):
            seen.add(i)
            if fp and fps.get(i) == fp:
                at[i] = (e["chunk"], j)
                bad.pop(i, None)
        rej_fps = e.get("reject_fps") or [""] * len(e["rejects"])
        for row, fp in zip(e["rejects"], rej_fps, strict=True):
            seen.add(row["id"])
            if fp and fps.get(row["id"]) == fp:
                bad[row["id"]] = row
                at.pop(row["id"], None)
    stale = sum(1 for i in seen if i in fps and i not in at and i not in bad)
    return at, list(bad.values()), stale


def gather(version: Path, ids: Sequence[str], at: Mapping[str, tuple[str, int]],
           dim: int) -> np.ndarray:
    """The (len(ids), dim) float32 vectors of ``ids`` from their chunks, in ``ids`` order."""
    out = np.empty((len(ids), dim), np.float32)
    rows: dict[str, list[tuple[int, int]]] = {}
    for k, i in enumerate(ids):
        chunk, j = at[i]
        rows.setdefault(chunk, []).append((k, j))
    for chunk, pairs in rows.items():
        arr = np.load(version / chunk, mmap_mode="r")  # (B, D)
        out[[k for k, _ in pairs]] = arr[[j for _, j in pairs]]
    return out


def pick_version(store: IndexStore, plan: dict) -> tuple[Path, bool]:
    """The newest unfinished build with the same ``RESUME_KEY`` (resume), else a new version.

    Only builds newer than the newest complete version are candidates: older ones are left
    for ``IndexStore.clean_unfinished``.
    """
    done = store.complete_versions()
    newer = [p for p in store.incomplete_versions() if not done or p.name > done[-1].name]
    if newer:
        newest = newer[-1]
        try:
            old = json.loads((newest / BUILD_FILE).read_text())
            same = all(old.get(k) == plan[k] for k in RESUME_KEY)
        except (OSError, ValueError):
            same = False
        if same:
            return newest, True
        log.info("not resuming %s: it builds another catalogue, encoder or shard", newest.name)
    version = store.new_version()
    fsync_write(version / BUILD_FILE, json.dumps(plan, indent=2).encode())
    return version, False
