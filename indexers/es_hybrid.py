"""Hybrid template search on Elasticsearch: BM25 and kNN on the MiniLM embeddings, fused by RRF.

``EsTemplateIndex.search`` with an encoder (``open_es_index(hybrid=True)``, the default) ranks
by reciprocal rank fusion of two lists of ``window`` hits each::

    bm25   multi_match over the boosted fields (es_schema.search_body), filters in a bool filter
    knn    the dense channel's rows (``rows.vector``, each template scored by its best row) on
           a schema-v2 index, else the template's own ``embedding``; the filters as pre-filters

    score(d) = sum over the lists of 1 / (RANK_CONSTANT + rank(d)),  ranks from 1

How, decided from the cluster's version (``es_features``):

    8.16+      one ``rrf`` retriever per query (``standard`` + ``knn`` children) in one
               ``_msearch``: the cluster fuses
    older      both lists in one ``_msearch`` (2 searches per query), fused here with the same
               formula; also when the cluster refuses the retriever (the RRF retriever needs an
               Enterprise licence on self-managed clusters), which is logged once

``window`` is ``max(k, EsSettings.num_candidates)`` (the retriever's ``rank_window_size``).
Ties are broken by the best rank reached, then by id. Hits carry the RRF score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import IndexStoreError
from .es_dense import DENSE_FIELD, MAX_KNN
from .es_schema import SOURCE_EXCLUDES, _encode, _hits, filter_clauses, search_body
from .templates import TemplateHit, check_query, normalize_filters

__all__ = ["RANK_CONSTANT", "fuse_rrf", "hybrid_search", "rrf_body"]

log = logging.getLogger(__name__)

RANK_CONSTANT = 60  # Elasticsearch's default rank_constant, and the RRF paper's k


def _knn(vector: np.ndarray, field: str, window: int, num_candidates: int,
         filters: list[dict[str, Any]]) -> dict[str, Any]:
    knn: dict[str, Any] = {"field": field, "query_vector": [float(x) for x in vector],
                           "k": window,
                           "num_candidates": min(MAX_KNN, max(num_candidates, window))}
    if filters:
        knn["filter"] = filters
    return knn


def rrf_body(query: str, vector: np.ndarray, k: int, category: str | None,
             tags: Sequence[str], config, field: str, window: int,
             num_candidates: int) -> dict[str, Any]:
    """One ``_search`` body: an ``rrf`` retriever over a BM25 and a kNN retriever (pure)."""
    bm25 = search_body(query, window, category, tags, config)["query"]
    knn = _knn(vector, field, window, num_candidates, filter_clauses(category, tags))
    return {
        "size": k,
        "retriever": {"rrf": {"retrievers": [{"standard": {"query": bm25}}, {"knn": knn}],
                              "rank_constant": RANK_CONSTANT, "rank_window_size": window}},
        "_source": {"excludes": list(SOURCE_EXCLUDES)},
    }


def fuse_rrf(lists: Sequence[Sequence[TemplateHit]], k: int,
             rank_constant: int = RANK_CONSTANT) -> list[TemplateHit]:
    """RRF of ranked hit lists (pure): top ``k``, each hit with its fused score."""
    score: dict[str, float] = {}
    best: dict[str, int] = {}
    hit: dict[str, TemplateHit] = {}
    for hits in lists:
        for rank, h in enumerate(hits, start=1):
            score[h.id] = score.get(h.id, 0.0) + 1.0 / (rank_constant + rank)
            best[h.id] = min(best.get(h.id, rank), rank)
            hit.setdefault(h.id, h)
    order = sorted(score, key=lambda i: (-score[i], best[i], i))
    return [replace(hit[i], score=score[i]) for i in order[:k]]


def _is_refusal(error: dict[str, Any], status: int | None) -> bool:
    """Whether a failed retriever search means "this cluster will not run it" (licence,
    unknown syntax) rather than a broken query."""
    text = str(error).lower()
    return status in (400, 403) and ("license" in text or "retriever" in text
                                      or "unknown key" in text)


def hybrid_search(index, queries: Sequence[str], k: int,
                  filters: dict | None) -> list[list[TemplateHit]]:
    """Hybrid results of ``index`` (an ``EsTemplateIndex`` with an encoder) for ``queries``.

    Raises:
        ConfigError: an empty query, k < 1 or a bad filter (nothing is sent).
        IndexStoreError: the cluster refused or cannot be reached.
    """
    for q in queries:
        check_query(q, k)
    category, tags = normalize_filters(filters)
    if not queries:
        return []
    vecs = _encode(index.encoder, list(queries), int(index.meta["dims"]))  # (Q, D)
    field = DENSE_FIELD if index.has_dense else "embedding"
    n_cand = index.settings.num_candidates
    window = min(MAX_KNN, max(k, n_cand))
    if index.use_retrievers():
        bodies = [rrf_body(q, vecs[i], k, category, tags, index.config, field, window, n_cand)
                  for i, q in enumerate(queries)]
        responses = index.msearch_raw(bodies)
        refused = [r for r in responses if "error" in r]
        if not refused:
            return [_hits(r) for r in responses]
        if not _is_refusal(refused[0]["error"], refused[0].get("status")):
            raise IndexStoreError(f"hybrid search on {index.settings.alias!r} failed: "
                                  f"{refused[0]['error']}")
        log.warning("the cluster refused the rrf retriever (%s); fusing BM25 and kNN here "
                    "from now on", refused[0]["error"].get("reason", refused[0]["error"]))
        index.retrievers_refused = True
    filters_ = filter_clauses(category, tags)
    bodies = []
    for i, q in enumerate(queries):
        bodies.append(search_body(q, window, category, tags, index.config))
        bodies.append({"size": window, "knn": _knn(vecs[i], field, window, n_cand, filters_),
                       "_source": {"excludes": list(SOURCE_EXCLUDES)}})
    responses = index.msearch_raw(bodies)
    for i, r in enumerate(responses):
        if "error" in r:
            raise IndexStoreError(f"query {i // 2} ({queries[i // 2]!r}) failed: {r['error']}")
    return [fuse_rrf([_hits(responses[2 * i]), _hits(responses[2 * i + 1])], k)
            for i in range(len(queries))]


