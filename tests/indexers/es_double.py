"""A local HTTP stand-in for Elasticsearch 9.x, enough for the official client and our index.

Served by ``http.server.ThreadingHTTPServer`` on a free 127.0.0.1 port in a daemon thread.
Every request is recorded (method, path, params, parsed body) for assertions. It keeps indices,
mappings, aliases and documents in memory; documents become searchable on ``_refresh`` as in
the real thing. Search is a trivial term match (score = sum over fields of boost x term count
x idf, plus a cosine kNN part when asked), enough for ranking tests to see a distinctive word
win. kNN is exact: a nested vector field scores a document by its best nested vector (as
Elasticsearch >= 8.11 does), reported as ``(1 + cosine) / 2``.

It refuses what a real cluster refuses, with Elasticsearch's error types: mappings with unknown
types or parameters, analyzers or normalizers that do not exist, dense_vector fields without
dims or with index options the version lacks; documents with fields a ``dynamic: strict``
mapping does not declare, vectors of the wrong length, of zero magnitude under cosine or not
of unit length under dot_product; search bodies with unknown keys, kNN on a field that is not
an indexed dense_vector, a query vector of the wrong length, k above num_candidates or
num_candidates above 10000, sorting on a text field, a result window over 10000. The vector
features that depend on the version (bbq, rescore_vector, retrievers with rrf, base64
vectors) live in ``es_double_vectors``; set ``version`` to test an older cluster. ``_msearch``
answers a bad search in its slot, as the real one does. Faults can be injected:

    fail_docs[id] = (400, "document_parsing_exception")   that item fails every time
    throttle_docs[id] = n                                  that item gets 429 n times
    throttle_bulk = n                                      the next n _bulk requests get 429
    fail(method, path_regex, status, times)                any route answers an error
    rrf_licensed = False                                   the rrf retriever answers 403
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from .es_double_vectors import (
    check_index_options,
    check_knn_options,
    check_unit_length,
    decode_vector,
    retrieve,
)

__all__ = ["EsDouble", "Recorded"]

_TOKEN = re.compile(r"[^\W_]+")
_PRODUCT = {"X-Elastic-Product": "Elasticsearch"}
# field type -> the mapping parameters a real cluster accepts (the ones this project may send)
_MAPPER_PARAMS = {
    "keyword": {"type", "normalizer", "index", "doc_values", "ignore_above", "fields"},
    "text": {"type", "analyzer", "search_analyzer", "index", "fields"},
    "dense_vector": {"type", "dims", "index", "similarity", "index_options", "element_type"},
    "nested": {"type", "properties", "dynamic"},
    "flattened": {"type", "depth_limit", "index", "doc_values", "ignore_above"},
}
_ANALYZERS = {"standard", "simple", "whitespace", "keyword", "english"}
_SIMILARITIES = {"cosine", "dot_product", "l2_norm", "max_inner_product"}
_SEARCH_KEYS = {
    "size",
    "from",
    "query",
    "knn",
    "_source",
    "sort",
    "search_after",
    "track_total_hits",
    "retriever",
}
_KNN_KEYS = {
    "field",
    "query_vector",
    "k",
    "num_candidates",
    "filter",
    "similarity",
    "boost",
    "inner_hits",
    "_name",
    "rescore_vector",
}
_MAX_WINDOW = 10_000  # index.max_result_window, and the num_candidates ceiling


def _tokens(text: Any) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [t for x in text for t in _tokens(x)]
    return _TOKEN.findall(str(text or "").lower())


@dataclass
class Recorded:
    """One request as the double saw it."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any  # dict for JSON, list of dicts for NDJSON, None when empty


@dataclass
class _Index:
    settings: dict[str, Any]
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # searchable (refreshed)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # written, not refreshed


class _Error(Exception):
    def __init__(self, status: int, etype: str, reason: str):
        super().__init__(reason)
        self.status, self.body = (
            status,
            {
                "error": {
                    "type": etype,
                    "reason": reason,
                    "root_cause": [{"type": etype, "reason": reason}],
                },
                "status": status,
            },
        )


