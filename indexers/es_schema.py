"""What the Elasticsearch template index looks like on the wire: settings, mapping, requests.

Pure pieces shared by the build and the search side of ``es_index``:

    EsSettings        where the cluster is, the alias, retries, bulk sizes (runtime settings)
    connect           an ``Elasticsearch`` client for those settings
    template_mapping  index settings + strict mapping, provenance under ``_meta.udrl``
    search_body       the ``_search`` body for one query

Search is ``multi_match`` (best_fields) over title^3, tags^2, category^1.5, description^1
(boosts from ``TemplateIndexConfig``) with the filters in a bool ``filter``; with a
``TextEncoder`` it is hybrid: the same request adds a top-level ``knn`` clause on ``embedding``
and Elasticsearch sums the two scores.

The ``_``-prefixed helpers (encoder checks, document and hit conversion) are shared with
``es_index`` only and are not part of the public API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from .catalog_templates import TemplateRecord
from .errors import ConfigError, EncoderMismatchError
from .templates import TemplateHit, TemplateIndexConfig, TextEncoder

__all__ = ["SCHEMA_VERSION", "EsSettings", "connect", "search_body", "template_mapping"]

SCHEMA_VERSION = 1  # of the mapping and of _meta.udrl; open refuses other versions
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
    # Keep the previous index after a successful swap (for rollback); False deletes it.
    keep_old: bool = True
    # kNN candidates per shard for hybrid search; >= k, <= 10000. More is slower but better.
    num_candidates: int = 100

    def __post_init__(self) -> None:
        if not _NAME.match(self.alias):
            raise ConfigError(
                f"alias {self.alias!r} is not a valid index name; use lowercase letters, "
                "digits, '-', '_' or '.', e.g. 'udrl-templates'"
            )
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ConfigError(f"max_failed_fraction={self.max_failed_fraction} is out of range 0-1")
        if self.bulk_chunk_size < 1 or self.num_candidates < 1 or self.max_retries < 0:
            raise ConfigError(
                "bulk_chunk_size and num_candidates must be >= 1 and max_retries >= 0; got "
                f"{self.bulk_chunk_size}, {self.num_candidates}, {self.max_retries}"
            )


def connect(settings: EsSettings) -> Elasticsearch:
    """An Elasticsearch client for ``settings`` (no request is made yet)."""
    hosts = [settings.hosts] if isinstance(settings.hosts, str) else list(settings.hosts)
    auth: dict[str, Any] = {}
    if settings.api_key is not None:
        auth["api_key"] = settings.api_key
    elif settings.basic_auth is not None:
        auth["basic_auth"] = tuple(settings.basic_auth)
    return Elasticsearch(
        hosts=hosts,
        request_timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        retry_on_status=(429, 502, 503, 504),
        retry_on_timeout=True,
        retry_backoff_base=settings.retry_backoff_s,
        retry_backoff_cap=settings.max_backoff_s,
        **auth,
    )


def template_mapping(meta: dict[str, Any], dims: int | None) -> dict[str, Any]:
    """Index settings + mappings for templates; ``dims`` adds the ``embedding`` vector field."""
    text = {"type": "text", "analyzer": "english"}
    exact = {"keyword": {"type": "keyword", "normalizer": "udrl_lowercase"}}
    props: dict[str, Any] = {
        "id": {"type": "keyword"},
        "title": dict(text),
        "description": dict(text),
        "tags": {**text, "fields": exact},  # tags.keyword: exact, case-insensitive filter
        "category": {**text, "fields": exact},
        "thumbnail": {"type": "keyword", "index": False},
    }
    if dims is not None:
        props["embedding"] = {
            "type": "dense_vector",
            "dims": dims,
            "index": True,
            "similarity": "cosine",
        }
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
    query_vector: np.ndarray | None = None,
    num_candidates: int = 100,
) -> dict[str, Any]:
    """The _search request body (pure; filters already normalized by ``normalize_filters``)."""
    fields = [f"{name}^{boost:g}" for name, boost in config.field_boosts().items()]
    filters: list[dict[str, Any]] = []
    if category is not None:
        filters.append({"term": {"category.keyword": category}})
    # One term clause per tag: every listed tag must be present (a single `terms` would be OR).
    filters.extend({"term": {"tags.keyword": t}} for t in tags)
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
        "_source": {"excludes": ["embedding"]},
    }
    if query_vector is not None:
        knn: dict[str, Any] = {
            "field": "embedding",
            "query_vector": [float(x) for x in query_vector],
            "k": k,
            "num_candidates": min(10_000, max(k, num_candidates)),
        }
        if filters:
            knn["filter"] = filters  # the top-level query's filter does not apply to knn
        body["knn"] = knn
    return body


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
    """The text a template's ``embedding`` is computed from."""
    return ". ".join(
        p for p in (rec.title, rec.category, ", ".join(rec.tags), rec.description) if p
    )


def _source(rec: TemplateRecord, vector: np.ndarray | None) -> dict[str, Any]:
    """The indexed document of one template (``embedding`` only when a vector is given)."""
    src = rec.model_dump(mode="json")
    if src["thumbnail"] is None:
        del src["thumbnail"]
    if vector is not None:
        src["embedding"] = vector.tolist()
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
