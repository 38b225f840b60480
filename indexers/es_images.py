"""The image index on Elasticsearch: CLIP vectors in a ``dense_vector`` field behind an alias.

Encoding stays local (``image_build``); only storage and search move to the cluster. One
document per image (``dynamic: strict``)::

    id        keyword       the catalogue id (also the document _id)
    vector    dense_vector  dims = the CLIP width, similarity dot_product (the vectors are
                            L2-normalised, so it equals cosine and skips a normalisation per
                            comparison), index_options int8_hnsw (default), bbq_hnsw or hnsw,
                            with m and ef_construction
    metadata  flattened     the image's metadata as the FAISS index keeps it (path, title,
                            tags, license, meta, or whatever a caller built with): every leaf
                            value a keyword, any depth

A hit returns ``metadata`` as indexed (``_source``, the vector left out), so it has the FAISS
backend's shape: ``image_search.Hit(id, score, metadata)`` with ``score`` the cosine.

Filters (``images.matches_filters``) become kNN ``filter`` clauses, applied while searching
the graph (pre-filtering: k hits that pass them, not k hits then filtered): ``{key: value}``
is a ``term`` on ``metadata.<key>`` (dotted keys reach into nested metadata, and a list field
matches when it holds the value); a list of values is one ``term`` each (all must be present);
a key no image has matches nothing, as a missing field does in FAISS. ``flattened`` keeps
leaf values as keywords, so ``{"meta.year": 2020}`` also matches a stored ``"2020"`` (FAISS
compares types too), and strings over 8191 characters are kept but not filterable.

Options the cluster's version allows (``es_features``): ``bbq_hnsw`` needs 8.16 and at least
64 dimensions; ``rescore_vector.oversample`` (re-rank ``oversample x k`` quantized candidates
with the float vectors) is sent from 8.18 on and otherwise left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from elasticsearch import ApiError, Elasticsearch, TransportError

from .errors import ConfigError, EncoderMismatchError, IndexStoreError
from .es_build import _alias_targets, _udrl_meta
from .es_features import EsFeatures, read_features
from .es_schema import EsSettings, connect
from .image_search import Hit

__all__ = [
    "ES_INDEX_TYPES",
    "SCHEMA",
    "EsImageConfig",
    "EsImageIndex",
    "image_filter_clauses",
    "image_knn_body",
    "image_mapping",
    "open_es_image_index",
]

SCHEMA = "udrl-images/1"  # _meta.udrl.schema of an image index (a template index has none)
ES_INDEX_TYPES = ("int8_hnsw", "bbq_hnsw", "hnsw")  # hnsw: float vectors, no quantization
QUANTIZED = frozenset({"int8_hnsw", "bbq_hnsw"})
BBQ_MIN_DIMS = 64
MAX_KNN = 10_000  # Elasticsearch's ceiling on num_candidates (and so on k)
VECTOR_FIELD = "vector"
METADATA_FIELD = "metadata"
_PAGE = 1000  # documents per request when listing every image


@dataclass(frozen=True)
class EsImageConfig:
    """How the vector field is indexed (saved in the index) and searched (query time)."""

    # int8_hnsw: 4x smaller than float, recall close to it (Elasticsearch's default);
    # bbq_hnsw: 32x smaller, needs rescoring (oversample) and >= 64 dims; hnsw: floats.
    index_type: str = "int8_hnsw"
    # HNSW links per node; 4-512 (Elasticsearch's default 16): more = better recall, bigger.
    m: int = 16
    # Candidates kept while linking a node at build time; 10-3200 (default 100): more = better
    # graph, slower build.
    ef_construction: int = 100
    # Candidates per shard at query time; >= k, <= 10000 (default 100): recall vs latency.
    num_candidates: int = 100
    # Re-rank oversample x k quantized candidates with the float vectors (Elasticsearch >=
    # 8.18, quantized types only); 1-10, 0 = off.
    oversample: float = 3.0

    def __post_init__(self) -> None:
        if self.index_type not in ES_INDEX_TYPES:
            raise ConfigError(f"Elasticsearch image index_type {self.index_type!r} is unknown; "
                              f"use one of {', '.join(ES_INDEX_TYPES)}")
        for name, lo, hi in (("m", 4, 512), ("ef_construction", 10, 3200),
                             ("num_candidates", 1, MAX_KNN)):
            value = getattr(self, name)
            if not (isinstance(value, int) and lo <= value <= hi):
                raise ConfigError(f"{name}={value!r} is out of range {lo}-{hi}")
        if self.ef_construction < self.m:
            raise ConfigError(f"ef_construction={self.ef_construction} must be >= m={self.m}")
        if not (self.oversample == 0 or 1.0 <= self.oversample <= 10.0):
            raise ConfigError(f"oversample={self.oversample} is out of range 1-10 (0: off)")

    def check(self, dims: int, features: EsFeatures) -> None:
        """Refuse options this cluster or this vector width cannot take (nothing is sent)."""
        if self.index_type == "bbq_hnsw":
            if dims < BBQ_MIN_DIMS:
                raise ConfigError(f"bbq_hnsw needs at least {BBQ_MIN_DIMS} dimensions; the "
                                  f"encoder gives {dims}: use int8_hnsw")
            if features.version is not None and not features.bbq:
                raise IndexStoreError(f"the cluster runs Elasticsearch {features.version}; "
                                      "bbq_hnsw needs 8.16 or later: use int8_hnsw")


def image_mapping(meta: dict[str, Any], dims: int, config: EsImageConfig) -> dict[str, Any]:
    """``indices.create`` body: a strict mapping, provenance in ``_meta.udrl``."""
    vector = {
        "type": "dense_vector", "dims": dims, "index": True, "similarity": "dot_product",
        "index_options": {"type": config.index_type, "m": config.m,
                          "ef_construction": config.ef_construction},
    }
    return {"mappings": {"dynamic": "strict", "_meta": {"udrl": meta}, "properties": {
        "id": {"type": "keyword"}, VECTOR_FIELD: vector,
        # 8191 characters stay under Lucene's 32766-byte term limit in any UTF-8
        METADATA_FIELD: {"type": "flattened", "ignore_above": 8191},
    }}}


def image_filter_clauses(filters: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``images.matches_filters`` as Elasticsearch filter clauses (all must match).

    Raises:
        ConfigError: ``filters`` is not a dict, or a value is a dict or None (no exact
            Elasticsearch equivalent; the FAISS backend compares them whole).
    """
    if filters is None:
        return []
    if not isinstance(filters, dict):
        raise ConfigError(f"filters must be a dict of field -> value, got {type(filters).__name__}")
    out: list[dict[str, Any]] = []
    for key, want in filters.items():
        if isinstance(want, dict) or want is None or not isinstance(key, str):
            raise ConfigError(f"filter {key!r}={want!r}: give a field name and a string, "
                              "number, boolean or a list of them")
        field = f"{METADATA_FIELD}.{key}"
        wanted = want if isinstance(want, list) else [want]
        if not wanted:
            out.append({"exists": {"field": field}})
        out.extend({"term": {field: w}} for w in wanted)
    return out


