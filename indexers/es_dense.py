"""The dense channel and the query log on Elasticsearch: documents with their row vectors,
the kNN request, the logged queries read back.

With a ``TextEncoder`` every template document carries the rows of the tantivy dense channel
(``indexers.dense``) in a nested field, one vector each::

    rows[0].vector   the template's own text (es_schema._embed_text)
    rows[1].vector   a logged query that clicked it (``expansions``)
    ...

``dense_body`` is a top-level ``knn`` on ``rows.vector``: nested kNN scores a template by its
nearest row (the same max-sim as the FAISS channel) and returns each template once. Nested
dense_vector kNN needs Elasticsearch >= 8.11 (``check_nested_knn`` refuses older clusters
before a build creates anything); our filters are on top-level fields (category and tags
keywords), which nested kNN applies as pre-filters from 8.11 on (filters on nested fields would
need 9.2; none are used). ``index.mapping.nested_objects.limit`` (10000 by default) caps the rows
per template; ``QueryLog.expansions`` keeps 50 queries per item.

The logged queries are stored in each template's ``queries`` field and nowhere else: the index
``_meta`` lives in the cluster state that every node holds, so it carries only their count, and
``read_logged_queries`` pages through the documents that have any (``search_after`` on ``id``)
when the offline evaluation asks for them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch

from .catalog_templates import TemplateRecord
from .errors import ConfigError, IndexStoreError
from .es_schema import SOURCE_EXCLUDES, _embed_text, _encode, _hits, _source, filter_clauses
from .query_log import normalize_query
from .templates import TemplateHit, TextEncoder

__all__ = [
    "DENSE_FIELD",
    "MIN_NESTED_KNN",
    "check_nested_knn",
    "dense_body",
    "dense_hits",
    "documents",
    "read_logged_queries",
]

log = logging.getLogger(__name__)

DENSE_FIELD = "rows.vector"
MIN_NESTED_KNN = (8, 11)  # first Elasticsearch release with kNN over nested dense_vectors
MAX_KNN = 10_000  # Elasticsearch's ceiling on num_candidates (and so on k)
_ENCODE_BATCH = 256  # templates per encoder call while loading (their queries ride along)
_PAGE = 1000  # documents per request when reading the logged queries back


def check_nested_knn(es: Elasticsearch) -> None:
    """Raise IndexStoreError when the cluster is older than ``MIN_NESTED_KNN``.

    A key that may not read the cluster's version (403) skips the check: an older cluster
    then refuses the mapping itself, less clearly.
    """
    try:
        number = str(es.info()["version"]["number"])
    except ApiError as e:
        if e.meta.status not in (401, 403):
            raise
        log.warning(
            "cannot read the cluster version (%s); the dense channel needs Elasticsearch >= 8.11",
            e.meta.status,
        )
        return
    found = tuple(int(x) for x in re.findall(r"\d+", number)[:2])
    if found < MIN_NESTED_KNN:
        want = ".".join(map(str, MIN_NESTED_KNN))
        raise IndexStoreError(
            f"the cluster runs Elasticsearch {number}; the dense channel (one vector per "
            f"logged query, nested dense_vector kNN) needs {want} or later: upgrade it, or "
            "build without an encoder for BM25 only"
        )


def documents(
    records: Sequence[TemplateRecord],
    index: str,
    encoder: TextEncoder | None,
    dim: int | None,
    expansions: Mapping[str, Sequence[str]],
) -> Iterator[dict[str, Any]]:
    """Bulk ``index`` actions, one per record, encoding a chunk of records at a time."""
    for start in range(0, len(records), _ENCODE_BATCH):
        chunk = records[start : start + _ENCODE_BATCH]
        queries = [list(expansions.get(r.id, ())) for r in chunk]
        vecs = None
        if encoder is not None:
            texts = [_embed_text(r) for r in chunk] + [q for qs in queries for q in qs]
            vecs = _encode(encoder, texts, dim)  # (B + queries in the chunk, D)
        at = len(chunk)  # the queries' vectors follow the records' own
        for i, rec in enumerate(chunk):
            own = query_vecs = None
            if vecs is not None:
                own, query_vecs = vecs[i], vecs[at : at + len(queries[i])]
                at += len(queries[i])
            src = _source(rec, own, queries[i], query_vecs)
            yield {"_op_type": "index", "_index": index, "_id": rec.id, "_source": src}


def dense_body(
    vector: np.ndarray,
    k: int,
    category: str | None,
    tags: Sequence[str],
    num_candidates: int = 100,
) -> dict[str, Any]:
    """The kNN-only ``_search`` body for one (D,) query vector (pure; filters normalized).

    ``num_candidates`` per shard is ``max(num_candidates, 2k)``, at most 10000.
    """
    if k > MAX_KNN:
        raise ConfigError(f"k={k} is out of range for Elasticsearch kNN; pass k <= {MAX_KNN}")
    knn: dict[str, Any] = {
        "field": DENSE_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": min(MAX_KNN, max(num_candidates, 2 * k)),
    }
    filters = filter_clauses(category, tags)
    if filters:
        knn["filter"] = filters  # pre-filters: k hits that pass them, not k hits then filtered
    return {"size": k, "knn": knn, "_source": {"excludes": list(SOURCE_EXCLUDES)}}


def dense_hits(resp: dict[str, Any]) -> list[TemplateHit]:
    """TemplateHits of a kNN response, scored by cosine like the tantivy dense channel.

    Elasticsearch reports ``(1 + cosine) / 2`` for the ``cosine`` similarity.
    """
    return [replace(h, score=2.0 * h.score - 1.0) for h in _hits(resp)]


def read_logged_queries(es: Elasticsearch, index: str, page: int = _PAGE) -> set[str]:
    """The normalised logged queries stored in ``index``'s ``queries`` fields.

    One request per ``page`` documents that have logged queries; ``id`` is a keyword with doc
    values, so it sorts (``_id`` does not by default since 8.0).
    """
    out: set[str] = set()
    body: dict[str, Any] = {
        "size": page,
        "query": {"exists": {"field": "queries"}},
        "_source": ["queries"],
        "sort": [{"id": "asc"}],
    }
    while True:
        hits = es.search(index=index, body=body)["hits"]["hits"]
        for h in hits:
            out.update(normalize_query(q) for q in h.get("_source", {}).get("queries", ()))
        if len(hits) < page:
            return out
        body["search_after"] = hits[-1]["sort"]
