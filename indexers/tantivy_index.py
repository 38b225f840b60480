"""The embedded template index: tantivy BM25 in a versioned ``IndexStore`` directory.

Each build writes a complete tantivy index into a fresh version directory, then records
``index_meta.json``, marks the version complete and publishes it with an atomic pointer swap
(``indexers.store``). A crash or exception at any point before the swap leaves the previous
version serving unchanged.

Schema (one document per template)::

    id            raw, stored        exact lookup and deletes
    title         en_stem, stored    \\
    description   en_stem, stored     | BM25 with per-field boosts (TemplateIndexConfig)
    tags          en_stem, stored     |   one value per tag
    category      en_stem, stored    /
    queries       en_stem, stored    logged queries that clicked the template (``--log``)
    category_raw  raw, casefolded    exact ``category`` filter
    tag_raw       raw, casefolded    exact ``tags`` filter, one value per tag
    thumbnail     stored only

With a ``TextEncoder`` the version also holds the dense channel (``indexers.dense``): one
embedding of each template's text and one of each logged query that clicked it, searched by
``search_dense``. Schema version 1 indexes (no ``queries`` field, no dense channel) still open.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import tantivy

from .catalog_templates import TemplateRecord, records_checksum
from .dense import DenseIndex, load_text_encoder
from .errors import ConfigError, DataError, IndexStoreError
from .store import LOCK_FILE, IndexStore
from .templates import (
    BuildReport,
    TemplateHit,
    TemplateIndex,
    TemplateIndexConfig,
    TextEncoder,
    check_query,
    normalize_filters,
)

__all__ = [
    "META_FILE",
    "TantivyTemplateIndex",
    "build_tantivy_index",
    "open_tantivy_index",
    "query_terms",
]

log = logging.getLogger(__name__)

META_FILE = "index_meta.json"
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
TEXT_FIELDS = ("title", "description", "tags", "category", "queries")
LOG_QUERIES_FILE = "log_queries.json"  # the normalised logged queries the build expanded with
_WRITER_HEAP = 64_000_000  # bytes; one writer thread (the machines are small and shared)
_WORD = re.compile(r"[^\W_]+")  # letters/digits runs: what en_stem would split out anyway


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=True, tokenizer_name="en_stem")
    sb.add_text_field("category_raw", stored=False, tokenizer_name="raw")
    sb.add_text_field("tag_raw", stored=False, tokenizer_name="raw")
    sb.add_text_field("thumbnail", stored=True, tokenizer_name="raw", index_option="basic")
    return sb.build()


def query_terms(query: str) -> list[str]:
    """Free text to plain lowercase words, dropping every tantivy query-syntax character.

    Lowercasing also keeps words such as AND/OR/NOT/IN from being read as operators.
    """
    return _WORD.findall(query.casefold())


def dense_text(rec: TemplateRecord) -> str:
    """The text an item's own dense row embeds: title, category, tags, start of description."""
    parts = [rec.title, rec.category, ", ".join(rec.tags), " ".join(rec.description.split()[:30])]
    return ". ".join(p for p in parts if p)


def _document(rec: TemplateRecord, queries: Sequence[str] = ()) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("id", rec.id)
    doc.add_text("title", rec.title)
    doc.add_text("description", rec.description)
    doc.add_text("category", rec.category)
    if rec.category:
        doc.add_text("category_raw", rec.category.casefold())
    for tag in rec.tags:
        doc.add_text("tags", tag)
        doc.add_text("tag_raw", tag.casefold())
    for q in queries:
        doc.add_text("queries", q)
    if rec.thumbnail:
        doc.add_text("thumbnail", rec.thumbnail)
    return doc