class EsDouble:
    """In-memory fake Elasticsearch cluster speaking HTTP on 127.0.0.1."""

    version = "9.1.0"

    def __init__(self) -> None:
        self.indices: dict[str, _Index] = {}
        self.aliases: dict[str, set[str]] = {}
        self.requests: list[Recorded] = []
        self.fail_docs: dict[str, tuple[int, str]] = {}
        self.throttle_docs: dict[str, int] = {}
        self.throttle_bulk = 0
        self.rrf_licensed = True
        self._faults: list[list[Any]] = []  # [method, regex, status, times_left]
        self._lock = threading.RLock()
        self._idf: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> EsDouble:
        double = self

        class Handler(_Handler):
            owner = double

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test helpers ----------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int = 500, times: int = 1) -> None:
        """Answer ``times`` matching requests with ``status`` (an ES-shaped error)."""
        self._faults.append([method.upper(), re.compile(path_regex), status, times])

    def calls(self, method: str, path_regex: str) -> list[Recorded]:
        """Recorded requests whose method and path match."""
        rx = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and rx.search(r.path)]

    def resolve(self, target: str) -> list[str]:
        """Concrete index names for an index name, alias, wildcard pattern, or comma list."""
        out: list[str] = []
        for name in target.split(","):
            if "*" in name:
                out.extend(sorted(fnmatch.filter(self.indices, name)))
            elif name in self.indices:
                out.append(name)
            elif name in self.aliases:
                out.extend(sorted(self.aliases[name]))
            else:
                raise _Error(404, "index_not_found_exception", f"no such index [{name}]")
        return out

    # -- routing ---------------------------------------------------------------------------
    def handle(self, method: str, path: str, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            for fault in self._faults:
                if fault[3] > 0 and fault[0] == method and fault[1].search(path):
                    fault[3] -= 1
                    raise _Error(
                        fault[2], "injected_failure", f"injected {fault[2]} on {method} {path}"
                    )
            parts = [unquote(p) for p in path.strip("/").split("/") if p]
            if not parts:
                return 200, self._info()
            if parts[-1] == "_bulk":
                return self._bulk(parts[0] if len(parts) == 2 else None, body)
            if parts[0] == "_aliases" and method == "POST":
                return self._update_aliases(body)
            if parts[0] == "_alias" and len(parts) == 2:
                found = {
                    i: {"aliases": {parts[1]: {}}} for i in sorted(self.aliases.get(parts[1], ()))
                }
                if not found:
                    raise _Error(404, "aliases_not_found_exception", f"alias [{parts[1]}] missing")
                return 200, found
            if len(parts) == 1 and method == "PUT":
                return self._create(parts[0], body or {})
            if len(parts) == 1 and method == "DELETE":
                for name in self.resolve(parts[0]):
                    del self.indices[name]
                    for members in self.aliases.values():
                        members.discard(name)
                self.aliases = {a: m for a, m in self.aliases.items() if m}
                return 200, {"acknowledged": True}
            if len(parts) == 1 and method in ("GET", "HEAD"):
                return 200, {
                    n: {
                        "aliases": {a: {} for a, m in self.aliases.items() if n in m},
                        "mappings": self.indices[n].mappings,
                        "settings": self.indices[n].settings,
                    }
                    for n in self.resolve(parts[0])
                }
            if len(parts) == 2:
                target, op = parts
                if op == "_mapping":
                    return 200, {
                        n: {"mappings": self.indices[n].mappings} for n in self.resolve(target)
                    }
                if op == "_refresh":
                    for n in self.resolve(target):
                        ix = self.indices[n]
                        ix.docs.update(ix.pending)
                        ix.pending.clear()
                    return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
                if op == "_count":
                    return 200, {
                        "count": sum(len(self.indices[n].docs) for n in self.resolve(target))
                    }
                if op == "_search":
                    return 200, self._search(target, body or {})
                if op == "_msearch":  # a bad search fails in its own slot, not the request
                    resps = []
                    for b in (body or [])[1::2]:
                        try:
                            resps.append({**self._search(target, b), "status": 200})
                        except _Error as e:
                            resps.append({"error": e.body["error"], "status": e.status})
                    return 200, {"took": 1, "responses": resps}
            raise _Error(
                400, "unsupported_by_double", f"the ES double has no route {method} {path}"
            )

    def _info(self) -> dict[str, Any]:
        return {
            "name": "double",
            "cluster_name": "udrl-test",
            "cluster_uuid": "double",
            "version": {"number": self.version, "build_flavor": "default"},
            "tagline": "You Know, for Search",
        }

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if name in self.indices or name in self.aliases:
            raise _Error(400, "resource_already_exists_exception", f"index [{name}] already exists")
        _check_mapping(body.get("mappings", {}), body.get("settings", {}), self.version)
        self.indices[name] = _Index(
            settings=body.get("settings", {}), mappings=body.get("mappings", {})
        )
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _update_aliases(self, body: dict[str, Any]) -> tuple[int, Any]:
        actions = body.get("actions", [])
        for act in actions:  # validate everything first: all or nothing
            ((kind, spec),) = act.items()
            if spec["index"] not in self.indices:
                raise _Error(404, "index_not_found_exception", f"no such index [{spec['index']}]")
            if kind == "remove" and spec["index"] not in self.aliases.get(spec["alias"], ()):
                raise _Error(
                    404, "aliases_not_found_exception", f"aliases [{spec['alias']}] missing"
                )
        for act in actions:
            ((kind, spec),) = act.items()
            members = self.aliases.setdefault(spec["alias"], set())
            (members.add if kind == "add" else members.discard)(spec["index"])
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return 200, {"acknowledged": True, "errors": False}

    def _bulk(
        self, default_index: str | None, lines: list[dict[str, Any]] | None
    ) -> tuple[int, Any]:
        if self.throttle_bulk > 0:
            self.throttle_bulk -= 1
            raise _Error(429, "es_rejected_execution_exception", "rejected execution (queue full)")
        items, lines = [], list(lines or [])
        i = 0
        while i < len(lines):
            ((op, meta),) = lines[i].items()
            source = lines[i + 1] if op != "delete" else None
            i += 1 if op == "delete" else 2
            index, doc_id = meta.get("_index", default_index), str(meta.get("_id"))
            item: dict[str, Any] = {"_index": index, "_id": doc_id}
            if doc_id in self.fail_docs:
                status, etype = self.fail_docs[doc_id]
                item.update(
                    status=status, error={"type": etype, "reason": f"failed to parse [{doc_id}]"}
                )
            elif self.throttle_docs.get(doc_id, 0) > 0:
                self.throttle_docs[doc_id] -= 1
                item.update(
                    status=429,
                    error={"type": "es_rejected_execution_exception", "reason": "queue full"},
                )
            elif index not in self.indices:
                item.update(
                    status=404, error={"type": "index_not_found_exception", "reason": index}
                )
            elif (refused := self._refused(index, source or {})) is not None:
                item.update(status=refused.status, error=refused.body["error"])
            else:
                self.indices[index].pending[doc_id] = source
                item.update(status=201, result="created", _version=1)
            items.append({op: item})
        errors = any(v["status"] >= 300 for it in items for v in it.values())
        return 200, {"took": 1, "errors": errors, "items": items}

    def _refused(self, index: str, source: dict[str, Any]) -> _Error | None:
        try:
            _check_doc(self.indices[index].mappings, source, self.version)
        except _Error as e:
            return e
        return None

    # -- search ----------------------------------------------------------------------------
    def _match(self, clause: dict[str, Any], src: dict[str, Any]) -> float | None:
        """Score of a doc for one query clause, None when it does not match."""
        ((kind, spec),) = clause.items()
        if kind == "match_all":
            return 1.0
        if kind == "exists":
            return 0.0 if _lookup(src, spec["field"]) not in (None, [], "") else None
        if kind == "multi_match":
            terms = set(_tokens(spec["query"]))
            score = 0.0
            for f in spec.get("fields", ["*"]):
                name, _, boost = f.partition("^")
                tf = sum(self._idf.get(t, 1.0) for t in _tokens(src.get(name)) if t in terms)
                score += float(boost or 1.0) * tf
            return score or None
        if kind == "match_none":
            return None
        if kind in ("term", "terms"):
            ((fld, want),) = spec.items()
            fold = fld.endswith(".keyword")  # the template fields' lowercase normalizer
            values = _lookup(src, fld.removesuffix(".keyword"))
            values = values if isinstance(values, list) else [values]
            have = {_keyword(v, fold) for v in values if v is not None}
            wants = want if kind == "terms" else [want]
            return 0.0 if any(_keyword(w, fold) in have for w in wants) else None
        if kind == "bool":
            score = 0.0
            for c in spec.get("must", []) + spec.get("filter", []):
                s = self._match(c, src)
                if s is None:
                    return None
                score += s
            return score
        raise _Error(400, "unsupported_by_double", f"query clause {kind!r}")

    def _search(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        names = self.resolve(target)
        unknown = sorted(set(body) - _SEARCH_KEYS)
        if unknown:
            raise _Error(
                400, "parsing_exception", f"Unknown key for a START_OBJECT in [{unknown[0]}]."
            )
        size, start = body.get("size", 10), body.get("from", 0)
        if size + start > _MAX_WINDOW:
            raise _Error(
                400,
                "illegal_argument_exception",
                f"Result window is too large, from + "
                f"size must be less than or equal to: [{_MAX_WINDOW}] but was "
                f"[{size + start}].",
            )
        # idf = log(1 + N/df) over the searched docs, so rare words outweigh common ones
        df: dict[str, int] = {}
        docs = [src for n in names for src in self.indices[n].docs.values()]
        for src in docs:
            text = [
                v
                for v in src.values()
                if isinstance(v, str)
                or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            ]
            for t in set(_tokens(text)):
                df[t] = df.get(t, 0) + 1
        self._idf = {t: math.log(1 + len(docs) / d) for t, d in df.items()}
        scores: dict[tuple[str, str], float] = {}
        if "retriever" in body:
            if "query" in body or "knn" in body:
                raise _Error(400, "illegal_argument_exception",
                             "cannot specify [retriever] and [query] or [knn]")
            ranked_r = retrieve(self, names, body["retriever"], size,
                                lambda clause: self._query_scores(names, clause))
            return self._response(names, ranked_r, None, body, start, size, len(ranked_r))
        knns = body.get("knn") or []
        knns = [knns] if isinstance(knns, dict) else knns
        if "query" in body or not knns:  # a knn-only search has no query part
            scores.update(self._query_scores(names, body.get("query", {"match_all": {}})))
        for knn in knns:
            for key, s in self._knn(names, knn).items():
                scores[key] = scores.get(key, 0.0) + s  # hybrid: scores add up, as in ES
        ranked: list[tuple[tuple[str, str], float | None, list[Any] | None]]
        if "sort" in body:
            ranked = self._sorted(names, scores, body["sort"], body.get("search_after"))
        else:
            ranked = [
                (key, s, None)
                for key, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0][1]))
            ]
        return self._response(names, [(key, s) for key, s, _ in ranked],
                              [sort for _, _, sort in ranked], body, start, size, len(scores))

    def _query_scores(self, names: list[str], query: dict[str, Any]) -> dict[tuple[str, str], float]:
        """Scores of the documents that match one query clause."""
        out: dict[tuple[str, str], float] = {}
        for n in names:
            for doc_id, src in self.indices[n].docs.items():
                s = self._match(query, src)
                if s is not None:
                    out[(n, doc_id)] = s
        return out

    def _response(self, names, ranked, sorts, body, start, size, total) -> dict[str, Any]:
        hits = []
        for i in range(start, min(start + size, len(ranked))):
            (n, d), s = ranked[i]
            sort = sorts[i] if sorts is not None else None
            hit = {"_index": n, "_id": d, "_score": s}
            src = _filter_source(self.indices[n].docs[d], body.get("_source", True))
            if src is not None:
                hit["_source"] = src
            if sort is not None:
                hit["sort"] = sort
            hits.append(hit)
        return {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": total, "relation": "eq"},
                "max_score": max(
                    (h["_score"] for h in hits if h["_score"] is not None), default=None
                ),
                "hits": hits,
            },
        }

    def _knn(self, names: list[str], knn: dict[str, Any]) -> dict[tuple[str, str], float]:
        """The top-k documents of one kNN clause (exact), as ``{(index, id): score}``."""
        unknown = sorted(set(knn) - _KNN_KEYS)
        if unknown:
            raise _Error(400, "x_content_parse_exception", f"[knn] unknown field [{unknown[0]}]")
        k, n_cand = knn.get("k", 10), knn.get("num_candidates", max(knn.get("k", 10), 100))
        if not isinstance(k, int) or k < 1:
            raise _Error(400, "illegal_argument_exception", "[k] must be greater than 0")
        if n_cand < k:
            raise _Error(
                400, "illegal_argument_exception", "[num_candidates] cannot be less than [k]"
            )
        if n_cand > _MAX_WINDOW:
            raise _Error(
                400, "illegal_argument_exception", f"[num_candidates] cannot exceed [{_MAX_WINDOW}]"
            )
        check_knn_options(self.version, knn)
        filters = knn.get("filter") or []
        filters = [filters] if isinstance(filters, dict) else filters
        q = knn["query_vector"]
        cands = []
        for n in names:
            path, spec = _vector_field(self.indices[n].mappings, knn["field"])
            if len(q) != spec["dims"]:
                raise _Error(
                    400,
                    "illegal_argument_exception",
                    "the query vector has a different "
                    f"number of dimensions [{len(q)}] than the index vectors "
                    f"[{spec['dims']}]",
                )
            for doc_id, src in self.indices[n].docs.items():
                if any(self._match(f, src) is None for f in filters):
                    continue
                if path is None:  # a top-level vector
                    vecs = [src.get(knn["field"])]
                else:  # nested: every nested object's vector; the best one scores the doc
                    objs = src.get(path) or []
                    objs = [objs] if isinstance(objs, dict) else objs
                    vecs = [o.get(knn["field"].split(".", 1)[1]) for o in objs]
                sims = [_cosine(q, decode_vector(self.version, knn["field"], v, len(q)))
                        for v in vecs if v is not None]
                if sims:
                    cands.append(((1 + max(sims)) / 2, (n, doc_id)))
        return {key: s for s, key in sorted(cands, key=lambda c: (-c[0], c[1]))[:k]}

    def _sorted(
        self,
        names: list[str],
        scores: dict[tuple[str, str], float],
        sort: Any,
        after: list[Any] | None,
    ) -> list[tuple[tuple[str, str], None, list[Any]]]:
        """Matching docs ordered by one keyword field, after ``search_after`` when given."""
        specs = sort if isinstance(sort, list) else [sort]
        if len(specs) != 1:
            raise _Error(400, "unsupported_by_double", "sort on more than one field")
        spec = specs[0]
        field, order = (spec, "asc") if isinstance(spec, str) else next(iter(spec.items()))
        order = order.get("order", "asc") if isinstance(order, dict) else order
        for n in names:
            ftype = self.indices[n].mappings.get("properties", {}).get(field, {}).get("type")
            if ftype is None:
                raise _Error(
                    400,
                    "query_shard_exception",
                    f"No mapping found for [{field}] in order to sort on",
                )
            if ftype != "keyword":
                raise _Error(
                    400,
                    "illegal_argument_exception",
                    "Text fields are not optimised "
                    "for operations that require per-document field data like "
                    f"aggregations and sorting; fielddata is disabled on [{field}]",
                )
        rows = sorted(
            ((str(self.indices[n].docs[d].get(field)), (n, d)) for n, d in scores),
            reverse=order == "desc",
        )
        if after is not None:
            rows = [r for r in rows if (r[0] < after[0] if order == "desc" else r[0] > after[0])]
        return [(key, None, [value]) for value, key in rows]


