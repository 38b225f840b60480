"""A local HTTP stand-in for Elasticsearch 9.x, enough for the official client and our index.

Served by ``http.server.ThreadingHTTPServer`` on a free 127.0.0.1 port in a daemon thread.
Every request is recorded (method, path, params, parsed body) for assertions. It keeps indices,
mappings, aliases and documents in memory; documents become searchable on ``_refresh`` as in
the real thing. Search is a trivial term match (score = sum over fields of boost x term count
x idf, plus a cosine kNN part when asked), enough for ranking tests to see a distinctive word
win. Faults can be injected:

    fail_docs[id] = (400, "document_parsing_exception")   that item fails every time
    throttle_docs[id] = n                                  that item gets 429 n times
    throttle_bulk = n                                      the next n _bulk requests get 429
    fail(method, path_regex, status, times)                any route answers an error
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

__all__ = ["EsDouble", "Recorded"]

_TOKEN = re.compile(r"[^\W_]+")
_PRODUCT = {"X-Elastic-Product": "Elasticsearch"}


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
                if op == "_msearch":
                    resps = [{**self._search(target, b), "status": 200} for b in (body or [])[1::2]]
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
            else:
                self.indices[index].pending[doc_id] = source
                item.update(status=201, result="created", _version=1)
            items.append({op: item})
        errors = any(v["status"] >= 300 for it in items for v in it.values())
        return 200, {"took": 1, "errors": errors, "items": items}

    # -- search ----------------------------------------------------------------------------
    def _match(self, clause: dict[str, Any], src: dict[str, Any]) -> float | None:
        """Score of a doc for one query clause, None when it does not match."""
        ((kind, spec),) = clause.items()
        if kind == "match_all":
            return 1.0
        if kind == "multi_match":
            terms = set(_tokens(spec["query"]))
            score = 0.0
            for f in spec.get("fields", ["*"]):
                name, _, boost = f.partition("^")
                tf = sum(self._idf.get(t, 1.0) for t in _tokens(src.get(name)) if t in terms)
                score += float(boost or 1.0) * tf
            return score or None
        if kind in ("term", "terms"):
            ((fld, want),) = spec.items()
            values = src.get(fld.removesuffix(".keyword"))
            values = values if isinstance(values, list) else [values]
            have = {str(v).lower() for v in values if v is not None}
            wants = want if kind == "terms" else [want]
            return 0.0 if any(str(w).lower() in have for w in wants) else None
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
        query = body.get("query", {"match_all": {}})
        for n in names:
            for doc_id, src in self.indices[n].docs.items():
                s = self._match(query, src)
                if s is not None:
                    scores[(n, doc_id)] = s
        knn = body.get("knn")
        if knn:
            q = knn["query_vector"]
            qn = math.sqrt(sum(x * x for x in q)) or 1.0
            cands = []
            for n in names:
                for doc_id, src in self.indices[n].docs.items():
                    v = src.get(knn["field"])
                    if v is None or any(self._match(f, src) is None for f in knn.get("filter", [])):
                        continue
                    cos = sum(a * b for a, b in zip(q, v)) / (
                        qn * (math.sqrt(sum(x * x for x in v)) or 1.0)
                    )
                    cands.append(((1 + cos) / 2, (n, doc_id)))
            for s, key in sorted(cands, reverse=True)[: knn["k"]]:
                scores[key] = scores.get(key, 0.0) + s  # hybrid: scores add up, as in ES
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0][1]))[: body.get("size", 10)]
        excludes = set((body.get("_source") or {}).get("excludes", []))
        hits = [
            {
                "_index": n,
                "_id": d,
                "_score": s,
                "_source": {k: v for k, v in self.indices[n].docs[d].items() if k not in excludes},
            }
            for (n, d), s in ranked
        ]
        return {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(scores), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }


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
