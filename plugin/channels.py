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
from collections.abc import Callable
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass

from indexers.errors import IndexStoreError

from .fusion import FusionWeights, fuse_channels, term_coverage

__all__ = ["MODES", "SOURCES", "ChannelSource", "ModalityResult", "ResultItem", "image_source",
           "search_images", "search_modality", "search_templates", "template_source"]

MODES: dict[str, tuple[str, ...]] = {
    "raw": ("raw",),
    "dense": ("dense",),
    "rewrite": ("rewrite",),
    "hybrid": ("raw", "dense"),
    "fused": ("raw", "dense", "rewrite"),
}
MIN_DEPTH = 50  # each channel's list is this deep at least, so fusion sees past the top k


# Pydantic dataclasses: built once from the index's hits and returned as they are by the
# pipeline, the Python hook and the HTTP API (``/v1/search``'s ``modalities``).


@dataclass
class ResultItem:
    """One retrieved image or template."""

    id: str
    score: float  # fused RRF score, or the backend score when one channel is used
    ranks: dict[str, int]  # 1-based rank in each channel's list it appeared in
    fields: dict[str, Any]  # title, tags, metadata


@dataclass
class ModalityResult:
    """Results of one modality (task) with their provenance."""

    task: str
    prompt: str  # what the rewritten list was searched with
    path: str  # the prompt's path
    fused: bool  # True: RRF of two or more channels
    index_version: str | None
    results: list[ResultItem]
    error: str | None  # e.g. the index is not loaded
    # channel (raw, dense, rewrite) -> fusion weight; 0: dropped
    channels: dict[str, float] = Field(default={})
    # channel -> its own top k before fusion (backend scores, rank in that channel only)
    lists: dict[str, list[ResultItem]] = Field(default={})


@plain_dataclass(frozen=True)
class ChannelSource:
    """What differs between the modalities' channel searches; ``search_modality`` does the rest.

    Args:
        task: image | template (also the prefix of the timings keys).
        version: the index version the results come from.
        encode: the raw and rewrite channels' texts -> what ``search`` takes.
        search: (encoded texts, depth, filters) -> hits per text, best first.
        dense: (query, its embedding or None, depth, filters) -> the dense channel's hits;
            None: no dense channel.
        fields: a hit -> the result's ``fields``.
        coverage: (query, the raw channel's hits) -> the share of the query's words the
            catalogue holds (raises the raw weight; 0 when unknown).
        no_dense: why the dense channel alone cannot be searched (raised when asked).
    """

    task: str
    version: str | None
    encode: Callable[[list[str]], Any]
    search: Callable[[Any, int, dict | None], list[list]]
    dense: Callable[[str, Any, int, dict | None], list] | None
    fields: Callable[[Any], dict[str, Any]]
    coverage: Callable[[str, list], float]
    no_dense: str


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


def template_source(index, clip=None, encoder=None) -> ChannelSource:
    """A ``TemplateIndex``'s channels: BM25 for raw and rewrite, its dense channel when it has
    one (it embeds the query itself when ``encoder`` is None)."""

    def dense(query, qvec, depth, filters):
        return index.search_dense_batch([query], depth, filters, vectors=qvec)[0]

    def coverage(query, raw_hits):
        return term_coverage(query, [" ".join([f["title"], f["category"], *f["tags"]])
                                     for f in map(_template_fields, raw_hits[:3])])

    return ChannelSource(
        "template", index.version, lambda texts: texts, index.search_batch,
        dense if index.has_dense else None, _template_fields, coverage,
        f"template index {index.version} has no dense channel; rebuild it with "
        "`udrl index templates` (it builds one by default)")


def image_source(index, clip, encoder=None) -> ChannelSource:
    """An ``ImageIndex``'s channels: the CLIP text tower for raw and rewrite, and the text
    channel (MiniLM over titles and logged queries) when the index has one and ``encoder``
    embeds the query."""
    from indexers.image_text import search_image_text

    root = _catalogue_root(index)

    def dense(query, qvec, depth, filters):
        return search_image_text(index, qvec, depth, filters)[0]

    return ChannelSource(
        "image", index.version, clip.encode_texts, index.search,
        dense if index.has_dense and encoder is not None else None,
        lambda h: _image_fields(h.metadata, root), lambda query, raw_hits: 0.0,
        f"image index {index.version} has no text channel (its images have no titles, or it "
        "was built with --no-dense); use raw, rewrite or fused")


SOURCES: dict[str, Callable[..., ChannelSource]] = {"image": image_source,
                                                     "template": template_source}