def _lookup(src: dict[str, Any], field: str) -> Any:
    """A field's value, reaching into objects (and flattened fields) along dots."""
    if field in src:
        return src[field]
    cur: Any = src
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _keyword(value: Any, fold: bool) -> str:
    """A value as a keyword field indexes it (booleans as true/false)."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text.lower() if fold else text


def _cosine(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / ((na * nb) or 1.0)


def _filter_source(src: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """``_source`` as a search's ``_source`` option asks (True, False, includes, or a dict)."""
    if spec is False:
        return None
    if spec is True:
        return dict(src)
    if isinstance(spec, (str, list)):
        spec = {"includes": [spec] if isinstance(spec, str) else spec}
    inc, exc = set(spec.get("includes", ())), set(spec.get("excludes", ()))
    return {k: v for k, v in src.items() if (not inc or k in inc) and k not in exc}


def _vector_field(mappings: dict[str, Any], field: str) -> tuple[str | None, dict[str, Any]]:
    """(nested path or None, mapping) of an indexed dense_vector field, else a 400."""
    props = mappings.get("properties", {})
    head, _, rest = field.partition(".")
    spec, path = props.get(field), None
    if rest and props.get(head, {}).get("type") == "nested":
        spec, path = props[head].get("properties", {}).get(rest), head
    if spec is None:
        raise _Error(
            400,
            "search_phase_execution_exception",
            f"failed to create query: field [{field}] does not exist in the mapping",
        )
    if spec.get("type") != "dense_vector" or spec.get("index") is False:
        raise _Error(
            400,
            "illegal_argument_exception",
            "[knn] queries are only supported on "
            f"indexed [dense_vector] fields, not [{field}] of type [{spec.get('type')}]",
        )
    return path, spec


