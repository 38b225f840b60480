"""Building the Elasticsearch image index: encode locally, publish to a new index, swap the alias.

Encoding is the FAISS build's (``image_build.build_image_index``: resumable, rejects, the same
vectors), run into a local *staging* store, so that a killed build resumes and a refused
publish is re-run with ``--force`` without encoding again: while the staging store's live
version was made from the same catalogue (checksum), encoder and unchanged files (size and
mtime of every image, ``fingerprints.json``), its vectors are reused.

Publishing (``publish_es_images``) follows the template index's rules (``es_build``)::

    checks    PublishPolicy against the document count behind the alias: a sharp count drop
              or a high reject rate refuses (nothing is created) unless force
    create    <alias>-v<timestamp>: dense_vector mapping (es_images.image_mapping)
    load      helpers.streaming_bulk, 429s backed off and re-sent; documents the cluster
              refuses are rejects (rejects.jsonl) and above max_failed_fraction abort
    swap      one update_aliases call
    prune     keep_versions newest indices of the alias; the live one and the one it
              replaced (the last good version, for rollback) always stay

Vectors go as base64 of big-endian float32 where the cluster reads them (9.3+), else as
float lists.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError

from .catalog_images import RejectLog, load_catalog
from .errors import ConfigError, IndexStoreError
from .es_build import _udrl_meta, es_live_version, prune_indices, publish_new_index
from .es_features import read_features
from .es_images import METADATA_FIELD, SCHEMA, VECTOR_FIELD, EsImageConfig, image_mapping
from .es_schema import EsSettings, connect
from .image_resume import BUILD_FILE, catalog_checksum, fingerprint
from .images import ImageIndex, ImageIndexConfig, content_checksum
from .publish import DEFAULT_POLICY, PublishPolicy, check_publish, enforce
from .store import IndexStore

__all__ = ["FINGERPRINTS_FILE", "build_es_image_index", "pack_vector", "publish_es_images",
           "publish_staged"]

log = logging.getLogger(__name__)

FINGERPRINTS_FILE = "fingerprints.json"  # id -> file fingerprint, beside a staging version
REJECTS_FILE = "rejects.jsonl"  # under the staging root: the last publish's rejects
_RESUME_KEY = ("encoder", "dim", "shard", "catalog")


def pack_vector(vector: np.ndarray) -> str:
    """Base64 of the big-endian float32 bytes: the compact dense_vector input of 9.3+."""
    return base64.b64encode(np.asarray(vector, dtype=">f4").tobytes()).decode("ascii")


def _documents(ids: Sequence[str], metadata: Sequence[dict], vectors: np.ndarray, index: str,
               packed: bool) -> Iterator[dict[str, Any]]:
    for i, meta, vec in zip(ids, metadata, vectors):
        value: Any = pack_vector(vec) if packed else [float(x) for x in vec]
        yield {"_op_type": "index", "_index": index, "_id": i,
               "_source": {"id": i, VECTOR_FIELD: value, METADATA_FIELD: meta}}


def publish_es_images(
    ids: Sequence[str],
    metadata: Sequence[dict],
    vectors: np.ndarray,
    encoder_name: str,
    settings: EsSettings,
    config: EsImageConfig | None = None,
    *,
    rejected: int = 0,
    policy: PublishPolicy = DEFAULT_POLICY,
    keep_versions: int = 3,
    rejects: RejectLog | None = None,
    what: str = "the image catalogue",
    extra_meta: dict[str, Any] | None = None,
    client: Elasticsearch | None = None,
) -> dict[str, Any]:
    """Publish encoded images as a new index behind ``settings.alias`` (see the module doc).

    Args:
        ids, metadata, vectors: N ids, their catalogue metadata and (N, D) CLIP vectors
            (normalised here).
        rejected: catalogue records already rejected (for the reject-rate check).
        policy: the publish checks against the live index; ``force`` publishes anyway.
        keep_versions: indices of the alias kept after the swap (>= 1; the live one and the
            one live before it always stay).
        rejects: where documents the cluster refused are appended (file, line, id, reason).
        what: the catalogue's name in a refusal.
        extra_meta: more JSON-able facts for ``_meta.udrl`` (source, rejected, log ...).

    Returns:
        JSON-able report: ``version``, ``previous_version``, ``count``, ``failed`` and
        ``failures`` ({"id", "reason", "status"}), ``pruned``, ``publish_check``,
        ``vectors_as`` ("base64" or "floats"), ``es_version``, ``index_options``.

    Raises:
        PublishRefusedError: the checks refused; nothing was created.
        ConfigError: the index options do not fit the vectors (bbq_hnsw under 64 dims).
        IndexStoreError: the cluster refused or is unreachable, or too many documents failed;
            the alias is unchanged.
    """
    config = config or EsImageConfig()
    if keep_versions < 1:
        raise ConfigError(f"keep_versions={keep_versions} is out of range; use >= 1")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids) or len(ids) != len(metadata):
        raise ConfigError(f"vectors {vectors.shape}, {len(ids)} ids and {len(metadata)} metadata "
                          "rows must be (N, D), N and N")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    dim = int(vectors.shape[1])
    es = client or connect(settings)
    try:
        try:
            features = read_features(es)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"cannot reach Elasticsearch at {settings.hosts}: {e}") from e
        config.check(dim, features)
        live, live_count = es_live_version(settings, es)
        _check_alias_serves_images(es, settings.alias, live)
        check = check_publish(len(ids), rejected, live, live_count, policy)
        enforce(check, what, rejects.path if rejects is not None else None,
                " (the encoded images are kept: the next run with --force publishes them "
                "without encoding again)")
        meta = {"schema": SCHEMA, "encoder": encoder_name, "dim": dim, "count": len(ids),
                "checksum": content_checksum(ids, vectors),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "es_config": asdict(config), **(extra_meta or {})}
        json.dumps(meta, allow_nan=False)  # the cluster state holds it: JSON or nothing

        def body(previous: str | None) -> dict[str, Any]:
            return image_mapping({**meta, "previous_version": previous}, dim, config)

        packed = features.base64_vectors
        done = publish_new_index(
            es, settings, body, lambda new: _documents(ids, metadata, vectors, new, packed),
            len(ids))
        if rejects is not None:
            rejects.extend([{"file": what, "line": None, "id": f.id,
                             "reason": f"elasticsearch refused it ({f.status}): {f.reason}"}
                            for f in done.failures])
        pruned = prune_indices(es, settings.alias, keep_versions)
    finally:
        if client is None:
            es.close()
    return {
        "version": done.version, "previous_version": done.previous, "count": done.count,
        "failed": len(done.failures),
        "failures": [{"id": f.id, "reason": f.reason, "status": f.status}
                     for f in done.failures],
        "pruned": pruned, "publish_check": check.as_dict(),
        "vectors_as": "base64" if packed else "floats", "es_version": features.version,
        "index_options": {"type": config.index_type, "m": config.m,
                          "ef_construction": config.ef_construction},
    }


def _check_alias_serves_images(es: Elasticsearch, alias: str, live: str | None) -> None:
    """Refuse to swap an alias that serves something else (e.g. the template index)."""
    if live is None:
        return
    try:
        schema = _udrl_meta(es, live).get("schema")
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot read the mapping of {live!r}: {e}") from e
    if schema != SCHEMA:
        raise IndexStoreError(f"alias {alias!r} points at {live!r}, which is not a udrl image "
                              "index; give the image index an alias of its own "
                              "(index.es_image_alias)")


def _current_fingerprints(source: str | os.PathLike[str], scratch: Path) -> dict[str, str]:
    records = load_catalog(source, RejectLog(scratch, truncate=True))
    scratch.unlink(missing_ok=True)
    return {r.id: fingerprint(r.path) for r in records}


def _reusable(staging: IndexStore, plan: dict[str, Any], source) -> Path | None:
    """The staging store's live version when it was encoded from this very catalogue."""
    try:
        live = staging.current()
    except IndexStoreError:
        return None
    if live is None:
        return None
    try:
        built = json.loads((live / BUILD_FILE).read_text())
        fps = json.loads((live / FINGERPRINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if any(built.get(k) != plan[k] for k in _RESUME_KEY):
        return None
    return live if fps == _current_fingerprints(source, staging.root / ".fp-rejects") else None


def build_es_image_index(
    source: str | os.PathLike[str],
    staging_root: str | os.PathLike[str],
    settings: EsSettings,
    config: EsImageConfig | None = None,
    encoder=None,
    cfg: ImageIndexConfig | None = None,
    *,
    progress: bool = True,
    policy: PublishPolicy = DEFAULT_POLICY,
    keep_versions: int = 3,
    extra_meta: dict[str, Any] | None = None,
    client: Elasticsearch | None = None,
) -> dict[str, Any]:
    """Encode a catalogue (or reuse its staging vectors) and publish it to Elasticsearch.

    Args:
        source: image folder or JSONL manifest.
        staging_root: local ``IndexStore`` that keeps the encoded vectors (resume, --force).
        settings: the cluster and the image alias.
        config: index options and query-time defaults saved with the index.
        encoder: the CLIP image encoder; None builds it from ``cfg``.
        cfg: model and batch size; ``shard`` must be None (build shards into the staging
            store with ``reindex.reindex_images`` and publish their merge with
            ``publish_staged``).

    Returns:
        ``publish_staged``'s report plus ``encoded``, ``resumed``, ``changed``, ``reused``
        (the staging vectors were published without encoding) and ``encoder``.

    Raises:
        DataError, ModelError: as ``build_image_index``.
        PublishRefusedError, IndexStoreError: as ``publish_es_images``.
    """
    from .image_build import build_image_index, encoder_from_config  # torch: load on use

    cfg = cfg or ImageIndexConfig()
    if cfg.shard is not None:
        raise ConfigError("build_es_image_index publishes whole catalogues; build shards with "
                          "reindex_images into the staging store and publish their merge")
    encoder = encoder if encoder is not None else encoder_from_config(cfg)
    staging = IndexStore(staging_root)
    plan = {"encoder": encoder.name, "dim": int(encoder.dim), "shard": None,
            "catalog": catalog_checksum(source) if Path(source).exists() else None}
    version = _reusable(staging, plan, source) if plan["catalog"] else None
    stats = {"encoded": 0, "resumed": 0, "changed": 0, "reused": version is not None}
    if version is None:
        rep = build_image_index(source, staging_root, encoder, replace(cfg, index_type="flat"),
                                progress=progress, policy=None)
        version = rep.version
        stats.update(encoded=rep.encoded, resumed=rep.resumed, changed=rep.changed)
        fps = _current_fingerprints(source, staging.root / ".fp-rejects")
        (version / FINGERPRINTS_FILE).write_text(json.dumps(fps, sort_keys=True))
        staging.prune(keep=1)
    else:
        log.info("reusing the vectors of %s: same catalogue, encoder and files", version)
    out = publish_staged(version, settings, config, policy=policy, keep_versions=keep_versions,
                         what=str(source), extra_meta=extra_meta, client=client,
                         encoder=(encoder.name, int(encoder.dim)))
    return {**out, **stats, "encoder": encoder.name}


def publish_staged(
    version: str | os.PathLike[str],
    settings: EsSettings,
    config: EsImageConfig | None = None,
    *,
    policy: PublishPolicy = DEFAULT_POLICY,
    keep_versions: int = 3,
    what: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    client: Elasticsearch | None = None,
    encoder: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Publish a staging store version (a build's or a shard merge's) to Elasticsearch.

    Its rejects and the documents the cluster refuses are written to ``rejects.jsonl`` beside
    the staging store's ``versions`` folder (replaced by every publish).

    Args:
        version: the version directory (``image_build.BuildReport.version``).
        what: the catalogue's name in a refusal (default: the version's ``source``).
        encoder: (name, dim) the version must have been encoded with; None: any.

    Returns:
        ``publish_es_images``'s report plus ``rejected``, ``rejects_path``,
        ``staging_version``.
    """
    version = Path(version)
    ix = ImageIndex.open(version, *(encoder or (None, None)))
    rejects = RejectLog(version.parent.parent / REJECTS_FILE, truncate=True)
    rejects.extend(RejectLog(version / "rejects.jsonl").rows())
    source = ix.meta.get("source")
    extra = {"source": source, "rejected": rejects.count, "staging_version": version.name,
             **(extra_meta or {})}
    out = publish_es_images(ix.ids, ix.metadata, ix.vectors(), ix.encoder_name, settings,
                            config, rejected=rejects.count, policy=policy,
                            keep_versions=keep_versions, rejects=rejects,
                            what=what or str(source or version), extra_meta=extra,
                            client=client)
    return {**out, "rejected": rejects.count, "rejects_path": str(rejects.path),
            "staging_version": version.name}