def _combine(src: ChannelSource, outcome, found: dict[str, list], weights: dict[str, float],
             k: int, rrf_k: int) -> ModalityResult:
    """Each channel's top k as results, and the fused list of the channels weighted > 0 (the
    one used channel's own list when fewer than two are)."""
    used = [c for c in found if weights.get(c, 0.0) > 0]
    own = {c: [ResultItem(h.id, float(h.score), {c: r}, src.fields(h))
               for r, h in enumerate(hits[:k], start=1)] for c, hits in found.items()}
    if len(used) > 1:
        first: dict[str, Any] = {}  # id -> its hit in the first channel that has it
        for hits in found.values():
            for h in hits:
                first.setdefault(h.id, h)
        fused = fuse_channels({c: [h.id for h in found[c]] for c in used}, weights, rrf_k, k)
        items = [ResultItem(f.id, round(f.score, 6), f.ranks, src.fields(first[f.id]))
                 for f in fused]
    else:
        items = own[used[0] if used else next(iter(found))]
    channels = {c: (weights.get(c, 0.0) if len(used) > 1 else float(c in used or not used))
                for c in found}
    return ModalityResult(src.task, outcome.prompt, outcome.path, len(used) > 1, src.version,
                          items, None, channels, own)


def _use_rewrite(channels: tuple[str, ...], outcome) -> bool:
    # a raw fallback repeats the raw list; only the rewrite-only mode searches it (as the query)
    return "rewrite" in channels and (channels == ("rewrite",) or outcome.path != "raw")


def _similarity(encoder, query: str, prompt: str | None) -> tuple[np.ndarray | None, float | None]:
    """The query's embedding and the prompt's cosine to it (None where unknown)."""
    if encoder is None:
        return None, None
    vecs = encoder.encode([query] if prompt is None else [query, prompt])  # (1 or 2, D)
    sim = None if prompt is None else float(np.dot(vecs[0], vecs[1]))
    return vecs[:1], sim


def search_modality(src: ChannelSource, query: str, outcome, k: int, filters: dict | None,
                    channels: tuple[str, ...], weights: FusionWeights, encoder,
                    timings: dict[str, float]) -> ModalityResult:
    """Search one modality's ``channels`` and fuse them with weights set for this query.

    Args:
        src: the modality's index as channels (``SOURCES``).
        query: the checked query's text.
        outcome: the rewrite's ``PromptOutcome`` for this task.
        filters: the modality's filters (the index's own keys).
        channels: ``MODES[mode]``.
        encoder: the text encoder of the dense channel (also measures the rewrite's similarity
            to the query); None: no similarity floor.
        timings: gets ``<task>.encode`` and ``<task>.search`` (milliseconds).
    Raises:
        IndexStoreError: only the dense channel is asked for and the index has none.
    """
    want_dense = "dense" in channels and src.dense is not None
    if channels == ("dense",) and not want_dense:
        raise IndexStoreError(src.no_dense)
    rewrite = _use_rewrite(channels, outcome)
    compare = rewrite and "raw" in channels  # the rewrite's weight follows its similarity
    texts = ([query] if "raw" in channels else []) + ([outcome.prompt] if rewrite else [])
    t = time.perf_counter()
    encoded = src.encode(texts) if texts else None
    qvec, sim = _similarity(encoder if want_dense or compare else None, query,
                            outcome.prompt if compare else None)
    timings[f"{src.task}.encode"] = _ms(t)
    t = time.perf_counter()
    depth = max(k, MIN_DEPTH)
    found = iter(src.search(encoded, depth, filters) if texts else [])
    hits: dict[str, list] = {}
    if "raw" in channels:
        hits["raw"] = next(found)
    if want_dense:
        hits["dense"] = src.dense(query, qvec, depth, filters)
    if rewrite:
        hits["rewrite"] = next(found)
    timings[f"{src.task}.search"] = _ms(t)
    w = weights.for_query(src.coverage(query, hits.get("raw", [])),
                          sim if encoder is not None else 1.0)
    return _combine(src, outcome, hits, {c: w[c] for c in hits}, k, weights.k)


def search_templates(index, query: str, outcome, k: int, filters: dict | None,
                     channels: tuple[str, ...], weights: FusionWeights, encoder,
                     timings: dict[str, float]) -> ModalityResult:
    """``search_modality`` over a ``TemplateIndex`` (its dense channel when it has one)."""
    return search_modality(template_source(index), query, outcome, k, filters, channels,
                           weights, encoder, timings)


def search_images(index, clip, query: str, outcome, k: int, filters: dict | None,
                  channels: tuple[str, ...], weights: FusionWeights, encoder,
                  timings: dict[str, float]) -> ModalityResult:
    """``search_modality`` over an ``ImageIndex`` with its CLIP encoder ``clip``."""
    return search_modality(image_source(index, clip, encoder), query, outcome, k, filters,
                           channels, weights, encoder, timings)
