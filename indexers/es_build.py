"""Building Elasticsearch indexes: versioned indices behind one alias, swapped atomically.

A build never touches what is being searched (``publish_new_index``, shared by the template
and the image index)::

    1. create   <alias>-v<UTC timestamp, ms>   explicit mapping, provenance in _meta
    2. load     helpers.streaming_bulk; per-document failures are collected, 429s retried
    3. refresh  and check the document count
    4. swap     ONE update_aliases call: remove alias from old index(es) + add it to the new
    5. prune    templates: (keep_old=False) delete the index that was live before the old
                one; images: ``prune_indices`` keeps the newest keep_versions

If 2-4 fail the new index is deleted and the alias stays where it was. Each index records the
one it replaced (``_meta.udrl.previous_version``): that is the last good version, which
``keep_old=False`` never deletes and ``rollback_es_alias`` moves the alias back to. Searches (``es_index``)
always go through the alias, so an open ``EsTemplateIndex`` follows a swap with no downtime.
The documents, with their logged queries and row vectors, come from ``es_dense.documents``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError, helpers

from .catalog_templates import TemplateRecord, records_checksum
from .errors import ConfigError, DataError, IndexStoreError
from .es_dense import DENSE_FIELD, check_nested_knn, documents
from .es_schema import SCHEMA_VERSION, EsSettings, _describe, connect, template_mapping
from .query_log import normalize_query
from .templates import BuildFailure, BuildReport, TemplateIndexConfig, TextEncoder

__all__ = ["Published", "build_es_index", "es_live_version", "prune_indices",
           "publish_new_index", "rollback_es_alias"]

log = logging.getLogger(__name__)

_RESERVED_META = frozenset(
    {
        "schema_version",
        "encoder",
        "dims",
        "checksum",
        "doc_count",
        "built_at",
        "config",
        "expanded_items",
        "logged_queries",
        "dense",
        "previous_version",
    }
)


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
    expansions: Mapping[str, Sequence[str]] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> BuildReport:
    """Load ``records`` into a new versioned index and swap ``settings.alias`` onto it.

    Args:
        records: validated templates with unique ids.
        settings: cluster and alias; ``keep_old`` decides whether the old index survives.
        config: boosts saved in the index ``_meta`` (defaults: TemplateIndexConfig()).
        encoder: adds the dense channel (``es_dense``; Elasticsearch >= 8.11): an
            ``embedding`` per template for hybrid search and one nested row vector per
            template text and per logged query for ``search_dense_batch``.
        client: an existing client (tests, shared pools); default: ``connect(settings)``.
        expansions: template id -> logged queries that clicked it (``QueryLog.expansions``);
            indexed in the ``queries`` field and as dense rows. Unknown ids are ignored.
        extra_meta: JSON-able facts stored in the index ``_meta`` (e.g. ``"fusion"``, the
            fitted fusion weights, and ``"log"``, the query log's summary).

    Returns:
        BuildReport; documents Elasticsearch refused are in ``failures`` (id, reason, status).

    Raises:
        ConfigError: ``extra_meta`` is not JSON-able or reuses a key the build writes, or
            ``expansions`` maps an id to a single string instead of a list.
        IndexStoreError: the load, refresh or swap failed, or too many documents failed; the
            new index was deleted and the alias still points where it did. Also a cluster
            older than 8.11 when an encoder is given (nothing is created then).
    """
    config = config or TemplateIndexConfig()
    if len({r.id for r in records}) != len(records):
        raise DataError("records contain duplicate ids; load them with read_templates")
    _describe(encoder)
    expansions = _check_expansions(expansions)
    extra = _check_extra_meta(extra_meta)
    es = client or connect(settings)
    try:
        return _build(es, records, settings, config, encoder, expansions, extra)
    finally:
        if client is None:
            es.close()


def _check_expansions(
    expansions: Mapping[str, Sequence[str]] | None,
) -> Mapping[str, Sequence[str]]:
    for item, queries in (expansions or {}).items():
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise ConfigError(
                f"expansions[{item!r}] = {queries!r}; map each id to a list of query strings "
                "(QueryLog.expansions)"
            )
    return expansions or {}


def _check_extra_meta(extra_meta: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = dict(extra_meta or {})
    taken = sorted(_RESERVED_META & set(extra))
    if taken:
        raise ConfigError(
            f"extra_meta reuses {taken}, which the build writes; rename them (reserved: "
            f"{', '.join(sorted(_RESERVED_META))})"
        )
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"extra_meta must be JSON-able (numbers, strings, lists, dicts): {e}"
        ) from e
    return extra


def _build(
    es: Elasticsearch,
    records: Sequence[TemplateRecord],
    settings: EsSettings,
    config: TemplateIndexConfig,
    encoder: TextEncoder | None,
    expansions: Mapping[str, Sequence[str]],
    extra_meta: dict[str, Any],
) -> BuildReport:
    name, dim = _describe(encoder)
    start = time.perf_counter()
    queries = [expansions.get(r.id, ()) for r in records]
    if encoder is not None:
        try:
            check_nested_knn(es)
        except (ApiError, TransportError) as e:
            raise IndexStoreError(f"cannot read the cluster's version: {e}") from e
    checksum = records_checksum(records)

    def body(previous: str | None) -> dict[str, Any]:
        meta = {
            "schema_version": SCHEMA_VERSION,
            "encoder": name,
            "dims": dim,
            "checksum": checksum,
            "doc_count": len(records),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": asdict(config),
            "expanded_items": sum(1 for qs in queries if qs),
            "logged_queries": len({normalize_query(q) for qs in queries for q in qs}),
            "dense": None
            if encoder is None
            else {"field": DENSE_FIELD, "rows": len(records) + sum(map(len, queries))},
            "previous_version": previous,
            **extra_meta,
        }
        return template_mapping(meta, dim)

    done = publish_new_index(
        es, settings, body, lambda new: documents(records, new, encoder, dim, expansions),
        len(records))
    if not settings.keep_old and done.replaced:
        # the index live before stays (the last good version, for rollback); what it replaced
        # and any extra index the alias held go
        old = done.replaced
        drop = [*old[:-1], _udrl_meta(es, old[-1]).get("previous_version")]
        for o in dict.fromkeys(d for d in drop if d and d not in (done.version, old[-1])):
            _delete_quietly(es, o)
    return BuildReport(
        backend="elasticsearch",
        version=done.version,
        doc_count=done.count,
        checksum=checksum,
        seconds=time.perf_counter() - start,
        previous_version=done.previous,
        failures=done.failures,
    )


@dataclass(frozen=True)
class Published:
    """What ``publish_new_index`` did."""

    version: str  # the new index, now behind the alias
    previous: str | None  # the index the alias pointed at before (None on a first build)
    replaced: list[str]  # every index the alias pointed at before, oldest name first
    count: int  # documents in the new index after refresh
    failures: list[BuildFailure]  # documents Elasticsearch refused


def publish_new_index(
    es: Elasticsearch,
    settings: EsSettings,
    body: Callable[[str | None], dict[str, Any]],
    actions: Callable[[str], Iterable[dict[str, Any]]],
    n: int,
) -> Published:
    """Create ``<alias>-v<timestamp>``, bulk-load it, check it and swap the alias onto it.

    Steps 1-4 of the module docstring, shared by every index kept behind an alias (templates,
    images); pruning older indices is the caller's.

    Args:
        body: the previous index's name (None on a first build) -> the ``indices.create``
            body (settings, mappings with ``_meta.udrl``).
        actions: the new index's name -> its bulk actions.
        n: how many documents ``actions`` yields (for the failed fraction and the count).

    Raises:
        IndexStoreError: the alias is a concrete index, the load, refresh or swap failed, or
            more than ``settings.max_failed_fraction`` of the documents failed; the new index
            was deleted and the alias still points where it did.
    """
    alias = settings.alias
    try:
        if es.indices.exists(index=alias) and not es.indices.exists_alias(name=alias):
            raise IndexStoreError(
                f"{alias!r} is a concrete index, not an alias; delete or rename it, or pick "
                "another alias"
            )
        old = _alias_targets(es, alias)
        new = _new_index_name(es, alias)
        es.indices.create(index=new, **body(old[-1] if old else None))
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot prepare a new index for alias {alias!r}: {e}") from e
    try:
        failures = _load(es, actions(new), settings)
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
        swap: list[dict[str, Any]] = [{"remove": {"index": o, "alias": alias}} for o in old]
        swap.append({"add": {"index": new, "alias": alias}})
        es.indices.update_aliases(actions=swap)  # atomic: both or neither
    except BaseException as e:
        _delete_quietly(es, new)
        if isinstance(e, (ApiError, TransportError)):
            raise IndexStoreError(f"loading {new} failed, alias {alias!r} unchanged: {e}") from e
        raise
    log.info("alias %s -> %s (%d docs, %d failed; was %s)", alias, new, count, len(failures), old)
    return Published(new, old[-1] if old else None, old, count, failures)


def prune_indices(es: Elasticsearch, alias: str, keep: int) -> list[str]:
    """Delete ``<alias>-v*`` indices beyond the ``keep`` newest; the live one and the one live
    before it (its ``_meta.udrl.previous_version``, the last good version) always stay.

    Returns:
        The deleted index names. A failed delete is logged, never raised: the build is done.
    """
    ours = re.compile(rf"{re.escape(alias)}-v\d{{17}}")  # _new_index_name's names only
    try:
        names = sorted(n for n in es.indices.get(index=f"{alias}-v*", allow_no_indices=True,
                                                 ignore_unavailable=True).body
                       if ours.fullmatch(n))
        live = _alias_targets(es, alias)
        protected = set(live)
        if live:
            protected.add(_udrl_meta(es, live[-1]).get("previous_version"))
    except (ApiError, TransportError) as e:
        log.error("could not list the indices of alias %s to prune them: %s", alias, e)
        return []
    drop = [n for n in names[: max(0, len(names) - keep)] if n not in protected]
    for name in drop:
        _delete_quietly(es, name)
    if drop:
        log.info("pruned %d old index(es) of alias %s: %s", len(drop), alias, drop)
    return drop


def _load(es: Elasticsearch, actions: Iterable[dict[str, Any]],
          settings: EsSettings) -> list[BuildFailure]:
    # 429 is left to streaming_bulk, which backs off and re-sends only the rejected items
    # (the transport would resend the whole chunk at once without waiting).
    bulk_client = es.options(retry_on_status=(502, 503, 504))
    failures = []
    for ok, item in helpers.streaming_bulk(
        bulk_client,
        actions,
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


def _udrl_meta(es: Elasticsearch, index: str) -> dict[str, Any]:
    """The build metadata of ``index`` ({} when it is gone or has none)."""
    try:
        body = es.indices.get_mapping(index=index).body
    except NotFoundError:
        return {}
    return (body.get(index, {}).get("mappings", {}).get("_meta") or {}).get("udrl") or {}


def es_live_version(settings: EsSettings, client: Elasticsearch | None = None
                    ) -> tuple[str | None, int | None]:
    """(index behind ``settings.alias``, its document count), or (None, None) before the
    first build.

    Raises:
        IndexStoreError: the cluster cannot be reached or refused the request.
    """
    es = client or connect(settings)
    try:
        targets = _alias_targets(es, settings.alias)
        if not targets:
            return None, None
        return targets[-1], int(es.count(index=targets[-1])["count"])
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"cannot read alias {settings.alias!r}: {e}") from e
    finally:
        if client is None:
            es.close()


def rollback_es_alias(settings: EsSettings, to: str | None = None,
                      client: Elasticsearch | None = None) -> tuple[str, str | None]:
    """Move ``settings.alias`` back to an earlier index in one atomic ``update_aliases``.

    Args:
        to: an index built for this alias (``<alias>-v...``); None = the index the live one
            replaced (its ``_meta.udrl.previous_version``). Rolling back again goes one more
            step back.

    Returns:
        (the index now behind the alias, the one that was).

    Raises:
        IndexStoreError: nothing to roll back to (first build, or the earlier index was
            deleted), ``to`` is not an index of this alias, or the cluster refused.
    """
    alias = settings.alias
    es = client or connect(settings)
    try:
        old = _alias_targets(es, alias)
        live = old[-1] if old else None
        target = to if to is not None else (_udrl_meta(es, live).get("previous_version")
                                            if live else None)
        if target is None:
            raise IndexStoreError(f"nothing to roll back to: {live or 'no index'} is behind "
                                  f"alias {alias!r} and records no earlier index")
        if not target.startswith(f"{alias}-v") or not _udrl_meta(es, target):
            raise IndexStoreError(f"{target!r} is not an index built for alias {alias!r} (or it "
                                  "was deleted); list them with GET _cat/indices/"
                                  f"{alias}-v*")
        if target == live:
            raise IndexStoreError(f"{target} is already behind alias {alias!r}")
        actions: list[dict[str, Any]] = [{"remove": {"index": o, "alias": alias}} for o in old]
        actions.append({"add": {"index": target, "alias": alias}})
        es.indices.update_aliases(actions=actions)
    except (ApiError, TransportError) as e:
        raise IndexStoreError(f"rolling back alias {alias!r} failed: {e}") from e
    finally:
        if client is None:
            es.close()
    log.info("alias %s -> %s (rolled back from %s)", alias, target, live)
    return target, live
