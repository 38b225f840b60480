"""The image index's text channel: MiniLM over image titles, tags and captions (and logged
queries), searched beside the CLIP vectors.

CLIP compares a query with pixels; an image catalogue with titles also knows what the image is
called, and a query log knows what users called it. The same :class:`indexers.dense.DenseIndex`
as the template index's dense channel is built over each titled image's text::

    row   "golden retriever on a beach. dog, beach"   title. tags (and caption)
    row   "puppy at the sea"                           a logged query that clicked the image

saved in the image index's version directory (``dense*.faiss``), so it is versioned and published
with the CLIP index. Images without a title, tags or caption get no rows and are found by CLIP
only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dense import DenseIndex
from .errors import EncoderMismatchError
from .image_search import Hit
from .query_log import normalize_query
from .templates import TextEncoder

__all__ = ["LOGGED_QUERIES_FILE", "build_image_text_index", "image_text", "logged_queries",
           "merge_image_text_indexes", "save_logged_queries", "search_image_text"]

LOGGED_QUERIES_FILE = "logged_queries.txt"  # in the version: the log's queries, for leak checks


def image_text(metadata: Mapping[str, Any]) -> str:
    """An image's own words for the text channel: "title. tags. caption" ('' when none)."""
    meta = metadata.get("meta") or {}
    caption = meta.get("caption") if isinstance(meta, Mapping) else None
    parts = [str(metadata.get("title") or "").strip(),
             ", ".join(str(t) for t in metadata.get("tags") or ()),
             str(caption or "").strip()]
    return ". ".join(p for p in parts if p)


def build_image_text_index(ids: Sequence[str], metadata: Sequence[Mapping[str, Any]],
                           encoder: TextEncoder,
                           expansions: Mapping[str, Sequence[str]] | None = None,
                           progress: bool = False) -> DenseIndex | None:
    """The text channel of an image index, or None when no image has a title, tags or caption.

    Args:
        ids, metadata: the image index's ids and metadata rows, in its order.
        encoder: the sentence encoder (its name is stored and checked on open).
        expansions: image id -> logged queries that clicked it (``QueryLog.expansions``).
    """
    texts = {i: t for i, m in zip(ids, metadata) if (t := image_text(m))}
    if not texts:
        return None
    return DenseIndex.build(texts, expansions or {}, encoder, progress=progress)


def save_logged_queries(directory: str | Path,
                        expansions: Mapping[str, Sequence[str]]) -> None:
    """Write the logged queries the text channel holds (normalised, one per line, sorted), so
    that ``udrl eval`` can warn about test queries the index has seen."""
    qs = sorted({normalize_query(q) for qs in expansions.values() for q in qs})
    Path(directory, LOGGED_QUERIES_FILE).write_text("".join(q + "\n" for q in qs),
                                                    encoding="utf-8")


def logged_queries(directory: str | Path | None) -> set[str]:
    """The normalised logged queries an image index version was expanded with (empty: none)."""
    p = Path(directory, LOGGED_QUERIES_FILE) if directory is not None else None
    if p is None or not p.is_file():
        return set()
    return set(p.read_text(encoding="utf-8").splitlines())


def merge_image_text_indexes(parts: Sequence[DenseIndex | None]) -> DenseIndex | None:
    """One text channel from the shards' (rows kept as encoded; the centroids are recomputed).

    Returns None unless every shard has one (a merged index never half-covers its images).

    Raises:
        EncoderMismatchError: the shards' text channels come from different encoders.
    """
    if not parts or any(p is None for p in parts):
        return None
    first = parts[0]
    for p in parts[1:]:
        if (p.encoder_name, p.dim, p.config) != (first.encoder_name, first.dim, first.config):
            raise EncoderMismatchError(
                f"shard text channels differ: {p.encoder_name!r} (dim {p.dim}, {p.config}) vs "
                f"{first.encoder_name!r} (dim {first.dim}, {first.config}); rebuild the shards")
    rows = np.concatenate([p.row_vectors() for p in parts])  # (R, dim)
    return DenseIndex(rows, [i for p in parts for i in p.row_ids], first.encoder_name,
                      [k for p in parts for k in p.row_kinds], first.config)


def search_image_text(index, vectors: np.ndarray, k: int,
                      filters: dict | None = None) -> list[list]:
    """Top-``k`` images per query embedding through the text channel, as the index's ``Hit``s.

    Args:
        index: an ``ImageIndex`` with a text channel (``index.dense``).
        vectors: (Q, dim) query embeddings from the channel's encoder.
        filters: the image filters (see ``images.matches_filters``).
    """
    pos = {i: r for r, i in enumerate(index.ids)}
    allow = None
    if filters:
        mask = index.filter_mask(filters)
        allow = {i: bool(mask[r]) for i, r in pos.items()}
    return [[Hit(i, s, dict(index.metadata[pos[i]])) for i, s in found if i in pos]
            for found in index.dense.search(vectors, k, allow)]
