"""What the Elasticsearch template index looks like on the wire: settings, mapping, requests.

Pure pieces shared by the build and the search side of ``es_index``:

    EsSettings        where the cluster is, the alias, retries, bulk sizes (runtime settings)
    connect           an ``Elasticsearch`` client for those settings
    template_mapping  index settings + strict mapping, provenance under ``_meta.udrl``
    search_body       the BM25 ``_search`` body for one query

Fields (one document per template; ``dynamic: strict``, so a field must be declared here)::

    id                 keyword
    title, description text (english)            | BM25, boosts from TemplateIndexConfig
    tags, category     text (english) + .keyword  | .keyword: exact, lowercased filters
    queries            text (english)            / logged queries that clicked the template
    thumbnail          keyword, not indexed
    embedding          dense_vector (with an encoder): the template's own text
    rows.vector        nested dense_vector (with an encoder): the dense channel, see es_dense

Search is ``multi_match`` (best_fields) over title^3, tags^2, category^1.5, description^1,
queries^2 (boosts from ``TemplateIndexConfig``) with the filters in a bool ``filter``; with a
``TextEncoder`` it is hybrid: BM25 and kNN fused by reciprocal rank fusion (``es_hybrid``).

The ``_``-prefixed helpers (encoder checks, document and hit conversion) are shared with
``es_index`` only and are not part of the public API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from .catalog_templates import TemplateRecord
from .errors import ConfigError, EncoderMismatchError
from .templates import TemplateHit, TemplateIndexConfig, TextEncoder

__all__ = [
    "READABLE_SCHEMAS",
    "SCHEMA_VERSION",
    "EsSettings",
    "connect",
    "search_body",
    "template_mapping",
]

# Of the mapping and of _meta.udrl. 2 added ``queries`` and the nested ``rows`` vectors; a v1
# index still opens (BM25 and hybrid search; no logged queries, no dense channel).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
# Never sent back with hits: vectors are big, and TemplateHit has no place for the queries.
SOURCE_EXCLUDES = ("embedding", "rows", "queries")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,200}$")


@dataclass(frozen=True)
class EsSettings:
    """Where the cluster is and how to talk to it (runtime settings, not scoring)."""

    # Cluster URL(s), e.g. "https://es.internal:9200".
    hosts: str | tuple[str, ...] = "http://localhost:9200"
    # The name searches use; builds create "<alias>-v<timestamp>" indices behind it.
    alias: str = "udrl-templates"
    # API key (encoded string or (id, key)); None for an open cluster.
    api_key: str | tuple[str, str] | None = None
    # (user, password); ignored when api_key is set.
    basic_auth: tuple[str, str] | None = None
    # PEM file of the CA that signed the cluster's certificate (https only; e.g. the http_ca.crt
    # an Elasticsearch 8/9 node writes); None: the system's CAs.
    ca_certs: str | None = None
    # Verify the cluster's TLS certificate (https). False is for throwaway test clusters only.
    verify_certs: bool = True
    # Seconds per HTTP request; bulk loads of big chunks need more than searches. 1-120.
    request_timeout: float = 10.0
    # Transport retries on 429/502/503/504 and connection errors. 0-10.
    max_retries: int = 3
    # Seconds before the first retry, doubled each time up to max_backoff_s. 0.01-5.
    retry_backoff_s: float = 0.5
    # Ceiling on one retry wait, seconds.
    max_backoff_s: float = 30.0
    # Documents per _bulk request. 100-5000.
    bulk_chunk_size: int = 500
    # How often a document rejected with 429 (queue full) is re-sent before it counts as failed.
    bulk_max_retries: int = 3
    # Abort the build (alias untouched) when more than this fraction of records fail. 0-0.1.
    max_failed_fraction: float = 0.05
    # True keeps every older index after a swap; False deletes those older than the index that
    # was live before (that one always stays: it is the last good version, for rollback).
    keep_old: bool = True
    # kNN candidates per shard (dense and hybrid search, and the hybrid search's RRF window);
    # >= k, <= 10000. More is slower but better.
    num_candidates: int = 100

    def __post_init__(self) -> None:
        if not _NAME.match(self.alias):
            raise ConfigError(
                f"alias {self.alias!r} is not a valid index name; use lowercase letters, "
                "digits, '-', '_' or '.', e.g. 'udrl-templates'"
            )
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ConfigError(f"max_failed_fraction={self.max_failed_fraction} is out of range 0-1")
        if self.ca_certs is not None:
            hosts = [self.hosts] if isinstance(self.hosts, str) else list(self.hosts)
            plain = [h for h in hosts if not h.lower().startswith("https://")]
            if plain:
                raise ConfigError(f"a CA file is set but {plain[0]!r} is not https; use an "
                                  "https:// URL or drop the CA file")
            if not Path(self.ca_certs).is_file():
                raise ConfigError(f"CA file {self.ca_certs} does not exist; give the PEM file "
                                  "of the CA that signed the cluster's certificate")
        if self.bulk_chunk_size < 1 or self.num_candidates < 1 or self.max_retries < 0:
            raise ConfigError(
                "bulk_chunk_size and num_candidates must be >= 1 and max_retries >= 0; got "
                f"{self.bulk_chunk_size}, {self.num_candidates}, {self.max_retries}"
            )


def connect(settings: EsSettings) -> Elasticsearch:
    """An Elasticsearch client for ``settings`` (no request is made yet)."""
    hosts = [settings.hosts] if isinstance(settings.hosts, str) else list(settings.hosts)
    opts: dict[str, Any] = {}  # auth and TLS
    if settings.api_key is not None:
        opts["api_key"] = settings.api_key
    elif settings.basic_auth is not None:
        opts["basic_auth"] = tuple(settings.basic_auth)
    if settings.ca_certs is not None:
        opts["ca_certs"] = settings.ca_certs
    if not settings.verify_certs:
        opts.update(verify_certs=False, ssl_show_warn=False)  # warned once where it is set
    return Elasticsearch(
        hosts=hosts,
        request_timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        retry_on_status=(429, 502, 503, 504),
        retry_on_timeout=True,
        retry_backoff_base=settings.retry_backoff_s,
        retry_backoff_cap=settings.max_backoff_s,
        **opts,
    )


def template_mapping(meta: dict[str, Any], dims: int | None) -> dict[str, Any]:
    """Index settings + mappings for templates; ``dims`` adds the vector fields (``embedding``
    and the nested ``rows.vector``, which needs Elasticsearch >= 8.11)."""
    text = {"type": "text", "analyzer": "english"}
    exact = {"keyword": {"type": "keyword", "normalizer": "udrl_lowercase"}}
    props: dict[str, Any] = {
        "id": {"type": "keyword"},
        "title": dict(text),
        "description": dict(text),
        "tags": {**text, "fields": exact},  # tags.keyword: exact, case-insensitive filter
        "category": {**text, "fields": exact},
        "queries": dict(text),  # one value per logged query
        "thumbnail": {"type": "keyword", "index": False},
    }
    if dims is not None:
        vector = {"type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine"}
        props["embedding"] = dict(vector)
        # one nested document per row (own text, each logged query); kNN scores a template by
        # its best row
        props["rows"] = {"type": "nested", "properties": {"vector": dict(vector)}}
    return {
        "settings": {
            "analysis": {
                "normalizer": {"udrl_lowercase": {"type": "custom", "filter": ["lowercase"]}}
            }
        },
        "mappings": {"dynamic": "strict", "_meta": {"udrl": meta}, "properties": props},
    }


def search_body(
    query: str,
    k: int,
    category: str | None,
    tags: Sequence[str],
    config: TemplateIndexConfig,
) -> dict[str, Any]:
    """The BM25 _search request body (pure; filters already normalized by
    ``normalize_filters``)."""
    fields = [f"{name}^{boost:g}" for name, boost in config.field_boosts().items()]
    filters = filter_clauses(category, tags)
    body: dict[str, Any] = {
        "size": k,
        "query": {
            "bool": {
                "must": [
                    {"multi_match": {"query": query, "type": "best_fields", "fields": fields}}
                ],
                "filter": filters,
            }
        },
        "_source": {"excludes": list(SOURCE_EXCLUDES)},
    }
    return body


def filter_clauses(category: str | None, tags: Sequence[str]) -> list[dict[str, Any]]:
    """The exact filters as ``term`` clauses (values already normalized)."""
    filters: list[dict[str, Any]] = []
    if category is not None:
        filters.append({"term": {"category.keyword": category}})
    # One term clause per tag: every listed tag must be present (a single `terms` would be OR).
    filters.extend({"term": {"tags.keyword": t}} for t in tags)
    return filters


def _describe(encoder: TextEncoder | None) -> tuple[str | None, int | None]:
    """(name, dim) of a text encoder, (None, None) without one; ConfigError when malformed."""
    if encoder is None:
        return None, None
    name, dim = getattr(encoder, "name", None), getattr(encoder, "dim", None)
    if not isinstance(name, str) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(
            f"encoder {encoder!r} needs a str `name` and an int `dim` >= 1 (see TextEncoder)"
        )
    return name, dim


def _encode(encoder: TextEncoder, texts: list[str], dim: int) -> np.ndarray:
    """(len(texts), dim) float32 from ``encoder``, checking the shape it promised."""
    vecs = np.asarray(encoder.encode(texts), dtype=np.float32)
    if vecs.shape != (len(texts), dim):
        raise EncoderMismatchError(
            f"encoder {encoder.name!r} returned shape {vecs.shape}, expected ({len(texts)}, {dim})"
        )
    return vecs


def _embed_text(rec: TemplateRecord) -> str:
    """The text a template's own vector is computed from: title, category, tags, start of the
    description. Kept equal to ``tantivy_index.dense_text`` (a test checks) so that both
    backends embed a template alike; not imported from there, which would load tantivy."""
    parts = [rec.title, rec.category, ", ".join(rec.tags), " ".join(rec.description.split()[:30])]
    return ". ".join(p for p in parts if p)


def _source(
    rec: TemplateRecord,
    vector: np.ndarray | None,
    queries: Sequence[str] = (),
    query_vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """The indexed document of one template.

    Args:
        vector: (D,) its own text's embedding: ``embedding`` and the first ``rows`` entry.
        queries: the logged queries that clicked it (``queries``; omitted when none).
        query_vectors: (len(queries), D) their embeddings, one ``rows`` entry each.
    """
    src = rec.model_dump(mode="json")
    if src["thumbnail"] is None:
        del src["thumbnail"]
    if queries:
        src["queries"] = list(queries)
    if vector is not None:
        src["embedding"] = vector.tolist()
        rows = [vector] + ([] if query_vectors is None else list(query_vectors))
        src["rows"] = [{"vector": v.tolist()} for v in rows]
    return src


def _hits(resp: dict[str, Any]) -> list[TemplateHit]:
    """TemplateHits from one _search response, in response order."""
    out = []
    for h in resp["hits"]["hits"]:
        src = h.get("_source", {})
        out.append(
            TemplateHit(
                id=str(h["_id"]),
                score=float(h.get("_score") or 0.0),
                title=src.get("title", ""),
                category=src.get("category", ""),
                tags=tuple(src.get("tags", ())),
                fields={
                    "description": src.get("description", ""),
                    "thumbnail": src.get("thumbnail"),
                },
            )
        )
    return out
