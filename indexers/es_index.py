"""The Elasticsearch template index: versioned indices behind one alias, swapped atomically.

A build never touches what is being searched::

    1. create   <alias>-v<UTC timestamp, ms>   explicit mapping, provenance in _meta
    2. load     helpers.streaming_bulk; per-document failures are collected, 429s retried
    3. refresh  and check the document count
    4. swap     ONE update_aliases call: remove alias from old index(es) + add it to the new
    5. (keep_old=False) delete the old index(es)

If 2-4 fail the new index is deleted and the alias stays where it was. Searches always go
through the alias, so an open ``EsTemplateIndex`` follows a swap with no downtime.

The mapping, the search request and ``EsSettings`` live in ``es_schema``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError, helpers

from .catalog_templates import TemplateRecord, records_checksum
from .errors import DataError, EncoderMismatchError, IndexStoreError
from .es_schema import (
    SCHEMA_VERSION,
    EsSettings,
    _describe,
    _embed_text,
    _encode,
    _hits,
    _source,
    connect,
    search_body,
    template_mapping,
)
from .templates import (
    BuildFailure,
    BuildReport,
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
    "open_es_index",
    "search_body",
    "template_mapping",
]

log = logging.getLogger(__name__)

_ENCODE_BATCH = 256  # texts per encoder call while loading


def _actions(
    records: Sequence[TemplateRecord], index: str, encoder: TextEncoder | None, dim: int | None
) -> Iterator[dict[str, Any]]:
    for start in range(0, len(records), _ENCODE_BATCH):
        chunk = records[start : start + _ENCODE_BATCH]
        vecs = _encode(encoder, [_embed_text(r) for r in chunk], dim) if encoder else None  # (B, D)
        for i, rec in enumerate(chunk):
            src = _source(rec, None if vecs is None else vecs[i])
            yield {"_op_type": "index", "_index": index, "_id": rec.id, "_source": src}


def _alias_targets(es: Elasticsearch, alias: str) -> list[str]:
    """Concrete indices behind ``alias`` ([] when it does not exist yet)."""
    try:
        return sorted(es.indices.get_alias(name=alias).body)
    except NotFoundError:
        return []


def _new_index_name(es: Elasticsearch, alias: str) -> str:
    ms = time.time_ns() // 1_000_000
    while True:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(ms / 1000)) + f"{ms % 1000:03d}"
        name = f"{alias}-v{stamp}"
        if not es.indices.exists(index=name):
            return name
        ms += 1


def _failure(item: dict[str, Any]) -> BuildFailure:
    info = next(iter(item.values()))
    err = info.get("error")
    if isinstance(err, dict):
        reason = f"{err.get('type', 'error')}: {err.get('reason', '')}".rstrip(": ")
    else:
        reason = str(err)
    return BuildFailure(id=str(info.get("_id")), reason=reason, status=info.get("status"))


def build_es_index(
    records: Sequence[TemplateRecord],
    settings: EsSettings,
    config: TemplateIndexConfig | None = None,
    encoder: TextEncoder | None = None,
    client: Elasticsearch | None = None,
) -> BuildReport:
    """Load ``records`` into a new versioned index and swap ``settings.alias`` onto it.

    Args:
        records: validated templates with unique ids.
        settings: cluster and alias; ``keep_old`` decides whether the old index survives.
        config: boosts saved in the index ``_meta`` (defaults: TemplateIndexConfig()).
        encoder: adds an ``embedding`` dense_vector per template for hybrid search.
        client: an existing client (tests, shared pools); default: ``connect(settings)``.

    Returns:
        BuildReport; documents Elasticsearch refused are in ``failures`` (id, reason, status).

    Raises:
        IndexStoreError: the load, refresh or swap failed, or too many documents failed; the
            new index was deleted and the alias still points where it did.
    """
    config = config or TemplateIndexConfig()
    if len({r.id for r in records}) != len(records):
        raise DataError("records contain duplicate ids; load them with read_templates")
    _describe(encoder)
    es = client or connect(settings)
    try:
        return _build(es, records, settings, config, encoder)
    finally:
        if client is None:
            es.close()


def _build(
    es: Elasticsearch,
    records: Sequence[TemplateRecord],
    settings: EsSettings,
    config: TemplateIndexConfig,
    encoder: TextEncoder | None,
) -> BuildReport:
    name, dim = _describe(encoder)
    start = time.perf_counter()
    alias = settings.alias
    try:
        if es.indices.exists(index=alias) and not es.indices.exists_alias(name=alias):
            raise IndexStoreError(
                f"{alias!r} is a concrete index, not an alias; delete or rename it, or pick "
                "another EsSettings.alias"
            )
        old = _alias_targets(es, alias)
        new = _new_index_name(es, alias)
        checksum = records_checksum(records)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "encoder": name,
            "dims": dim,
            "checksum": checksum,
            "doc_count": len(records),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": asdict(config),
        }
        es.indices.create(index=new, **template_mapping(meta, dim))
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot prepare a new index for alias {alias!r}: {e}") from e
    try:
        failures = _load(es, records, new, encoder, dim, settings)
        n = len(records)
        if n and len(failures) / n > settings.max_failed_fraction:
            shown = "; ".join(f"{f.id}: {f.reason}" for f in failures[:5])
            raise IndexStoreError(
                f"{len(failures)} of {n} documents failed (limit {settings.max_failed_fraction:.0%}"
                f" = EsSettings.max_failed_fraction), e.g. {shown}"
            )
        es.indices.refresh(index=new)
        count = int(es.count(index=new)["count"])
        if count != n - len(failures):
            raise IndexStoreError(
                f"{new} holds {count} documents after refresh, expected {n - len(failures)}"
            )
        actions: list[dict[str, Any]] = [{"remove": {"index": o, "alias": alias}} for o in old]
        actions.append({"add": {"index": new, "alias": alias}})
        es.indices.update_aliases(actions=actions)  # atomic: both or neither
    except BaseException as e:
        _delete_quietly(es, new)
        if isinstance(e, (ApiError, TransportError)):
            raise IndexStoreError(f"loading {new} failed, alias {alias!r} unchanged: {e}") from e
        raise
    if not settings.keep_old:
        for o in old:
            _delete_quietly(es, o)
    log.info("alias %s -> %s (%d docs, %d failed; was %s)", alias, new, count, len(failures), old)
    return BuildReport(
        backend="elasticsearch",
        version=new,
        doc_count=count,
        checksum=checksum,
        seconds=time.perf_counter() - start,
        previous_version=old[-1] if old else None,
        failures=failures,
    )


def _load(
    es: Elasticsearch,
    records: Sequence[TemplateRecord],
    index: str,
    encoder: TextEncoder | None,
    dim: int | None,
    settings: EsSettings,
) -> list[BuildFailure]:
    # 429 is left to streaming_bulk, which backs off and re-sends only the rejected items
    # (the transport would resend the whole chunk at once without waiting).
    bulk_client = es.options(retry_on_status=(502, 503, 504))
    failures = []
    for ok, item in helpers.streaming_bulk(
        bulk_client,
        _actions(records, index, encoder, dim),
        chunk_size=settings.bulk_chunk_size,
        raise_on_error=False,
        max_retries=settings.bulk_max_retries,
        initial_backoff=settings.retry_backoff_s,
        max_backoff=settings.max_backoff_s,
        yield_ok=False,
    ):
        if not ok:
            failures.append(_failure(item))
    return failures


def _delete_quietly(es: Elasticsearch, index: str) -> None:
    try:
        es.options(ignore_status=404).indices.delete(index=index)
    except (ApiError, TransportError) as e:  # the original error matters more
        log.error("could not delete index %s: %s; delete it by hand", index, e)


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

    def _bodies(self, queries: Sequence[str], k: int, filters: dict | None) -> list[dict[str, Any]]:
        for q in queries:
            check_query(q, k)
        category, tags = normalize_filters(filters)
        vecs = None
        if self.encoder is not None and queries:
            vecs = _encode(self.encoder, list(queries), int(self.meta["dims"]))  # (Q, D)
        return [
            search_body(
                q,
                k,
                category,
                tags,
                self.config,
                None if vecs is None else vecs[i],
                self.settings.num_candidates,
            )
            for i, q in enumerate(queries)
        ]

    def search(self, query: str, k: int = 10, filters: dict | None = None) -> list[TemplateHit]:
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
        bodies = self._bodies(list(queries), k, filters)
        if not bodies:
            return []
        searches: list[dict[str, Any]] = []
        for b in bodies:
            searches.extend(({}, b))
        try:
            resp = self._client().msearch(index=self.settings.alias, searches=searches)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"msearch on {self.settings.alias!r} failed: {e}") from e
        out = []
        for i, r in enumerate(resp["responses"]):
            if "error" in r:
                raise IndexStoreError(f"query {i} ({queries[i]!r}) failed: {r['error']}")
            out.append(_hits(r))
        return out

    def count(self) -> int:
        try:
            return int(self._client().count(index=self.settings.alias)["count"])
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"count on {self.settings.alias!r} failed: {e}") from e

    def close(self) -> None:
        if self._es is not None and self._owns_client:
            self._es.close()
        self._es = None


def open_es_index(
    settings: EsSettings,
    encoder: TextEncoder | None = None,
    client: Elasticsearch | None = None,
    config: TemplateIndexConfig | None = None,
) -> EsTemplateIndex:
    """Open the index behind ``settings.alias``, checking it was built by ``encoder``.

    Args:
        encoder: must match the name and dims stored at build time; None searches BM25 only.
        config: override the saved boosts (query-time only); None uses the build's config.

    Raises:
        IndexStoreError: the alias does not exist or the cluster cannot be reached.
        EncoderMismatchError: the index was built with another encoder (or none).
    """
    es = client or connect(settings)
    try:
        return _open(es, settings, encoder, config, owns_client=client is None)
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
    if not meta or meta.get("schema_version") != SCHEMA_VERSION:
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
