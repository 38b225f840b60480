"""One modality's retrieval: each channel's ranked list, and their per-query fusion.

Channels::

    raw       the query as typed        BM25 (templates) / CLIP text tower (images)
    dense     the query's embedding     MiniLM over item text and logged queries (templates;
                                        images with titles, tags or captions)
    rewrite   the rewriter's prompt     BM25 (templates) / CLIP text tower (images)

A *mode* names the channels used: ``raw``, ``dense``, ``rewrite`` alone, ``hybrid`` (raw +
dense) or ``fused`` (all three). Several channels are fused with weighted RRF whose weights are
set per query (:class:`plugin.fusion.FusionWeights`): a rewrite that drifted from the query's
meaning is dropped, and the raw list weighs more when the catalogue holds the query's words.
Every result list says which channels were used and with what weight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexers.errors import IndexStoreError

from .fusion import FusionWeights, fuse_channels, term_coverage

__all__ = ["MODES", "ModalityResult", "ResultItem", "search_images", "search_templates"]

MODES: dict[str, tuple[str, ...]] = {
    "raw": ("raw",),
    "dense": ("dense",),
    "rewrite": ("rewrite",),
    "hybrid": ("raw", "dense"),
    "fused": ("raw", "dense", "rewrite"),
}
MIN_DEPTH = 50  # each channel's list is this deep at least, so fusion sees past the top k


@dataclass
class ResultItem:
    """One retrieved image or template."""

    id: str
    score: float  # fused RRF score, or the backend score when one channel is used
    ranks: dict[str, int]  # 1-based rank in each channel's list it appeared in
    fields: dict[str, Any] = field(default_factory=dict)  # title, tags, metadata


@dataclass
class ModalityResult:
    """Results of one modality (task) with their provenance."""

    task: str
    prompt: str  # what the rewritten list was searched with
    path: str  # the prompt's path
    fused: bool  # True: RRF of two or more channels
    index_version: str | None
    results: list[ResultItem]
    error: str | None = None  # e.g. the index is not loaded
    channels: dict[str, float] = field(default_factory=dict)  # channel -> weight (0: dropped)
    # channel -> its own top k before fusion (backend scores, rank in that channel only)
    lists: dict[str, list[ResultItem]] = field(default_factory=dict)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _template_fields(h) -> dict[str, Any]:
    return {"title": h.title, "category": h.category, "tags": list(h.tags), **h.fields}


def _catalogue_root(index) -> Path | None:
    """The folder an image index's catalogue paths are relative to: the manifest's folder, or
    the image folder it was built from (``source`` in its ``index_meta.json``)."""
    source = (getattr(index, "meta", None) or {}).get("source")
    if not source:
        return None
    p = Path(source)
    return p.parent if p.suffix.lower() in (".jsonl", ".json", ".ndjson") else p


def _image_fields(meta: dict[str, Any], root: Path | None) -> dict[str, Any]:
    """An image hit's fields as the catalogue names it: ``path`` relative to the catalogue,
    never where the file lies on this server (dropped when it lies outside the catalogue)."""
    out = dict(meta)
    path = out.pop("path", None)
    if path and root is not None:
        try:
            out["path"] = Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return out


def _combine(task: str, outcome, lists: dict[str, list], weights: dict[str, float], k: int,
             version: str | None, rrf_k: int) -> ModalityResult:
    fields: dict[str, dict] = {}
    for hits in lists.values():
        for h in hits:
            fields.setdefault(h[0], h[2])
    used = [c for c in lists if weights.get(c, 0.0) > 0]
    if len(used) > 1:
        fused = fuse_channels({c: [h[0] for h in lists[c]] for c in used}, weights, rrf_k, k)
        items = [ResultItem(f.id, round(f.score, 6), f.ranks, fields[f.id]) for f in fused]
    else:
        name = used[0] if used else next(iter(lists))
        items = [ResultItem(h[0], float(h[1]), {name: r}, h[2])
                 for r, h in enumerate(lists[name][:k], start=1)]
    channels = {c: (weights.get(c, 0.0) if len(used) > 1 else float(c in used or not used))
                for c in lists}
    own = {c: [ResultItem(h[0], float(h[1]), {c: r}, h[2])
               for r, h in enumerate(hits[:k], start=1)] for c, hits in lists.items()}
    return ModalityResult(task, outcome.prompt, outcome.path, len(used) > 1, version, items,
                          channels=channels, lists=own)


def _use_rewrite(channels: tuple[str, ...], outcome, query: str) -> bool:
    # a raw fallback repeats the raw list; only the rewrite-only mode searches it (as the query)
    return "rewrite" in channels and (channels == ("rewrite",) or outcome.path != "raw")


def _similarity(encoder, query: str, prompt: str | None) -> tuple[np.ndarray | None, float | None]:
    """The query's embedding and the prompt's cosine to it (None where unknown)."""
    if encoder is None:
        return None, None
    vecs = encoder.encode([query] if prompt is None else [query, prompt])  # (1 or 2, D)
    sim = None if prompt is None else float(np.dot(vecs[0], vecs[1]))
    return vecs[:1], sim


def search_templates(index, query: str, outcome, k: int, filters: dict | None,
                     channels: tuple[str, ...], weights: FusionWeights, encoder,
                     timings: dict[str, float]) -> ModalityResult:
    """Search the template index with ``channels`` and fuse them per query.

    Args:
        index: a ``TemplateIndex``; its dense channel is used when it has one.
        outcome: the rewrite's ``PromptOutcome`` for the template task.
        encoder: the text encoder of the dense channel (also measures the rewrite's similarity
            to the query); None: no dense channel and no similarity floor.
    """
    depth = max(k, MIN_DEPTH)
    want_dense = "dense" in channels and index.has_dense
    if channels == ("dense",) and not index.has_dense:
        raise IndexStoreError(f"template index {index.version} has no dense channel; rebuild it "
                              "with `udrl index templates` (it builds one by default)")
    rewrite = _use_rewrite(channels, outcome, query)
    t = time.perf_counter()
    qvec, sim = _similarity(encoder if (want_dense or rewrite) else None, query,
                            outcome.prompt if rewrite and channels != ("rewrite",) else None)
    timings["template.encode"] = _ms(t)
    t = time.perf_counter()
    texts = ([query] if "raw" in channels else []) + ([outcome.prompt] if rewrite else [])
    found = iter(index.search_batch(texts, depth, filters) if texts else [])
    lists: dict[str, list] = {}
    if "raw" in channels:
        lists["raw"] = [(h.id, h.score, _template_fields(h)) for h in next(found)]
    if want_dense:
        hits = index.search_dense_batch([query], depth, filters, vectors=qvec)[0]
        lists["dense"] = [(h.id, h.score, _template_fields(h)) for h in hits]
    if rewrite:
        lists["rewrite"] = [(h.id, h.score, _template_fields(h)) for h in next(found)]
    timings["template.search"] = _ms(t)
    coverage = term_coverage(query, [" ".join([f["title"], f["category"], *f["tags"]])
                                     for _, _, f in lists.get("raw", [])[:3]])
    w = weights.for_query(coverage, sim if encoder is not None else 1.0)
    return _combine("template", outcome, lists, {c: w[c] for c in lists}, k, index.version,
                    weights.k)


def search_images(index, clip, query: str, outcome, k: int, filters: dict | None,
                  channels: tuple[str, ...], weights: FusionWeights, encoder,
                  timings: dict[str, float]) -> ModalityResult:
    """Search the image index with the raw and rewrite channels (CLIP text tower) and, when
    the index has one, the dense channel (MiniLM over titles and logged queries), and fuse."""
    from indexers.image_text import search_image_text

    want_dense = "dense" in channels and index.has_dense and encoder is not None
    if channels == ("dense",) and not want_dense:
        raise IndexStoreError(f"image index {index.version} has no text channel (its images "
                              "have no titles, or it was built with --no-dense); use raw, "
                              "rewrite or fused")
    rewrite = _use_rewrite(channels, outcome, query)
    root = _catalogue_root(index)

    def fields(meta: dict[str, Any]) -> dict[str, Any]:
        return _image_fields(meta, root)

    texts = ([query] if "raw" in channels else []) + ([outcome.prompt] if rewrite else [])
    t = time.perf_counter()
    vecs = clip.encode_texts(texts) if texts else None
    qvec, sim = _similarity(encoder if want_dense or (rewrite and "raw" in channels) else None,
                            query, outcome.prompt if rewrite and "raw" in channels else None)
    timings["image.encode"] = _ms(t)
    t = time.perf_counter()
    depth = max(k, MIN_DEPTH)
    found = iter(index.search(vecs, depth, filters) if texts else [])
    lists: dict[str, list] = {}
    if "raw" in channels:
        lists["raw"] = [(h.id, h.score, fields(h.metadata)) for h in next(found)]
    if want_dense:
        hits = search_image_text(index, qvec, depth, filters)[0]
        lists["dense"] = [(h.id, h.score, fields(h.metadata)) for h in hits]
    if rewrite:
        lists["rewrite"] = [(h.id, h.score, fields(h.metadata)) for h in next(found)]
    timings["image.search"] = _ms(t)
    w = weights.for_query(0.0, sim if encoder is not None else 1.0)
    return _combine("image", outcome, lists, {c: w[c] for c in lists}, k, index.version,
                    weights.k)