def _check_mapping(mappings: dict[str, Any], settings: dict[str, Any], version: str) -> None:
    """Raise what index creation answers for a mapping this project could get wrong."""
    extra = sorted(set(mappings) - {"dynamic", "_meta", "properties"})
    if extra:
        raise _Error(
            400,
            "mapper_parsing_exception",
            f"Root mapping definition has unsupported parameters: {extra}",
        )
    if not isinstance(mappings.get("_meta", {}), dict):
        raise _Error(400, "mapper_parsing_exception", "[_meta] must be an object")
    normalizers = set(settings.get("analysis", {}).get("normalizer", {}))
    _check_properties(mappings.get("properties", {}), normalizers, "", version)


def _check_properties(props: dict[str, Any], normalizers: set[str], prefix: str,
                      version: str) -> None:
    for name, spec in props.items():
        field, ftype = prefix + name, spec.get("type")
        if ftype not in _MAPPER_PARAMS:
            raise _Error(
                400,
                "mapper_parsing_exception",
                f"No handler for type [{ftype}] declared on field [{field}]",
            )
        for param in spec:
            if param not in _MAPPER_PARAMS[ftype]:
                raise _Error(
                    400,
                    "mapper_parsing_exception",
                    f"unknown parameter [{param}] on mapper [{field}] of type [{ftype}]",
                )
        if ftype == "text" and spec.get("analyzer", "standard") not in _ANALYZERS:
            raise _Error(
                400,
                "mapper_parsing_exception",
                f"analyzer [{spec['analyzer']}] has not been configured in mappings",
            )
        if ftype == "keyword" and spec.get("normalizer", next(iter(normalizers), None)) not in (
            normalizers | {None}
        ):
            raise _Error(
                400,
                "mapper_parsing_exception",
                f"normalizer [{spec['normalizer']}] not found for field [{field}]",
            )
        if ftype == "dense_vector":
            dims = spec.get("dims")
            if not isinstance(dims, int) or not 1 <= dims <= 4096:
                raise _Error(
                    400,
                    "mapper_parsing_exception",
                    f"The number of dimensions should be in the range [1, 4096] but was "
                    f"[{dims}] on field [{field}]",
                )
            if spec.get("similarity", "cosine") not in _SIMILARITIES:
                raise _Error(
                    400,
                    "mapper_parsing_exception",
                    f"Unknown value [{spec['similarity']}] for field [similarity]",
                )
            check_index_options(version, field, spec)
        if ftype == "nested":
            _check_properties(spec.get("properties", {}), normalizers, field + ".", version)
        _check_properties(spec.get("fields", {}), normalizers, field + ".", version)