def build_tantivy_index(
    records: Sequence[TemplateRecord],
    root: str | os.PathLike[str],
    config: TemplateIndexConfig | None = None,
    keep_versions: int | None = 3,
    expansions: dict[str, list[str]] | None = None,
    encoder: TextEncoder | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> BuildReport:
    """Build a new index version under ``root`` and publish it atomically.

    Args:
        records: validated templates (ids must be unique; ``read_templates`` ensures it).
        root: the IndexStore directory; created if missing.
        config: field boosts to save with the build (defaults: TemplateIndexConfig()).
        keep_versions: after publishing, delete older versions beyond this many (the live
            one and the one live before it are always kept); None keeps everything.
            Unfinished builds older than the new version are deleted too.
        expansions: template id -> logged queries that clicked it (``QueryLog.expansions``);
            indexed in the ``queries`` field and as dense rows.
        encoder: builds the dense channel (``indexers.dense``) into the same version.
        extra_meta: JSON-able facts stored in ``index_meta.json`` (e.g. the log's summary and
            the fitted fusion weights).

    Returns:
        BuildReport with the new version name and doc count.

    Raises:
        IndexStoreError: the build could not be written; the previous version stays live.
    """
    config = config or TemplateIndexConfig()
    if keep_versions is not None and keep_versions < 1:
        raise ConfigError(f"keep_versions={keep_versions} is out of range; use >= 1 or None")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError("records contain duplicate ids; load them with read_templates")
    store = IndexStore(root)
    previous = store.current()
    start = time.perf_counter()
    version = store.new_version()
    lock = store.lock(version)  # a build killed before publishing is cleaned up by a later one
    writer = None
    try:
        index = tantivy.Index(_schema(), path=str(version), reuse=False)
        writer = index.writer(heap_size=_WRITER_HEAP, num_threads=1)
        expansions = expansions or {}
        for rec in records:
            writer.add_document(_document(rec, expansions.get(rec.id, ())))
        writer.commit()
        done, writer = writer, None
        done.wait_merging_threads()
        meta = {
            "backend": "tantivy",
            "schema_version": SCHEMA_VERSION,
            "doc_count": len(records),
            "checksum": records_checksum(records),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": asdict(config),
            "field_boosts": config.field_boosts(),
            "expanded_items": sum(1 for r in records if expansions.get(r.id)),
            **(extra_meta or {}),
        }
        if encoder is not None:
            dense = DenseIndex.build({r.id: dense_text(r) for r in records}, expansions, encoder,
                                     progress=True)
            dense.save(version)
            meta["dense"] = {"encoder": dense.encoder_name, "dim": dense.dim, "rows": len(dense)}
        logged = sorted({" ".join(q.split()).casefold() for qs in expansions.values() for q in qs})
        (version / LOG_QUERIES_FILE).write_text(json.dumps(logged) + "\n")
        (version / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        store.mark_complete(version)
        store.publish(version)
    except BaseException as e:
        # Never leave a half build behind, and never touch what is live. The writer's threads
        # must stop first or they keep writing temp files into the directory being removed.
        if writer is not None:
            writer.rollback()
            writer.wait_merging_threads()
        shutil.rmtree(version, ignore_errors=True)
        if isinstance(e, (ValueError, OSError)) and not isinstance(e, IndexStoreError):
            raise IndexStoreError(f"building a tantivy index under {root} failed: {e}") from e
        raise
    finally:
        lock.close()
    (version / LOCK_FILE).unlink(missing_ok=True)
    store.clean_unfinished()
    if keep_versions is not None:
        store.prune(keep=keep_versions)
    return BuildReport(
        backend="tantivy",
        version=version.name,
        doc_count=len(records),
        checksum=meta["checksum"],
        seconds=time.perf_counter() - start,
        previous_version=previous.name if previous else None,
    )


class TantivyTemplateIndex(TemplateIndex):
    """Read-only searcher over one published tantivy version (immutable once opened)."""

    def __init__(self, path: Path, meta: dict[str, Any], config: TemplateIndexConfig,
                 encoder: TextEncoder | None = None):
        self.path = path
        self.meta = meta
        self.config = config
        self._index = tantivy.Index.open(str(path))
        self._schema = self._index.schema
        self._fields = TEXT_FIELDS if meta.get("schema_version", 1) >= 2 else TEXT_FIELDS[:4]
        self._boosts = {f: b for f, b in config.field_boosts().items() if f in self._fields}
        self._searcher = self._index.searcher()
        self._dense = DenseIndex.load(path)
        self._encoder = encoder
        if self._dense is not None and encoder is not None and encoder.name != \
                self._dense.encoder_name:
            raise IndexStoreError(f"{path}'s dense channel was built with "
                                  f"{self._dense.encoder_name!r}, not {encoder.name!r}; open it "
                                  "with the same encoder or rebuild it")

    @property
    def version(self) -> str:
        return self.path.name

    def _searcher_or_raise(self) -> tantivy.Searcher:
        if self._searcher is None:
            raise IndexStoreError(f"template index {self.path} is closed; open it again")
        return self._searcher

    def _query(self, query: str, k: int, filters: dict | None) -> tantivy.Query | None:
        check_query(query, k)
        category, tags = normalize_filters(filters)
        terms = query_terms(query)
        if not terms:
            return None  # only punctuation: nothing can match
        text_q = self._index.parse_query(
            " ".join(terms), list(self._fields), field_boosts=self._boosts
        )
        return self._filtered(text_q, category, tags)

    def _filtered(self, q: tantivy.Query, category: str | None,
                  tags: tuple[str, ...]) -> tantivy.Query:
        clauses = [(tantivy.Occur.Must, q)]
        if category is not None:
            clauses.append(
                (
                    tantivy.Occur.Must,
                    tantivy.Query.term_query(self._schema, "category_raw", category),
                )
            )
        for tag in tags:
            clauses.append(
                (tantivy.Occur.Must, tantivy.Query.term_query(self._schema, "tag_raw", tag))
            )
        return q if len(clauses) == 1 else tantivy.Query.boolean_query(clauses)

    def _run(
        self, searcher: tantivy.Searcher, q: tantivy.Query | None, k: int
    ) -> list[TemplateHit]:
        if q is None:
            return []
        hits = []
        for score, addr in searcher.search(q, limit=k, count=False).hits:
            d = searcher.doc(addr).to_dict()
            hits.append(
                TemplateHit(
                    id=d["id"][0],
                    score=float(score),
                    title=d["title"][0],
                    category=(d.get("category") or [""])[0],
                    tags=tuple(d.get("tags", ())),
                    fields={
                        "description": (d.get("description") or [""])[0],
                        "thumbnail": (d.get("thumbnail") or [None])[0],
                    },
                )
            )
        return hits

    def search(self, query: str, k: int = 10, filters: dict | None = None) -> list[TemplateHit]:
        searcher = self._searcher_or_raise()
        return self._run(searcher, self._query(query, k, filters), k)

    def search_batch(
        self, queries: Sequence[str], k: int = 10, filters: dict | None = None
    ) -> list[list[TemplateHit]]:
        # Validate everything first so a bad query fails the batch before any work is done.
        # (tantivy's Python search holds the GIL, so threads would not speed this up.)
        searcher = self._searcher_or_raise()
        parsed = [self._query(q, k, filters) for q in queries]
        return [self._run(searcher, q, k) for q in parsed]

    def count(self) -> int:
        return self._searcher_or_raise().num_docs

    # -- the dense channel and what the build recorded ------------------------------------------

    @property
    def has_dense(self) -> bool:
        return self._dense is not None

    @property
    def fusion_params(self) -> dict[str, Any] | None:
        return self.meta.get("fusion")

    def logged_queries(self) -> set[str]:
        try:
            return set(json.loads((self.path / LOG_QUERIES_FILE).read_text()))
        except (OSError, ValueError):
            return set()

    def encode(self, texts: list[str]):
        if self._dense is None:
            raise IndexStoreError(f"{self.path} has no dense channel; rebuild it with an encoder "
                                  "(`udrl index templates` builds one by default)")
        if self._encoder is None:
            if not self._dense.encoder_name.startswith("minilm:"):
                raise IndexStoreError(f"open {self.path} with its encoder "
                                      f"{self._dense.encoder_name!r} to search the dense channel")
            self._encoder = load_text_encoder()
        return self._encoder.encode(texts)

    def search_dense_batch(self, queries: Sequence[str], k: int = 10,
                           filters: dict | None = None, vectors=None) -> list[list[TemplateHit]]:
        for q in queries:
            check_query(q, k)
        category, tags = normalize_filters(filters)
        searcher = self._searcher_or_raise()
        vecs = np.atleast_2d(self.encode(list(queries)) if vectors is None else vectors)
        return [self._dense_one(searcher, v, k, category, tags) for v in vecs]

    def _dense_one(self, searcher: tantivy.Searcher, vec, k: int, category: str | None,
                   tags: tuple[str, ...]) -> list[TemplateHit]:
        # Filters are checked on the exact top candidates, widened until k pass (or all were
        # read): the work grows with the candidates read, not with the catalogue.
        want, n = k, self._dense.n_items
        while True:
            found = self._dense.search(vec[None, :], min(want, max(n, 1)))[0]
            docs = self._docs_by_id(searcher, [i for i, _ in found])
            hits = [TemplateHit(d.id, s, d.title, d.category, d.tags, d.fields)
                    for i, s in found if (d := docs.get(i)) is not None
                    and _passes(d, category, tags)]
            if len(hits) >= k or want >= n:
                return hits[:k]
            want *= 4

    def fetch(self, ids: Sequence[str]) -> dict[str, TemplateHit]:
        return self._docs_by_id(self._searcher_or_raise(), list(dict.fromkeys(ids)))

    def documents(self) -> list[TemplateHit]:
        searcher = self._searcher_or_raise()
        return self._run(searcher, tantivy.Query.all_query(), max(1, searcher.num_docs))

    def _docs_by_id(self, searcher: tantivy.Searcher, ids: list[str]) -> dict[str, TemplateHit]:
        if not ids:
            return {}
        q = tantivy.Query.boolean_query([
            (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "id", i)) for i in ids])
        return {h.id: h for h in self._run(searcher, q, len(ids))}

    def close(self) -> None:
        self._searcher = None
        self._index = None


def _passes(hit: TemplateHit, category: str | None, tags: tuple[str, ...]) -> bool:
    """The exact, case-insensitive filters of ``search`` (see ``normalize_filters``)."""
    if category is not None and hit.category.casefold() != category:
        return False
    have = {t.casefold() for t in hit.tags}
    return all(t in have for t in tags)


def open_tantivy_index(
    root: str | os.PathLike[str], config: TemplateIndexConfig | None = None,
    encoder: TextEncoder | None = None,
) -> TantivyTemplateIndex:
    """Open the live version under ``root``.

    Args:
        root: the IndexStore directory a build published to.
        config: override the saved boosts (query-time only); None uses the build's config.
        encoder: the dense channel's encoder; None loads the shipped MiniLM when first needed.

    Raises:
        IndexStoreError: nothing published yet, or the version is not a tantivy template index.
    """
    path = IndexStore(root).current()
    if path is None:
        raise IndexStoreError(
            f"no template index has been published under {root}; build one first with "
            f"build_template_index('tantivy', records, root={str(root)!r})"
        )
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IndexStoreError(
            f"{meta_path} is missing or unreadable ({e}); rebuild the template index"
        ) from e
    if meta.get("backend") != "tantivy" or meta.get("schema_version") not in READABLE_SCHEMAS:
        raise IndexStoreError(
            f"{path} holds backend={meta.get('backend')!r} schema_version="
            f"{meta.get('schema_version')!r}, expected tantivy v{SCHEMA_VERSION}; rebuild it"
        )
    if config is None:
        config = TemplateIndexConfig(**meta.get("config", {}))
    try:
        return TantivyTemplateIndex(path, meta, config, encoder)
    except ValueError as e:
        raise IndexStoreError(f"cannot open tantivy index at {path}: {e}; rebuild it") from e