def image_knn_body(vector: np.ndarray, k: int, filters: list[dict[str, Any]],
                   config: EsImageConfig, features: EsFeatures) -> dict[str, Any]:
    """The kNN-only ``_search`` body for one (D,) unit query vector (pure)."""
    rescore = bool(config.oversample and config.index_type in QUANTIZED
                   and features.rescore_vector)
    # candidates: at least k, and the oversample x k hits that rescoring re-ranks
    want = max(config.num_candidates, k, math.ceil(k * config.oversample) if rescore else k)
    knn: dict[str, Any] = {
        "field": VECTOR_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": min(MAX_KNN, want),
    }
    if filters:
        knn["filter"] = filters
    if rescore:
        knn["rescore_vector"] = {"oversample": float(config.oversample)}
    return {"size": k, "knn": knn, "_source": [METADATA_FIELD]}


def _metadata(hit: dict[str, Any]) -> dict[str, Any]:
    return dict((hit.get("_source") or {}).get(METADATA_FIELD) or {})


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # (Q, D)


class EsImageIndex:
    """The image index behind an alias, searched like ``images.ImageIndex``.

    Searches go through the alias, so an open index follows a rebuild's or a rollback's swap;
    ``version``, ``meta`` and the document count are those of the index it pointed at when
    opened. There is no text channel (``has_dense`` is False).
    """

    has_dense = False
    dense = None
    index_type = "elasticsearch"

    def __init__(self, es: Elasticsearch, settings: EsSettings, version: str,
                 meta: dict[str, Any], config: EsImageConfig, features: EsFeatures,
                 count: int, owns_client: bool):
        self._es: Elasticsearch | None = es
        self.settings = settings
        self.meta = meta  # _meta.udrl of the index: encoder, dim, count, source, config ...
        self.config = config
        self.features = features
        self._version = version
        self._count = count
        self._owns_client = owns_client
        self._listing: tuple[list[str], list[dict[str, Any]]] | None = None

    encoder_name = property(lambda self: self.meta["encoder"], doc="Encoder of the vectors.")
    dim = property(lambda self: int(self.meta["dim"]), doc="Vector width D.")

    @property
    def version(self) -> str:
        """The concrete index the alias pointed at when opened."""
        return self._version

    def __len__(self) -> int:
        return self._count

    def _client(self) -> Elasticsearch:
        if self._es is None:
            raise IndexStoreError(f"image index {self.settings.alias!r} is closed; open it again")
        return self._es

    def search(self, query_vecs: np.ndarray, k: int = 10,
               filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Top-k hits per query, best first, in one ``_msearch`` (``ImageIndex.search``'s
        contract: (Q, D) queries normalised here, ``Hit.score`` the cosine).

        Raises:
            ConfigError: bad k, filters or query shape (nothing is sent).
            IndexStoreError: the cluster refused or cannot be reached.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_KNN:
            raise ConfigError(f"k {k!r} is out of range; it must be an integer 1-{MAX_KNN}")
        clauses = image_filter_clauses(filters)
        q = np.asarray(query_vecs, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"query shape {q.shape} does not match index dim {self.dim}; "
                              f"pass (Q, {self.dim})")
        if len(q) == 0:
            return []
        searches: list[dict[str, Any]] = []
        for v in _unit(q):
            searches.extend(({}, image_knn_body(v, int(k), clauses, self.config, self.features)))
        try:
            resp = self._client().msearch(index=self.settings.alias, searches=searches)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"image search on {self.settings.alias!r} failed: {e}") from e
        out = []
        for i, r in enumerate(resp["responses"]):
            if "error" in r:
                raise IndexStoreError(f"image query {i} failed: {r['error']}")
            # dot_product reports (1 + dot) / 2; unit vectors: dot = cosine
            out.append([Hit(str(h["_id"]), 2.0 * float(h["_score"]) - 1.0, _metadata(h))
                        for h in r["hits"]["hits"]])
        return out

    def search_one(self, vec: np.ndarray, k: int = 10,
                   filters: dict[str, Any] | None = None) -> list[Hit]:
        """``search`` for one vector of shape (D,) or (1, D)."""
        return self.search(np.asarray(vec, dtype=np.float32).reshape(1, -1), k, filters)[0]

    def search_text(self, texts: Sequence[str], encoder: Any, k: int = 10,
                    filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Encode ``texts`` with the index's CLIP ``encoder`` and search."""
        if encoder.name != self.encoder_name or encoder.dim != self.dim:
            raise EncoderMismatchError(
                f"index was built by encoder {self.encoder_name!r} (dim {self.dim}); texts were "
                f"given to {encoder.name!r} (dim {encoder.dim})")
        return self.search(encoder.encode_texts(list(texts)), k, filters)

    # -- every image, for catalogue statistics and grounding (paged, read once) ---------------

    def _list(self) -> tuple[list[str], list[dict[str, Any]]]:
        if self._listing is None:
            ids, metas = [], []
            body: dict[str, Any] = {"size": _PAGE, "query": {"match_all": {}},
                                    "sort": [{"id": "asc"}], "_source": [METADATA_FIELD]}
            try:
                while True:
                    hits = self._client().search(index=self._version, body=body)["hits"]["hits"]
                    ids += [str(h["_id"]) for h in hits]
                    metas += [_metadata(h) for h in hits]
                    if len(hits) < _PAGE:
                        break
                    body["search_after"] = hits[-1]["sort"]
            except (ApiError, TransportError) as e:
                raise IndexStoreError(f"listing {self._version!r} failed: {e}") from e
            self._listing = ids, metas
        return self._listing

    ids = property(lambda self: self._list()[0], doc="Every image id (read on first use).")
    metadata = property(lambda self: self._list()[1], doc="Their metadata, in ``ids`` order.")

    def logged_queries(self) -> set[str]:
        """Always empty: the Elasticsearch image index has no text channel to expand."""
        return set()

    def close(self) -> None:
        if self._es is not None and self._owns_client:
            self._es.close()
        self._es = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_es_image_index(settings: EsSettings, encoder_name: str | None = None,
                        dim: int | None = None, config: EsImageConfig | None = None,
                        client: Elasticsearch | None = None) -> EsImageIndex:
    """Open the image index behind ``settings.alias``, checking the encoder it was built with.

    Args:
        encoder_name, dim: the CLIP encoder queries will come from; None skips that check.
        config: query-time options (``num_candidates``, ``oversample``); None: those saved at
            build time. The index options (type, m, ef_construction) are always the saved ones.
        client: an existing client (tests, shared pools); default: ``connect(settings)``.

    Raises:
        IndexStoreError: no such alias, not an image index, or the cluster cannot be reached.
        EncoderMismatchError: it was built by another encoder or width.
    """
    es = client or connect(settings)
    try:
        return _open(es, settings, encoder_name, dim, config, owns_client=client is None)
    except BaseException:
        if client is None:
            es.close()
        raise


def _open(es: Elasticsearch, settings: EsSettings, encoder_name: str | None, dim: int | None,
          config: EsImageConfig | None, owns_client: bool) -> EsImageIndex:
    alias = settings.alias
    try:
        targets = _alias_targets(es, alias)
        if not targets:
            raise IndexStoreError(f"alias {alias!r} does not exist on {settings.hosts}; build the "
                                  "image index first (udrl index images SOURCE --backend "
                                  "elasticsearch)")
        version = targets[-1]
        meta = _udrl_meta(es, version)
        features = read_features(es)
        count = int(es.count(index=version)["count"])
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot open alias {alias!r} on {settings.hosts}: {e}") from e
    if meta.get("schema") != SCHEMA:
        raise IndexStoreError(f"index {version!r} behind {alias!r} is not a udrl image index "
                              f"(schema {meta.get('schema')!r}, want {SCHEMA!r}); rebuild it or "
                              "point index.es_image_alias elsewhere")
    stored_name, stored_dim = meta.get("encoder"), int(meta.get("dim") or 0)
    if encoder_name not in (None, stored_name) or dim not in (None, stored_dim):
        raise EncoderMismatchError(
            f"index {version!r} was built by encoder {stored_name!r} (dim {stored_dim}) but is "
            f"opened with {encoder_name or stored_name!r} (dim {dim or stored_dim}); use that "
            "encoder or rebuild the index with yours")
    saved = EsImageConfig(**meta.get("es_config", {}))
    if config is not None:  # index options are fixed at build time; query options may change
        saved = EsImageConfig(saved.index_type, saved.m, saved.ef_construction,
                              config.num_candidates, config.oversample)
    return EsImageIndex(es, settings, version, meta, saved, features, count, owns_client)
