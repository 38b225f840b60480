"""Ground queries in the catalogue: what the catalogue teacher writes from, and what the
retrieval return scores a prompt against.

:class:`IndexGrounder` implements ``rewriters.grounding.Grounder`` over the live indexes:

* templates — the items clicked for the query in the log (``source="click"``), then the
  neighbours of the raw and dense channels fused as the pipeline fuses them; the dense channel
  already ranks an item high when a *similar logged query* clicked it, since its logged queries
  are rows of the item (``indexers.dense``);
* images — the items clicked for the query, then the nearest images by MiniLM similarity of
  the query to each image's title, tags and caption (the image index's metadata), so grounding
  does not depend on the CLIP weights.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewriters.grounding import GroundItem

from .fusion import FusionWeights, fuse_channels, term_coverage

__all__ = ["IndexGrounder", "ServingContext", "context_text", "image_text", "training_contexts"]

log = logging.getLogger(__name__)

_DEPTH = 30  # neighbours read from each channel


def image_text(meta: dict[str, Any]) -> str:
    """The text of an image record that grounding embeds: title, tags, caption."""
    tags = meta.get("tags") or []
    parts = [str(meta.get("title") or ""), ", ".join(map(str, tags)),
             str(meta.get("caption") or meta.get("description") or "")]
    return ". ".join(p for p in parts if p)


def _hit_item(h, weight: float, source: str) -> GroundItem:
    return GroundItem(id=h.id, title=h.title or h.id, tags=tuple(h.tags), category=h.category,
                      description=str(h.fields.get("description") or ""), weight=weight,
                      source=source)


class IndexGrounder:
    """A ``Grounder`` over the template index (and the image index's metadata).

    Args:
        template_index: a ``TemplateIndex`` (dense channel used when it has one); may be None.
        qlog: the training query log (``indexers.query_log.QueryLog``); None: no clicks.
        weights: how the raw and dense neighbours are fused (the index's fitted weights).
        image_index: an ``ImageIndex`` whose metadata grounds image prompts; may be None.
        encoder: the sentence encoder (dense channel, image metadata); None: BM25 only.
    """

    def __init__(self, template_index=None, qlog=None, weights: FusionWeights | None = None,
                 image_index=None, encoder=None):
        self.template_index, self.qlog, self.encoder = template_index, qlog, encoder
        self.weights = weights or FusionWeights()
        self._images: tuple[list[str], list[dict], np.ndarray] | None = None
        if image_index is not None and encoder is not None and len(image_index.ids):
            metas = [dict(m) for m in image_index.metadata]
            vecs = encoder.encode([image_text(m) or i for i, m in zip(image_index.ids, metas)])
            self._images = (list(image_index.ids), metas, np.asarray(vecs, dtype=np.float32))

    def ground(self, query: str, task: str, k: int = 20) -> list[GroundItem]:
        """Up to ``k`` items grounding ``query`` for ``task``, strongest first."""
        if task == "image" and self._images is not None:
            return self._ground_images(query, k)
        if self.template_index is None:
            return []
        return self._ground_templates(query, k)

    def _clicks(self, query: str, known: set[str] | None = None) -> dict[str, float]:
        clicked = self.qlog.clicked(query) if self.qlog is not None else {}
        return {i: 1.0 + math.log1p(n) for i, n in clicked.items()
                if known is None or i in known}

    def _ground_templates(self, query: str, k: int) -> list[GroundItem]:
        index = self.template_index
        clicks = self._clicks(query)
        raw = index.search(query, _DEPTH) if query.strip() else []
        lists = {"raw": [h.id for h in raw]}
        hits = {h.id: h for h in raw}
        if index.has_dense:  # an item unrelated to the query (cosine <= 0) grounds nothing
            dense = [h for h in index.search_dense_batch([query], _DEPTH)[0] if h.score > 0]
            lists["dense"] = [h.id for h in dense]
            hits.update({h.id: h for h in dense})
        cover = term_coverage(query, [" ".join([h.title, h.category, *h.tags]) for h in raw[:3]])
        fused = fuse_channels(lists, self.weights.for_query(cover), self.weights.k, k)
        if not fused and lists["raw"]:
            fused = fuse_channels({"raw": lists["raw"]}, {"raw": 1.0}, self.weights.k, k)
        missing = [i for i in clicks if i not in hits]
        if missing and hasattr(index, "fetch"):
            hits.update(index.fetch(missing))
        out = [_hit_item(hits[i], w, "click") for i, w in clicks.items() if i in hits]
        seen = {g.id for g in out}
        for rank, f in enumerate(fused, start=1):
            if f.id not in seen:
                source = "neighbour" if "raw" in f.ranks else "similar-query"
                out.append(_hit_item(hits[f.id], 1.0 / (1.0 + 0.25 * rank), source))
        return out[:k]

    def _ground_images(self, query: str, k: int) -> list[GroundItem]:
        ids, metas, vecs = self._images
        clicks = self._clicks(query, set(ids))
        sims = vecs @ self.encoder.encode([query])[0]  # (N,)
        order = np.argsort(-sims, kind="stable")[:k]
        pos = {i: n for n, i in enumerate(ids)}

        def item(n: int, w: float, source: str) -> GroundItem:
            m = metas[n]
            return GroundItem(id=ids[n], title=str(m.get("title") or ids[n]),
                              tags=tuple(map(str, m.get("tags") or ())),
                              description=str(m.get("caption") or m.get("description") or ""),
                              weight=w, source=source)

        out = [item(pos[i], w, "click") for i, w in clicks.items()]
        seen = set(clicks)
        for n in order:
            if ids[n] not in seen and sims[n] > 0:
                out.append(item(int(n), float(sims[n]), "neighbour"))
        return out[:k]

    def targets(self, query: str, task: str = "template", k: int = 10) -> dict[str, float]:
        """What a prompt for ``query`` should retrieve: its clicked items where the log has
        them, else its top-``k`` grounding items (gain 1 each)."""
        clicks = self._clicks(query)
        if clicks:
            return {i: 1.0 for i in clicks}
        return {g.id: 1.0 for g in self.ground(query, task, k)}

    def search_prompts(self, prompts: Sequence[str], k: int = 10) -> list[list[str]]:
        """Template ids each prompt retrieves through BM25, best first (the rewrite channel)."""
        if self.template_index is None:
            return [[] for _ in prompts]
        return [[h.id for h in hits] for hits in self.template_index.search_batch(
            list(prompts), k)]


# -- the rewriter's input context ----------------------------------------------------------------

def context_text(titles: Sequence[str], m: int) -> str:
    """The context a model trained with context reads after ``<|ctx|>``: ``m`` titles."""
    return "; ".join(" ".join(t.split()) for t in titles[:m] if t and t.strip())


class ServingContext:
    """query -> the titles of the dense channel's top ``m`` templates (thread-safe reads)."""

    def __init__(self, index, m: int):
        self.index, self.m = index, m

    def __call__(self, query: str) -> str:
        hits = self.index.search_dense_batch([query], self.m)[0]
        return context_text([h.title for h in hits], self.m)


def training_contexts(index, qlog, encoder, queries: Sequence[str], m: int, folds: int = 5,
                      seed: int = 0) -> dict[str, str]:
    """Contexts for training queries that never see the query's own clicks.

    The queries are split into ``folds``; each fold is searched in a dense index built from
    the catalogue and the log *without* that fold's queries, as an unseen query would be at
    serving time (the served dense channel holds every logged query, so a training query
    would otherwise find its own clicked items through its own log rows).

    Returns:
        query -> context text (``context_text`` of the top ``m`` titles).
    """
    from types import SimpleNamespace

    from indexers.dense import DenseIndex
    from indexers.query_log import QueryLog, normalize_query
    from indexers.tantivy_index import dense_text

    docs = index.documents()
    if not docs:
        return {}
    titles = {d.id: d.title for d in docs}
    texts = {d.id: dense_text(SimpleNamespace(
        title=d.title, category=d.category, tags=d.tags,
        description=str(d.fields.get("description") or ""))) for d in docs}
    qlog = qlog or QueryLog()
    order = sorted(dict.fromkeys(queries),
                   key=lambda q: (zlib.crc32(f"{seed}|{normalize_query(q)}".encode()), q))
    out: dict[str, str] = {}
    for f in range(folds):
        part = order[f::folds]
        if not part:
            continue
        dense = DenseIndex.build(texts, qlog.without(part).expansions(titles), encoder)
        for q, found in zip(part, dense.search(encoder.encode(list(part)), m)):
            out[q] = context_text([titles[i] for i, _ in found], m)
    return out
