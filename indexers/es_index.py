"""Searching the Elasticsearch template index: ``open_es_index`` and ``EsTemplateIndex``.

Every search goes through the alias, so an open index follows a rebuild's alias swap with no
downtime; ``version`` and the build's ``_meta`` (boosts, encoder, fusion weights) are those of
the index the alias pointed at when it was opened. The modules behind it::

    es_schema   EsSettings, the mapping, the BM25 search body
    es_hybrid   hybrid search: BM25 and kNN fused by RRF (the rrf retriever from 8.16, else
                fused here)
    es_build    build_es_index: new versioned index, bulk load, atomic alias swap
    es_dense    the dense channel (nested row vectors, kNN; Elasticsearch >= 8.11) and the
                logged queries read back
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError

from .errors import EncoderMismatchError, IndexStoreError
from .es_build import _alias_targets, build_es_index
from .es_dense import dense_body, dense_hits, read_logged_queries
from .es_features import EsFeatures, read_features
from .es_hybrid import hybrid_search
from .es_schema import (
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    SOURCE_EXCLUDES,
    EsSettings,
    _describe,
    _encode,
    _hits,
    connect,
    search_body,
    template_mapping,
)
from .templates import (
    TemplateHit,
    TemplateIndex,
    TemplateIndexConfig,
    TextEncoder,
    check_query,
    normalize_filters,
)

__all__ = [
    "EsSettings",
    "EsTemplateIndex",
    "build_es_index",
    "connect",
    "live_es_version",
    "open_es_index",
    "search_body",
    "template_mapping",
]


class EsTemplateIndex(TemplateIndex):
    """Searches go through the alias; ``version`` is the index it pointed at when opened."""

    def __init__(
        self,
        es: Elasticsearch,
        settings: EsSettings,
        version: str,
        meta: dict[str, Any],
        config: TemplateIndexConfig,
        encoder: TextEncoder | None,
        owns_client: bool,
    ):
        self._es: Elasticsearch | None = es
        self.settings = settings
        self.meta = meta
        self.config = config
        self.encoder = encoder if meta.get("encoder") else None
        self.hybrid = True  # search fuses BM25 and kNN (open_es_index(hybrid=False): BM25 only)
        self.retrievers_refused = False  # the cluster refused the rrf retriever: fuse here
        self._features: EsFeatures | None = None
        self._version = version
        self._owns_client = owns_client

    @property
    def version(self) -> str:
        return self._version

    def _client(self) -> Elasticsearch:
        if self._es is None:
            raise IndexStoreError(
                f"template index {self.settings.alias!r} is closed; open it again"
            )
        return self._es

    @property
    def features(self) -> EsFeatures:
        """What the cluster can do (read once, on first use)."""
        if self._features is None:
            try:
                self._features = read_features(self._client())
            except (ApiError, TransportError) as e:
                raise IndexStoreError(f"cannot read the version of {self.settings.hosts}: "
                                      f"{e}") from e
        return self._features

    def use_retrievers(self) -> bool:
        """Hybrid search sends the rrf retriever (8.16+, not refused yet)."""
        return self.features.retrievers and not self.retrievers_refused

    def _hybrid_on(self) -> bool:
        return self.encoder is not None and self.hybrid

    def _bodies(self, queries: Sequence[str], k: int, filters: dict | None) -> list[dict[str, Any]]:
        for q in queries:
            check_query(q, k)
        category, tags = normalize_filters(filters)
        return [search_body(q, k, category, tags, self.config) for q in queries]

    def search(self, query: str, k: int = 10, filters: dict | None = None) -> list[TemplateHit]:
        if self._hybrid_on():
            return hybrid_search(self, [query], k, filters)[0]
        (body,) = self._bodies([query], k, filters)
        try:
            resp = self._client().search(index=self.settings.alias, body=body)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"search on {self.settings.alias!r} failed: {e}") from e
        return _hits(resp.body)

    def search_batch(
        self, queries: Sequence[str], k: int = 10, filters: dict | None = None
    ) -> list[list[TemplateHit]]:
        """One ``_msearch`` round trip (and one encoder call) for all queries."""
        if self._hybrid_on():
            return hybrid_search(self, list(queries), k, filters)
        return [_hits(r) for r in self._msearch(self._bodies(list(queries), k, filters), queries)]

    def _msearch(self, bodies: list[dict[str, Any]], queries: Sequence[str]) -> list[dict]:
        """The responses to ``bodies`` in one ``_msearch`` round trip ([] for no bodies)."""
        if not bodies:
            return []
        responses = self.msearch_raw(bodies)
        for i, r in enumerate(responses):
            if "error" in r:
                raise IndexStoreError(f"query {i} ({queries[i]!r}) failed: {r['error']}")
        return responses

    def msearch_raw(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every response of one ``_msearch`` round trip over the alias, errors included."""
        searches: list[dict[str, Any]] = []
        for b in bodies:
            searches.extend(({}, b))
        try:
            resp = self._client().msearch(index=self.settings.alias, searches=searches)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"msearch on {self.settings.alias!r} failed: {e}") from e
        return list(resp["responses"])

    # -- the dense channel and what the build recorded ------------------------------------------

    @property
    def has_dense(self) -> bool:
        """True when the index was built with an encoder (schema v2: nested row vectors)."""
        return bool(self.meta.get("dense"))

    @property
    def fusion_params(self) -> dict[str, Any] | None:
        return self.meta.get("fusion")

    def fetch(self, ids: Sequence[str]) -> dict[str, TemplateHit]:
        """The templates with these ids, one request (a ``terms`` query on ``id``)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        body = {"size": len(ids), "query": {"terms": {"id": ids}},
                "_source": {"excludes": list(SOURCE_EXCLUDES)}}
        try:
            resp = self._client().search(index=self.settings.alias, body=body)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"fetching ids from {self.settings.alias!r} failed: {e}") from e
        return {h.id: h for h in _hits(resp.body)}

    def documents(self, page: int = 1000) -> list[TemplateHit]:
        """Every template, ``page`` per request, in id order."""
        out: list[TemplateHit] = []
        body: dict[str, Any] = {"size": page, "query": {"match_all": {}}, "sort": [{"id": "asc"}],
                                "_source": {"excludes": list(SOURCE_EXCLUDES)}}
        try:
            while True:
                resp = self._client().search(index=self.settings.alias, body=body).body
                hits = resp["hits"]["hits"]
                out += _hits(resp)
                if len(hits) < page:
                    return out
                body["search_after"] = hits[-1]["sort"]
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"listing {self.settings.alias!r} failed: {e}") from e

    def logged_queries(self) -> set[str]:
        """The normalised logged queries of the index behind the alias (read from its
        ``queries`` fields, one request per 1000 templates that have any)."""
        try:
            return read_logged_queries(self._client(), self.settings.alias)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(
                f"reading the logged queries of {self.settings.alias!r} failed: {e}"
            ) from e

    def search_dense_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        filters: dict | None = None,
        vectors: Any = None,
    ) -> list[list[TemplateHit]]:
        """Top-k templates per query by their best row's cosine (kNN only, one ``_msearch``).

        Args:
            vectors: (Q, dims) query embeddings from the build's encoder; None encodes here.

        Returns:
            Per query, TemplateHits like ``search``'s, scored by cosine.

        Raises:
            IndexStoreError: the index has no dense channel or no encoder to embed with.
            EncoderMismatchError: ``vectors`` is not (len(queries), dims).
        """
        for q in queries:
            check_query(q, k)
        category, tags = normalize_filters(filters)
        if not self.has_dense:
            raise IndexStoreError(
                f"index {self.version!r} has no dense channel (built without an encoder, or "
                "before schema v2); rebuild it with an encoder"
            )
        dim = int(self.meta["dims"])
        if vectors is None:
            vecs = _encode(self._dense_encoder(), list(queries), dim) if queries else None
        else:
            vecs = np.asarray(vectors, dtype=np.float32)
        if vecs is not None and vecs.shape != (len(queries), dim):
            raise EncoderMismatchError(
                f"vectors have shape {vecs.shape}, expected ({len(queries)}, {dim}); encode "
                f"the queries with {self.meta.get('encoder')!r}"
            )
        n = self.settings.num_candidates
        bodies = [dense_body(vecs[i], k, category, tags, n) for i in range(len(queries))]
        return [dense_hits(r) for r in self._msearch(bodies, queries)]

    def _dense_encoder(self) -> TextEncoder:
        if self.encoder is not None:
            return self.encoder
        built = str(self.meta.get("encoder"))
        if not built.startswith("minilm:"):
            raise IndexStoreError(
                f"open {self.version!r} with its encoder {built!r} (or pass vectors) to search "
                "the dense channel"
            )
        from .dense import load_text_encoder  # sentence-transformers: load only when used

        encoder = load_text_encoder()
        if (encoder.name, encoder.dim) != (built, self.meta.get("dims")):
            raise EncoderMismatchError(
                f"{self.version!r} was built with {built!r}, the shipped encoder is "
                f"{encoder.name!r}; open it with its encoder"
            )
        return encoder

    def count(self) -> int:
        try:
            return int(self._client().count(index=self.settings.alias)["count"])
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"count on {self.settings.alias!r} failed: {e}") from e

    def close(self) -> None:
        if self._es is not None and self._owns_client:
            self._es.close()
        self._es = None


def live_es_version(es: Elasticsearch, alias: str) -> str | None:
    """The concrete index ``alias`` points at now (None when it does not exist): the version a
    fresh ``open_es_index`` would serve. One small request, cheap enough to poll.

    Raises:
        IndexStoreError: the cluster cannot be reached or refuses the request.
    """
    try:
        targets = _alias_targets(es, alias)
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot read alias {alias!r}: {e}") from e
    return targets[-1] if targets else None


def open_es_index(
    settings: EsSettings,
    encoder: TextEncoder | None = None,
    client: Elasticsearch | None = None,
    config: TemplateIndexConfig | None = None,
    hybrid: bool = True,
) -> EsTemplateIndex:
    """Open the index behind ``settings.alias``, checking it was built by ``encoder``.

    Args:
        encoder: must match the name and dims stored at build time; None searches BM25 only.
        config: override the saved boosts (query-time only); None uses the build's config.
        hybrid: ``search`` fuses BM25 and kNN by RRF (with an encoder; ``es_hybrid``); False
            keeps ``search`` BM25-only, for callers that fuse ``search_dense_batch``
            themselves.

    Raises:
        IndexStoreError: the alias does not exist or the cluster cannot be reached.
        EncoderMismatchError: the index was built with another encoder (or none).
    """
    es = client or connect(settings)
    try:
        index = _open(es, settings, encoder, config, owns_client=client is None)
        index.hybrid = hybrid
        return index
    except BaseException:
        if client is None:
            es.close()
        raise


def _open(
    es: Elasticsearch,
    settings: EsSettings,
    encoder: TextEncoder | None,
    config: TemplateIndexConfig | None,
    owns_client: bool,
) -> EsTemplateIndex:
    alias = settings.alias
    try:
        targets = _alias_targets(es, alias)
        if not targets:
            raise IndexStoreError(
                f"alias {alias!r} does not exist on {settings.hosts}; build the index first with "
                "build_template_index('elasticsearch', records, settings=...)"
            )
        version = targets[-1]
        meta = (
            es.indices.get_mapping(index=version)[version]["mappings"].get("_meta", {}).get("udrl")
        )
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot open alias {alias!r} on {settings.hosts}: {e}") from e
    if not meta or meta.get("schema_version") not in READABLE_SCHEMAS:
        raise IndexStoreError(
            f"index {version!r} has no udrl template metadata "
            f"(schema v{SCHEMA_VERSION}); rebuild it"
        )
    name, dim = _describe(encoder)
    if encoder is not None and (meta.get("encoder"), meta.get("dims")) != (name, dim):
        built = (
            f"{meta.get('encoder')!r} (dims {meta.get('dims')})"
            if meta.get("encoder")
            else "no encoder"
        )
        raise EncoderMismatchError(
            f"index {version!r} was built with {built}, not {name!r} (dims {dim}); open it with "
            "the same encoder, with encoder=None for BM25 only, or rebuild it"
        )
    config = config or TemplateIndexConfig(**meta.get("config", {}))
    return EsTemplateIndex(es, settings, version, meta, config, encoder, owns_client)