def _check_doc(mappings: dict[str, Any], src: dict[str, Any], version: str,
               prefix: str = "") -> None:
    """Raise what indexing answers for a document the mapping refuses."""
    props = mappings.get("properties", {})
    for name, value in src.items():
        spec, field = props.get(name), prefix + name
        if spec is None:
            if mappings.get("dynamic") == "strict":
                where = prefix.rstrip(".") or "_doc"
                why = f"dynamic introduction of [{name}] within [{where}] is not allowed"
                raise _Error(
                    400, "strict_dynamic_mapping_exception", f"mapping set to strict, {why}"
                )
            continue
        ftype, parse_error = (
            spec["type"],
            f"failed to parse field [{field}] of type [{spec['type']}]",
        )
        if ftype == "nested":
            objs = [value] if isinstance(value, dict) else value
            if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
                raise _Error(400, "document_parsing_exception", parse_error)
            inner = {"dynamic": spec.get("dynamic", mappings.get("dynamic")), **spec}
            for o in objs:
                _check_doc(inner, o, version, field + ".")
        elif ftype == "flattened":
            if not isinstance(value, dict):
                raise _Error(400, "document_parsing_exception", parse_error)
        elif ftype == "dense_vector":
            value = decode_vector(version, field, value, spec["dims"])
            if len(value) != spec["dims"]:
                why = f"has a different number of dimensions [{len(value)}] than defined"
                raise _Error(
                    400,
                    "document_parsing_exception",
                    f"The [dense_vector] field [{field}] {why} [{spec['dims']}]",
                )
            if spec.get("similarity", "cosine") == "cosine" and not any(value):
                raise _Error(
                    400,
                    "document_parsing_exception",
                    "The [cosine] similarity does not support vectors with zero magnitude.",
                )
            if spec.get("similarity") == "dot_product":
                check_unit_length(field, value)
        elif isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
        ):
            raise _Error(400, "document_parsing_exception", parse_error)


class _Handler(BaseHTTPRequestHandler):
    owner: EsDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "")
        body: Any = None
        if raw:
            if "ndjson" in ctype:
                body = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            else:
                body = json.loads(raw)
        self.owner.requests.append(
            Recorded(
                self.command,
                url.path,
                params,
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
        )
        try:
            status, payload = self.owner.handle(self.command, url.path, params, body)
        except _Error as e:
            status, payload = e.status, e.body
        except Exception as e:  # noqa: BLE001 - a double bug: answer, do not hang the client
            status, payload = 500, _Error(500, "double_crashed", repr(e)).body
        accept = self.headers.get("Accept", "")
        mime = (
            "application/vnd.elasticsearch+json;compatible-with=9"
            if "vnd.elasticsearch" in accept
            else "application/json"
        )
        data = b"" if self.command == "HEAD" else json.dumps(payload).encode()
        self.send_response(status)
        for k, v in _PRODUCT.items():
            self.send_header(k, v)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve
