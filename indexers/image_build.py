"""Build, resume, shard and merge image indexes inside a versioned ``IndexStore``.

``build_image_index`` writes a new store version::

    build.json         what is being built (encoder, dim, source, shard, config)
    chunks.jsonl       commit log: one line per finished batch {"chunk", "ids", "rejects"}
    chunk-000000.npy   (B, D) float32 vectors of that batch (written, fsynced, renamed, then
                       committed by the log line; a chunk without its line is ignored)
    rejects.jsonl      records that were skipped, with file/line/id/reason

A build that is stopped at any point is continued by running it again: the newest incomplete
version with the same encoder, source and shard is reused and only records absent from its
commit log are encoded. The FAISS index is built from the chunks at the end, the version is
marked complete and published atomically; until then the previously published version keeps
answering. Chunks are deleted after publishing (``vectors.npy`` keeps the vectors).

Sharding (``cfg.shard = "i/n"``) encodes only records with ``crc32(id) % n == i`` into its own
store; ``merge_image_shards`` joins the shard stores into one published version.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .catalog_images import ImageRecord, RejectLog, load_catalog, open_image
from .encoders import ClipEncoder, ImageEncoder
from .errors import ConfigError, DataError, EncoderMismatchError, IndexStoreError, ModelError
from .images import ImageIndex, ImageIndexConfig
from .store import IndexStore

__all__ = ["BuildReport", "build_image_index", "encoder_from_config", "merge_image_shards",
           "shard_of"]

log = logging.getLogger(__name__)

BUILD_FILE, CHUNK_LOG = "build.json", "chunks.jsonl"
REJECTS_FILE, LOCK_FILE = "rejects.jsonl", ".lock"


@dataclass
class BuildReport:
    """What a build or merge did."""

    version: Path  # store version directory that was written (and published)
    count: int  # vectors in the published index
    encoded: int  # images encoded by this run
    resumed: int  # images reused from an interrupted earlier run of the same build
    rejected: int  # rows in the rejects file (catalogue and decode failures)
    skipped_other_shards: int  # records left to other shards
    encode_seconds: float  # wall time of the encoding loop (decode + preprocess + model + writes)
    images_per_s: float  # encoded / encode_seconds; 0.0 when nothing was encoded
    rejects_path: Path  # the rejects file
    index_type: str  # flat, hnsw or ivf as built
    encoder: str  # encoder name recorded in index_meta.json


def shard_of(record_id: str, n: int) -> int:
    """Stable shard of an id: ``crc32(utf-8 id) % n`` (same in every process and Python)."""
    return zlib.crc32(record_id.encode("utf-8")) % n


def encoder_from_config(cfg: ImageIndexConfig, device: str = "cpu") -> ClipEncoder:
    """The ``ClipEncoder`` that ``cfg.model_name``/``cfg.pretrained`` describe."""
    return ClipEncoder(cfg.model_name, cfg.pretrained, device=device)


def _fsync_write(path: Path, data: bytes, mode: str = "wb") -> None:
    with path.open(mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_chunk_log(version: Path) -> list[dict]:
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
        _fsync_write(tmp, "".join(json.dumps(e) + "\n" for e in entries).encode())
        os.replace(tmp, path)
    return entries


def _commit_chunk(
    version: Path, index: int, vecs: np.ndarray, ids: list[str], rejects: list[dict]
) -> None:
    """Durably store one batch: vectors first, then the log line that makes them count."""
    name = f"chunk-{index:06d}.npy"
    tmp = version / f".{name}.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, vecs)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, version / name)
    line = json.dumps({"chunk": name, "ids": ids, "rejects": rejects}, ensure_ascii=False) + "\n"
    _fsync_write(version / CHUNK_LOG, line.encode("utf-8"), mode="ab")


def _lock(version: Path):
    fh = (version / LOCK_FILE).open("w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise IndexStoreError(f"another build is writing {version}; wait or stop it") from None
    return fh


def _pick_version(store: IndexStore, plan: dict) -> tuple[Path, bool]:
    """Newest incomplete version building the same thing (resume), else a new one."""
    incomplete = store.incomplete_versions()
    if incomplete:
        newest = incomplete[-1]
        try:
            old = json.loads((newest / BUILD_FILE).read_text())
            same = all(old.get(k) == plan[k] for k in ("encoder", "dim", "source", "shard"))
        except (OSError, ValueError):
            same = False
        if same:
            return newest, True
        log.warning("not resuming %s: it builds something else (or has no %s)", newest, BUILD_FILE)
    version = store.new_version()
    _fsync_write(version / BUILD_FILE, json.dumps(plan, indent=2).encode())
    return version, False


def _prepare(
    records: Sequence[ImageRecord], encoder: ImageEncoder
) -> tuple[list[str], torch.Tensor | None, list[dict]]:
    """Decode and preprocess one batch (runs in the loader thread).

    Returns:
        ids that decoded, their pixels (B, 3, H, W) or None, and reject rows for the rest.
    """
    ids, pixels, bad = [], [], []
    for r in records:
        try:
            pixels.append(encoder.preprocess(open_image(r.path)))
            ids.append(r.id)
        except (DataError, OSError, ValueError, RuntimeError, TypeError) as e:
            # DataError: the file does not decode; others: preprocess failed on a decoded image
            why = str(e) if isinstance(e, DataError) else f"cannot preprocess {r.path}: {e!r}"
            bad.append({"file": r.source, "line": r.line, "id": r.id, "reason": why})
    return ids, (torch.stack(pixels) if pixels else None), bad


def _encode_all(todo, encoder, version, rejects, cfg, first_chunk, pbar) -> int:
    """Encode ``todo`` in batches, committing each; decode of batch b+1 overlaps encode of b."""
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    encoded = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-loader") as pool:
        nxt: Future | None = pool.submit(_prepare, batches[0], encoder) if batches else None
        try:
            for b in range(len(batches)):
                ids, pixels, bad = nxt.result()
                more = b + 1 < len(batches)
                nxt = pool.submit(_prepare, batches[b + 1], encoder) if more else None
                vecs = np.zeros((0, encoder.dim), np.float32)
                if pixels is not None:
                    vecs = np.ascontiguousarray(encoder.encode_pixels(pixels), np.float32)  # (B, D)
                if vecs.shape != (len(ids), encoder.dim):
                    msg = f"encoder {encoder.name} gave {vecs.shape} for {len(ids)} images"
                    raise ModelError(msg)
                _commit_chunk(version, first_chunk + b, vecs, ids, bad)
                rejects.extend(bad)
                encoded += len(ids)
                pbar.update(len(batches[b]))
        finally:
            if nxt is not None:
                nxt.cancel()
    return encoded


def _collect(version: Path, by_id: dict[str, ImageRecord]) -> tuple[list[str], list[np.ndarray]]:
    """Committed ids and vector chunks, without ids that left the catalogue since they were done."""
    ids, chunks = [], []
    for e in _read_chunk_log(version):
        keep = [j for j, i in enumerate(e["ids"]) if i in by_id]
        chunks.append(np.load(version / e["chunk"])[keep])  # (B', D)
        ids.extend(e["ids"][j] for j in keep)
    return ids, chunks


def _publish(store: IndexStore, version: Path, index: ImageIndex, extra_meta: dict) -> None:
    index.meta.update(extra_meta)
    index.save(version)
    store.mark_complete(version)
    store.publish(version)


def build_image_index(
    source: str | os.PathLike[str],
    store_root: str | os.PathLike[str],
    encoder: ImageEncoder | None = None,
    cfg: ImageIndexConfig | None = None,
    progress: bool = True,
) -> BuildReport:
    """Encode a catalogue and publish its index as a new version of the store at ``store_root``.

    Args:
        source: image folder or JSONL manifest (see ``catalog_images``).
        store_root: ``IndexStore`` directory (for a shard build: that shard's own directory).
        encoder: image encoder; None builds ``ClipEncoder`` from ``cfg.model_name/pretrained``.
        cfg: batch size, index type and parameters, optional shard ``"i/n"``; None = defaults.
        progress: show a tqdm bar and print the throughput.

    Returns:
        A ``BuildReport``; the published version path is ``report.version``.

    Raises:
        DataError: the catalogue is missing, or no image in it could be encoded.
        IndexStoreError: another build holds the version being resumed.
    """
    cfg = cfg or ImageIndexConfig()
    if not Path(source).exists():
        raise DataError(
            f"image catalogue {source} does not exist; give a folder or a JSONL manifest"
        )
    encoder = encoder if encoder is not None else encoder_from_config(cfg)
    store = IndexStore(store_root)
    plan = {"encoder": encoder.name, "dim": int(encoder.dim), "shard": cfg.shard,
            "source": str(Path(source).resolve()), "config": asdict(cfg)}
    version, resuming = _pick_version(store, plan)
    lock = _lock(version)
    try:
        rejects = RejectLog(version / REJECTS_FILE, truncate=True)
        records = load_catalog(source, rejects)
        n_all, spec = len(records), cfg.shard_spec()
        if spec is not None:
            records = [r for r in records if shard_of(r.id, spec[1]) == spec[0]]
        by_id = {r.id: r for r in records}
        entries = _read_chunk_log(version)
        done: set[str] = set()
        for e in entries:  # work of the interrupted run: its vectors and its decode rejects
            done.update(e["ids"])
            done.update(row["id"] for row in e["rejects"])
            rejects.extend([row for row in e["rejects"] if row["id"] in by_id])
        todo = [r for r in records if r.id not in done]
        resumed = sum(i in by_id for e in entries for i in e["ids"])
        if resuming:
            log.info(
                "resuming %s: %d images already encoded, %d to go", version, resumed, len(todo)
            )

        first_chunk = 1 + max((int(e["chunk"][6:12]) for e in entries), default=-1)
        t0 = time.perf_counter()
        bar = tqdm(total=len(records), initial=len(records) - len(todo), disable=not progress,
                   desc="encoding images", unit="img")
        with bar:
            encoded = _encode_all(todo, encoder, version, rejects, cfg, first_chunk, bar)
        secs = time.perf_counter() - t0
        rate = encoded / secs if encoded and secs > 0 else 0.0

        ids, chunks = _collect(version, by_id)
        if not ids:
            raise DataError(f"no image from {source} could be encoded; see {rejects.path}")
        metadata = [by_id[i].metadata() for i in ids]
        index = ImageIndex.build(np.concatenate(chunks), ids, metadata, encoder.name, cfg)
        extra = {"source": plan["source"], "shard": cfg.shard, "rejected": rejects.count}
        _publish(store, version, index, extra)
    finally:
        lock.close()
    for p in [version / CHUNK_LOG, *version.glob("chunk-*.npy"), version / LOCK_FILE]:
        p.unlink(missing_ok=True)  # the published vectors.npy holds the vectors now

    msg = (
        f"encoded {encoded} images in {secs:.1f}s ({rate:.1f} images/s); {resumed} resumed, "
        f"{rejects.count} rejected -> {rejects.path}; {index.index_type} index of {len(index)} "
        f"published at {version}"
    )
    log.info(msg)
    if progress:
        tqdm.write(msg, file=sys.stderr)
    return BuildReport(
        version=version, count=len(index), encoded=encoded, resumed=resumed,
        rejected=rejects.count, skipped_other_shards=n_all - len(records), encode_seconds=secs,
        images_per_s=rate, rejects_path=rejects.path, index_type=index.index_type,
        encoder=encoder.name,
    )


def merge_image_shards(
    shard_dirs: Sequence[str | os.PathLike[str]],
    store_root: str | os.PathLike[str],
    cfg: ImageIndexConfig | None = None,
) -> BuildReport:
    """Join the live versions of shard stores into one new published version at ``store_root``.

    Args:
        shard_dirs: stores written by ``build_image_index`` with ``cfg.shard = "i/n"``.
        store_root: destination store (may already serve an older version).
        cfg: index type and parameters; None reuses the first shard's config (unsharded).

    Raises:
        EncoderMismatchError: shards were encoded by different encoders or dims.
        ConfigError: shard specs disagree on n, repeat an i, or leave a shard out.
        DataError: an id occurs in two shards.
    """
    if not shard_dirs:
        raise ConfigError("merge_image_shards needs at least one shard directory")
    parts = [(Path(d), ImageIndex.open(IndexStore(d).open_current())) for d in shard_dirs]
    first_dir, first = parts[0]
    for d, ix in parts[1:]:
        if (ix.encoder_name, ix.dim) != (first.encoder_name, first.dim):
            raise EncoderMismatchError(
                f"shard {d} was built by {ix.encoder_name!r} (dim {ix.dim}) but shard {first_dir} "
                f"by {first.encoder_name!r} (dim {first.dim}); rebuild one of them"
            )
    specs = [ImageIndexConfig(**ix.meta["config"]).shard_spec() for _, ix in parts]
    if all(s is not None for s in specs):
        ns, got = {n for _, n in specs}, sorted(i for i, _ in specs)
        if len(ns) != 1 or got != list(range(next(iter(ns)))):
            raise ConfigError(
                f"shards {[ix.meta['config']['shard'] for _, ix in parts]} do not form a complete "
                f"set i/n with i = 0..n-1 exactly once"
            )
    owner: dict[str, Path] = {}
    for d, ix in parts:
        for i in ix.ids:
            if i in owner:
                raise DataError(f"id {i!r} occurs in shard {owner[i]} and in shard {d}")
            owner[i] = d
    cfg = cfg or replace(ImageIndexConfig(**first.meta["config"]), shard=None)
    store = IndexStore(store_root)
    version = store.new_version()
    vectors = np.concatenate([ix.vectors() for _, ix in parts])  # (N, D)
    ids = [i for _, ix in parts for i in ix.ids]
    index = ImageIndex.build(
        vectors, ids, [m for _, ix in parts for m in ix.metadata], first.encoder_name, cfg
    )
    rejects = RejectLog(version / REJECTS_FILE, truncate=True)
    logs = [RejectLog(IndexStore(d).open_current() / REJECTS_FILE) for d, _ in parts]
    rows = [row for shard_log in logs for row in shard_log.rows()]
    # catalogue-level rejects (bad manifest lines) are reported by every shard: keep one copy
    rejects.extend(list({json.dumps(r, sort_keys=True): r for r in rows}.values()))
    extra = {"merged_from": [str(d) for d, _ in parts], "rejected": rejects.count}
    _publish(store, version, index, extra)
    return BuildReport(
        version=version, count=len(index), encoded=0, resumed=0, rejected=rejects.count,
        skipped_other_shards=0, encode_seconds=0.0, images_per_s=0.0, rejects_path=rejects.path,
        index_type=index.index_type, encoder=first.encoder_name,
    )
