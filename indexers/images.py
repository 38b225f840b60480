"""FAISS image index: inner product over L2-normalised CLIP vectors, with metadata filters.

One index lives in one store version directory (see ``store.py``)::

    index.faiss        the FAISS index (flat, HNSW or IVF)
    vectors.npy        (N, D) float32, row i = ids[i]; kept for merging and re-indexing
    records.jsonl      one {"id": ..., "meta": {...}} per row, row order
    index_meta.json    encoder name, dim, index type, count, sha256 over ids+vectors, build time,
                       and the ImageIndexConfig it was built with
    dense*.faiss       optional: the text channel over titles and logged queries (image_text.py)

Index types: ``flat`` (exact), ``hnsw`` (graph, M and efSearch), ``ivf`` (inverted lists,
nlist and nprobe) and ``auto``: flat below ``AUTO_FLAT_MAX`` = 50,000 vectors (exact search
over 50k x 512 floats is ~100 MB and a few ms per query), HNSW above.

Filters are equality on metadata fields (``{"license": "cc0"}``), membership for list fields
(``{"tags": "cat"}``) and dotted keys reach into ``meta`` (``{"meta.source": "x"}``). They are
applied by over-fetching and widening until k hits match or the whole index has been searched,
so filtered results are exact for flat (and for IVF/HNSW once widened to the whole index).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .dense import DenseIndex
from .errors import ConfigError, EncoderMismatchError, IndexStoreError
from .image_filters import matches_filters
from .image_search import Hit
from .store import IndexStore

__all__ = ["AUTO_FLAT_MAX", "INDEX_TYPES", "Hit", "ImageIndex", "ImageIndexConfig",
           "content_checksum", "load_image_index", "matches_filters"]

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
AUTO_FLAT_MAX = 50_000
INDEX_FILE, VECTORS_FILE, RECORDS_FILE = "index.faiss", "vectors.npy", "records.jsonl"
META_FILE = "index_meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageIndexConfig:
    """How to encode a catalogue and which FAISS index to build over it."""

    model_name: str = "ViT-B-32"  # open_clip architecture; "udrl-tiny-clip" for tests
    pretrained: str | None = "laion2b_s34b_b79k"  # tag, checkpoint path, or None = random (tests)
    index_type: str = "auto"  # flat | hnsw | ivf | auto (flat below AUTO_FLAT_MAX, else hnsw)
    batch_size: int = 64  # images per encoder forward pass; 8-256 (memory ~ batch x image)
    hnsw_m: int = 32  # HNSW links per node; 16-64: higher = better recall, more memory
    ef_search: int = 128  # HNSW candidate list at query time; >= k, 32-512: recall vs speed
    nlist: int | None = None  # IVF inverted lists; None = sqrt(N), at most N/39 (training)
    nprobe: int = 16  # IVF lists visited per query; 1..nlist: recall vs speed
    shard: str | None = None  # "i/n": encode only ids with crc32(id) % n == i; None = all

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(
                f"index_type {self.index_type!r} is unknown; use one of {INDEX_TYPES}"
            )
        for name, lo in (("batch_size", 1), ("hnsw_m", 2), ("ef_search", 1), ("nprobe", 1)):
            if getattr(self, name) < lo:
                raise ConfigError(
                    f"{name} {getattr(self, name)} is out of range; it must be >= {lo}"
                )
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"nlist {self.nlist} is out of range; it must be >= 1 or None")
        self.shard_spec()

    def shard_spec(self) -> tuple[int, int] | None:
        """``(i, n)`` parsed from ``shard``, or None when unsharded."""
        if self.shard is None:
            return None
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ConfigError(
                f"shard {self.shard!r} is not of the form 'i/n' (e.g. '0/4')"
            ) from None
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"shard {self.shard!r} needs 0 <= i < n")
        return i, n


def content_checksum(ids: Sequence[str], vectors: np.ndarray) -> str:
    """sha256 over the ids (JSON list) and the little-endian float32 vector bytes."""
    h = hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode())
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.maximum(norms, 1e-12)


def _unusable(path: Path, why: str) -> IndexStoreError:
    return IndexStoreError(f"index at {path} is unusable ({why}); rebuild the index")


def _default_nlist(n: int) -> int:
    # sqrt(N) lists; faiss wants >= 39 training points per list
    return max(1, min(round(math.sqrt(n)), n // 39))


def _make_faiss(kind: str, vectors: np.ndarray, cfg: ImageIndexConfig) -> tuple[faiss.Index, dict]:
    n, d = vectors.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
        params = {"hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search}
    elif kind == "ivf":
        if n == 0:
            raise ConfigError("an ivf index needs at least one vector to train on; use 'flat'")
        nlist = max(1, min(cfg.nlist or _default_nlist(n), n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # deterministic k-means
        index.train(vectors)
        index.nprobe = min(cfg.nprobe, nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe}
    else:
        raise ConfigError(f"index_type {kind!r} is unknown; use one of {INDEX_TYPES[1:]}")
    index.add(vectors)
    return index, params


class ImageIndex:
    """Vectors, their ids and metadata, searchable by cosine similarity.

    Build with ``ImageIndex.build`` or open a saved one with ``ImageIndex.open`` /
    ``load_image_index``. Hits carry a shallow copy of each record's metadata.
    """

    def __init__(self, index: faiss.Index, ids: list[str], metadata: list[dict], meta: dict):
        assert index.ntotal == len(ids) == len(metadata), "index, ids and metadata disagree"
        self.index = index
        self.ids = ids
        self.metadata = metadata
        self.meta = meta  # contents of index_meta.json
        self._mask_cache: dict[str, np.ndarray] = {}
        self._vectors: np.ndarray | None = None  # set by build, or loaded lazily from _dir
        self._dir: Path | None = None
        self.dense = None  # the text channel over titles (indexers.image_text), if built

    encoder_name = property(lambda self: self.meta["encoder"], doc="Encoder of the vectors.")
    dim = property(lambda self: int(self.meta["dim"]), doc="Vector width D.")
    index_type = property(lambda self: self.meta["index_type"], doc="flat, hnsw or ivf.")

    @property
    def version(self) -> str | None:
        """The store version directory it was opened from (None for an unsaved build)."""
        return self._dir.name if self._dir is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def logged_queries(self) -> set[str]:
        """Normalised queries of the log its text channel was expanded with (for leak checks)."""
        from .image_text import logged_queries

        return logged_queries(self._dir)

    has_dense = property(lambda self: self.dense is not None, doc="Has a text channel.")

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        metadata: Sequence[dict],
        encoder_name: str,
        cfg: ImageIndexConfig | None = None,
    ) -> ImageIndex:
        """Index ``vectors`` (N, D); rows are re-normalised so inner product = cosine.

        Args:
            vectors: (N, D) float array, row i belongs to ``ids[i]``.
            ids: N distinct ids.
            metadata: N JSON-serialisable dicts (filters and hits use them).
            encoder_name: name of the encoder that made the vectors (``ClipEncoder.name``).
            cfg: index type and its parameters; None = ``ImageIndexConfig()`` defaults.
        """
        cfg = cfg or ImageIndexConfig()
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(ids) or len(ids) != len(metadata):
            raise ConfigError(
                f"vectors {vectors.shape}, {len(ids)} ids and {len(metadata)} metadata rows must "
                f"be (N, D), N and N"
            )
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise ConfigError(f"duplicate id {dup!r}; ids must be unique")
        vectors = _normalise(vectors)
        kind = cfg.index_type
        if kind == "auto":
            kind = "flat" if len(vectors) < AUTO_FLAT_MAX else "hnsw"
        t0 = time.perf_counter()
        index, params = _make_faiss(kind, vectors, cfg)
        meta = {
            "format_version": FORMAT_VERSION, "encoder": encoder_name,
            "dim": int(vectors.shape[1]), "index_type": kind, "params": params,
            "count": len(ids), "checksum": content_checksum(ids, vectors),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index_build_s": round(time.perf_counter() - t0, 3), "config": asdict(cfg),
        }
        out = cls(index, list(ids), [dict(m) for m in metadata], meta)
        out._vectors = vectors
        return out

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index, vectors, records and ``index_meta.json`` (last) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(d / INDEX_FILE))
        np.save(d / VECTORS_FILE, self.vectors())
        with (d / RECORDS_FILE).open("w", encoding="utf-8") as fh:
            for rid, m in zip(self.ids, self.metadata):
                fh.write(json.dumps({"id": rid, "meta": m}, ensure_ascii=False) + "\n")
        if self.dense is not None:
            self.dense.save(d)
        (d / META_FILE).write_text(json.dumps(self.meta, indent=2, ensure_ascii=False))

    def vectors(self) -> np.ndarray:
        """All stored vectors, (N, D) float32 in row order."""
        if self._vectors is None:
            assert self._dir is not None, "index neither built nor opened"
            self._vectors = np.load(self._dir / VECTORS_FILE, mmap_mode="r")
        return self._vectors

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        encoder_name: str | None = None,
        dim: int | None = None,
        verify: bool = False,
    ) -> ImageIndex:
        """Load a saved index, checking it was built by the encoder the caller will query with.

        Args:
            directory: a directory written by ``save`` (a store version).
            encoder_name, dim: expected encoder; None skips that check.
            verify: also recompute the sha256 over ids and vectors (reads vectors.npy).

        Raises:
            EncoderMismatchError: stored encoder name or dim differs from the given one.
            IndexStoreError: a file is missing, corrupt or inconsistent.
        """
        d = Path(directory)
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
            stored_name, stored_dim = meta["encoder"], int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _unusable(d / META_FILE, f"missing or corrupt: {e}") from e
        if encoder_name not in (None, stored_name) or dim not in (None, stored_dim):
            raise EncoderMismatchError(
                f"index at {d} was built by encoder {stored_name!r} (dim {stored_dim}) but is "
                f"opened with {encoder_name or stored_name!r} (dim {dim or stored_dim}); use that "
                f"encoder or rebuild the index with yours"
            )
        try:
            index = faiss.read_index(str(d / INDEX_FILE))
        except RuntimeError as e:
            raise _unusable(d / INDEX_FILE, f"cannot read FAISS index: {e}") from e
        try:
            lines = (d / RECORDS_FILE).read_text(encoding="utf-8").splitlines()
            rows = [json.loads(x) for x in lines]
            ids, metadata = [r["id"] for r in rows], [r["meta"] for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _unusable(d / RECORDS_FILE, f"missing or corrupt: {e}") from e
        if not (index.ntotal == len(ids) == meta.get("count")) or index.d != stored_dim:
            raise _unusable(d, f"{index.ntotal} vectors of dim {index.d}, {len(ids)} records, "
                               f"meta says {meta.get('count')} of dim {stored_dim}")
        out = cls(index, ids, metadata, meta)
        out._dir = d
        out.dense = DenseIndex.load(d)
        if verify:
            try:
                ok = content_checksum(ids, out.vectors()) == meta.get("checksum")
            except (OSError, ValueError) as e:
                raise _unusable(d / VECTORS_FILE, f"cannot read: {e}") from e
            if not ok:
                raise _unusable(d, "checksum mismatch: files were modified or damaged")
        if meta.get("index_type") == "hnsw":
            index.hnsw.efSearch = int(meta["params"]["ef_search"])
        return out

    # ---- search ---------------------------------------------------------------------------

    def filter_mask(self, filters: dict[str, Any]) -> np.ndarray:
        """(N,) bool: which rows pass ``filters`` (cached per filter set)."""
        key = json.dumps(filters, sort_keys=True, default=str)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = np.fromiter(
                (matches_filters(m, filters) for m in self.metadata), bool, len(self.metadata)
            )
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            self._mask_cache[key] = mask
        return mask

    def _faiss_search(self, q: np.ndarray, fetch: int, widen: int) -> tuple[np.ndarray, np.ndarray]:
        """Search with candidate budgets scaled by ``widen``; exhaustive once fetch == N."""
        n, kind, p = len(self), self.index_type, self.meta["params"]
        params = None
        if kind == "hnsw":
            ef = n if fetch >= n else max(p["ef_search"] * widen, fetch)
            params = faiss.SearchParametersHNSW(efSearch=int(ef))
        elif kind == "ivf":
            nprobe = p["nlist"] if fetch >= n else min(p["nlist"], p["nprobe"] * widen)
            params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        return self.index.search(q, fetch, params=params)  # (Q, fetch) scores, rows

    def search(
        self, query_vecs: np.ndarray, k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Top-k hits per query, best first.

        Args:
            query_vecs: (Q, D) float array; rows are normalised here.
            k: hits per query (>= 1); fewer come back when fewer records match.
            filters: metadata constraints (see ``matches_filters``), None for none.

        Returns:
            Q lists of at most k ``Hit``.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k {k!r} is out of range; it must be an integer >= 1")
        if filters is not None and not isinstance(filters, dict):
            raise ConfigError(
                f"filters must be a dict of field -> value, got {type(filters).__name__}"
            )
        q = np.asarray(query_vecs, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(
                f"query shape {q.shape} does not match index dim {self.dim}; pass (Q, {self.dim}) "
                f"(use search_one for a single vector)"
            )
        n = len(self)
        mask = self.filter_mask(filters) if filters else None
        n_match = n if mask is None else int(mask.sum())
        need = min(k, n_match)
        results: list[list[Hit]] = [[] for _ in range(len(q))]
        if need == 0 or len(q) == 0:
            return results
        q = _normalise(q)
        # over-fetch by the inverse selectivity of the filter, then widen x4 per round
        fetch = min(n, max(k, math.ceil(k * n / n_match)))
        widen, pending = 1, np.arange(len(q))
        while len(pending):
            scores, rows = self._faiss_search(q[pending], fetch, widen)
            still = []
            for qi, srow, rrow in zip(pending.tolist(), scores.tolist(), rows.tolist()):
                keep = [(r, s) for r, s in zip(rrow, srow) if r >= 0 and (mask is None or mask[r])]
                if len(keep) >= need or fetch >= n:
                    results[qi] = [
                        Hit(self.ids[r], float(s), dict(self.metadata[r])) for r, s in keep[:k]
                    ]
                else:
                    still.append(qi)
            pending = np.asarray(still, dtype=np.int64)
            fetch, widen = min(n, fetch * 4), widen * 4
        return results

    def search_one(
        self, vec: np.ndarray, k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """``search`` for one vector of shape (D,) or (1, D)."""
        v = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        return self.search(v, k, filters)[0]

    def search_text(
        self, texts: Sequence[str], encoder: Any, k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """Encode ``texts`` with ``encoder`` (must be the index's encoder) and search.

        Raises:
            EncoderMismatchError: ``encoder.name`` or ``encoder.dim`` differs from the index's.
        """
        if encoder.name != self.encoder_name or encoder.dim != self.dim:
            raise EncoderMismatchError(
                f"index was built by encoder {self.encoder_name!r} (dim {self.dim}); texts were "
                f"given to {encoder.name!r} (dim {encoder.dim})"
            )
        return self.search(encoder.encode_texts(list(texts)), k, filters)


def load_image_index(
    store_root: str | os.PathLike[str], encoder_name: str | None = None, dim: int | None = None
) -> ImageIndex:
    """Open the live (published) version of the image index store at ``store_root``.

    Raises:
        IndexStoreError: nothing published yet, or the live version is unusable.
        EncoderMismatchError: it was built by another encoder than ``encoder_name``/``dim``.
    """
    return ImageIndex.open(IndexStore(store_root).open_current(), encoder_name, dim)
