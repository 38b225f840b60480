"""Build, resume, shard and merge image indexes inside a versioned ``IndexStore``.

``build_image_index`` writes a new store version: the plan, a commit log of encoded batches
and their vector chunks (``image_resume``), and ``rejects.jsonl`` (records that were skipped,
with file/line/id/reason).

A build that is stopped at any point is continued by running it again: the newest unfinished
version with the same encoder, shard and catalogue checksum is reused, and only records that
are not in its commit log, or whose file changed since (size or mtime), are encoded. The FAISS
index is built from the chunks at the end; the publish checks (``publish``) compare it with
the live version, then the version is marked complete and published atomically; until then
the previously published version keeps answering. Chunks are deleted after publishing
(``vectors.npy`` keeps the vectors), and so are unfinished builds older than the new version.
A build the checks refuse stays unfinished: ``force`` on the next run publishes it without
encoding again.

Batches are encoded by a runner (``image_encode``): in this process by default, or by a pool
of actors on a Ray cluster (``image_ray.RayRunner``); either way this module commits them.

Sharding (``cfg.shard = "i/n"``) encodes only records with ``crc32(id) % n == i`` into its own
store; ``merge_image_shards`` joins the shard stores into one published version.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .catalog_images import RejectLog, load_catalog
from .encoders import ClipEncoder, ImageEncoder
from .errors import ConfigError, DataError, EncoderMismatchError
from .image_encode import EncodeRunner, LocalRunner
from .image_resume import (
    CHUNK_LOG,
    catalog_checksum,
    commit_chunk,
    committed,
    fingerprint,
    gather,
    pick_version,
    read_chunk_log,
)
from .image_text import build_image_text_index, merge_image_text_indexes, save_logged_queries
from .images import ImageIndex, ImageIndexConfig
from .publish import DEFAULT_POLICY, PublishPolicy, check_publish, enforce, store_live_version
from .store import LOCK_FILE, IndexStore

__all__ = ["BuildReport", "build_image_index", "encoder_from_config", "merge_image_shards",
           "shard_of"]

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"


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
    changed: int = 0  # images encoded again because their file changed since it was encoded
    runner: str = "local"  # where the images were encoded: local, ray
    publish_check: dict | None = None  # PublishCheck.as_dict(); None for a shard build


def shard_of(record_id: str, n: int) -> int:
    """Stable shard of an id: ``crc32(utf-8 id) % n`` (same in every process and Python)."""
    return zlib.crc32(record_id.encode("utf-8")) % n


def encoder_from_config(cfg: ImageIndexConfig, device: str = "cpu") -> ClipEncoder:
    """The ``ClipEncoder`` that ``cfg.model_name``/``cfg.pretrained`` describe."""
    return ClipEncoder(cfg.model_name, cfg.pretrained, device=device)


def _publish(store: IndexStore, version: Path, index: ImageIndex, extra_meta: dict) -> None:
    index.meta.update(extra_meta)
    index.save(version)
    store.mark_complete(version)
    store.publish(version)
    store.clean_unfinished()


def _check(store_root, count: int, rejected: int, policy: PublishPolicy | None, what: str,
           rejects: Path, kept: str = "") -> dict | None:
    """Run the publish checks against the live version of ``store_root`` (None: no checks)."""
    if policy is None:
        return None
    check = check_publish(count, rejected, *store_live_version(store_root), policy)
    enforce(check, what, rejects, kept)
    return check.as_dict()


def build_image_index(
    source: str | os.PathLike[str],
    store_root: str | os.PathLike[str],
    encoder: ImageEncoder | None = None,
    cfg: ImageIndexConfig | None = None,
    progress: bool = True,
    text_encoder=None,
    expansions: dict[str, list[str]] | None = None,
    extra_meta: dict | None = None,
    policy: PublishPolicy | None = DEFAULT_POLICY,
    runner: EncodeRunner | None = None,
) -> BuildReport:
    """Encode a catalogue and publish its index as a new version of the store at ``store_root``.

    Args:
        source: image folder or JSONL manifest (see ``catalog_images``).
        store_root: ``IndexStore`` directory (for a shard build: that shard's own directory).
        encoder: image encoder; None builds ``ClipEncoder`` from ``cfg.model_name/pretrained``.
        cfg: batch size, index type and parameters, optional shard ``"i/n"``; None = defaults.
        progress: show a tqdm bar and print the throughput.
        text_encoder: a sentence encoder: also build the text channel over the images' titles,
            tags and captions (``image_text``); None: CLIP only.
        expansions: image id -> logged queries that clicked it, added to the text channel.
        extra_meta: more fields for the version's ``index_meta.json`` (e.g. the log's summary).
        policy: publish checks against the live version (``publish.PublishPolicy``); None
            skips them. Shard builds are not checked (their merge is).
        runner: where batches are encoded (``image_encode``): None = this process
            (``LocalRunner``); ``image_ray.RayRunner`` spreads them over a Ray cluster. Resume,
            rejects and the report are the same for both.

    Returns:
        A ``BuildReport``; the published version path is ``report.version``.

    Raises:
        DataError: the catalogue is missing, or no image in it could be encoded.
        IndexStoreError: another build holds the version being resumed.
        PublishRefusedError: the checks refused; the encoded vectors stay for a forced re-run.
    """
    cfg = cfg or ImageIndexConfig()
    if not Path(source).exists():
        raise DataError(
            f"image catalogue {source} does not exist; give a folder or a JSONL manifest"
        )
    encoder = encoder if encoder is not None else encoder_from_config(cfg)
    store = IndexStore(store_root)
    plan = {"encoder": encoder.name, "dim": int(encoder.dim), "shard": cfg.shard,
            "catalog": catalog_checksum(source), "source": str(Path(source).resolve()),
            "config": asdict(cfg)}
    version, resuming = pick_version(store, plan)
    lock = store.lock(version)
    try:
        rejects = RejectLog(version / REJECTS_FILE, truncate=True)
        records = load_catalog(source, rejects)
        n_all, spec = len(records), cfg.shard_spec()
        if spec is not None:
            records = [r for r in records if shard_of(r.id, spec[1]) == spec[0]]
        by_id = {r.id: r for r in records}
        fps = {r.id: fingerprint(r.path) for r in records}
        entries = read_chunk_log(version)
        # work of the interrupted run whose files are unchanged: its vectors and decode rejects
        at, old_rejects, changed = committed(entries, fps)
        rejects.extend(old_rejects)
        done = set(at) | {row["id"] for row in old_rejects}
        todo = [r for r in records if r.id not in done]
        resumed = len(at)
        if resuming:
            log.info("resuming %s: %d images already encoded, %d changed since, %d to go",
                     version, resumed, changed, len(todo))

        chunks = itertools.count(1 + max((int(e["chunk"][6:12]) for e in entries), default=-1))
        runner = runner or LocalRunner()
        t0 = time.perf_counter()
        bar = tqdm(total=len(records), initial=len(records) - len(todo), disable=not progress,
                   desc=f"encoding images ({runner.name})", unit="img")
        encoded = 0

        def commit(ids: list[str], vecs: np.ndarray, bad: list[dict], handled: int) -> None:
            nonlocal encoded
            commit_chunk(version, next(chunks), vecs, ids, bad, fps)
            rejects.extend(bad)
            encoded += len(ids)
            bar.update(handled)

        with bar:
            if todo:
                runner.run(todo, encoder, cfg.batch_size, commit)
        secs = time.perf_counter() - t0
        rate = encoded / secs if encoded and secs > 0 else 0.0

        at = committed(read_chunk_log(version), fps)[0]
        ids = [r.id for r in records if r.id in at]  # catalogue order, as a clean build has it
        if not ids:
            raise DataError(f"no image from {source} could be encoded; see {rejects.path}")
        check = _check(store_root, len(ids), rejects.count, None if spec else policy,
                       str(source), rejects.path, " (the encoded images are kept: the next "
                       "run with --force publishes them without encoding again)")
        metadata = [by_id[i].metadata() for i in ids]
        vectors = gather(version, ids, at, encoder.dim)  # (N, D)
        index = ImageIndex.build(vectors, ids, metadata, encoder.name, cfg)
        extra = {"source": plan["source"], "shard": cfg.shard, "rejected": rejects.count,
                 **(extra_meta or {})}
        if text_encoder is not None:
            index.dense = build_image_text_index(ids, metadata, text_encoder, expansions,
                                                 progress=progress)
            extra["text_channel"] = None if index.dense is None else {
                "encoder": index.dense.encoder_name, "items": index.dense.n_items,
                "rows": len(index.dense)}
            if index.dense is not None and expansions:
                save_logged_queries(version, {i: expansions[i] for i in ids if i in expansions})
        _publish(store, version, index, extra)
    finally:
        lock.close()
    for p in [version / CHUNK_LOG, *version.glob("chunk-*.npy"), version / LOCK_FILE]:
        p.unlink(missing_ok=True)  # the published vectors.npy holds the vectors now

    again = f" ({changed} again: their file changed since)" if changed else ""
    msg = (
        f"encoded {encoded} images{again} in {secs:.1f}s ({rate:.1f} images/s); {resumed} resumed, "
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
        encoder=encoder.name, changed=changed, publish_check=check, runner=runner.name,
    )


def merge_image_shards(
    shard_dirs: Sequence[str | os.PathLike[str]],
    store_root: str | os.PathLike[str],
    cfg: ImageIndexConfig | None = None,
    policy: PublishPolicy | None = DEFAULT_POLICY,
) -> BuildReport:
    """Join the live versions of shard stores into one new published version at ``store_root``.

    Args:
        shard_dirs: stores written by ``build_image_index`` with ``cfg.shard = "i/n"``.
        store_root: destination store (may already serve an older version).
        cfg: index type and parameters; None reuses the first shard's config (unsharded).
        policy: publish checks against the live version at ``store_root``; None skips them.

    Raises:
        EncoderMismatchError: shards were encoded by different encoders or dims.
        ConfigError: shard specs disagree on n, repeat an i, or leave a shard out.
        DataError: an id occurs in two shards.
        PublishRefusedError: the checks refused (nothing is written at ``store_root``).
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
    logs = [RejectLog(IndexStore(d).open_current() / REJECTS_FILE) for d, _ in parts]
    rows = [row for shard_log in logs for row in shard_log.rows()]
    # catalogue-level rejects (bad manifest lines) are reported by every shard: keep one copy
    unique = list({json.dumps(r, sort_keys=True): r for r in rows}.values())
    check = _check(store_root, len(owner), len(unique), policy, "the merged shards",
                   logs[0].path)
    store = IndexStore(store_root)
    version = store.new_version()
    vectors = np.concatenate([ix.vectors() for _, ix in parts])  # (N, D)
    ids = [i for _, ix in parts for i in ix.ids]
    index = ImageIndex.build(
        vectors, ids, [m for _, ix in parts for m in ix.metadata], first.encoder_name, cfg
    )
    index.dense = merge_image_text_indexes([ix.dense for _, ix in parts])
    seen = set().union(*(ix.logged_queries() for _, ix in parts))
    if index.dense is not None and seen:
        save_logged_queries(version, {"": sorted(seen)})
    rejects = RejectLog(version / REJECTS_FILE, truncate=True)
    rejects.extend(unique)
    extra = {"merged_from": [str(d) for d, _ in parts], "rejected": rejects.count}
    _publish(store, version, index, extra)
    return BuildReport(
        version=version, count=len(index), encoded=0, resumed=0, rejected=rejects.count,
        skipped_other_shards=0, encode_seconds=0.0, images_per_s=0.0, rejects_path=rejects.path,
        index_type=index.index_type, encoder=first.encoder_name, publish_check=check,
    )
