"""Query logs with clicks: what real users searched for, and which items they chose.

A log is a UTF-8 text file with one event per line::

    query                     a search with no click
    query<TAB>clicked_id      a search and the item clicked (one line per click; queries repeat)

Blank lines and lines starting with ``#`` are skipped. A line with more than one TAB, an empty
query or an empty id is rejected with its line number (never dropped silently); rejects are
returned, and ``write_log_rejects`` stores them as JSONL ``{"file", "line", "reason"}``.

Queries are matched after :func:`normalize_query` (whitespace collapsed, casefolded), so
``"Dog "`` and ``"dog"`` are one query. The log is the knowledge that lets search learn from its
users: an item is expanded with the logged queries that clicked it (``expansions``), and the
rewriter's teacher grounds a query in the items clicked for it and for similar logged queries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .jsonl import numbered_lines

__all__ = [
    "LogReject",
    "QueryLog",
    "normalize_query",
    "read_query_log",
    "unknown_clicks",
    "write_log_rejects",
]


def normalize_query(query: str) -> str:
    """The form queries are matched in: whitespace collapsed, casefolded."""
    return " ".join(query.split()).casefold()


@dataclass(frozen=True)
class LogReject:
    """A log line that could not be used."""

    file: str
    line: int
    reason: str


@dataclass
class QueryLog:
    """Logged queries and their clicks, keyed by normalised query."""

    texts: dict[str, str] = field(default_factory=dict)  # normalised -> first text as typed
    searches: Counter[str] = field(default_factory=Counter)  # normalised -> lines (events)
    clicks: dict[str, Counter[str]] = field(default_factory=dict)  # normalised -> id -> clicks

    @classmethod
    def from_events(cls, events: Iterable[tuple[str, str | None]]) -> QueryLog:
        """Build a log from ``(query, clicked_id or None)`` events."""
        log = cls()
        for query, item in events:
            log.add(query, item)
        return log

    def add(self, query: str, item: str | None = None) -> None:
        """Record one search (and its click, when ``item`` is given)."""
        key = normalize_query(query)
        if not key:
            raise DataError("a logged query is empty; every line needs some search text")
        self.texts.setdefault(key, " ".join(query.split()))
        self.searches[key] += 1
        if item is not None:
            self.clicks.setdefault(key, Counter())[item] += 1

    def __len__(self) -> int:
        return len(self.texts)

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and normalize_query(query) in self.texts

    @property
    def click_count(self) -> int:
        """Total clicks (lines with an id)."""
        return sum(sum(c.values()) for c in self.clicks.values())

    def clicked(self, query: str) -> dict[str, int]:
        """Items clicked for ``query`` (normalised), most clicked first; {} when none."""
        got = self.clicks.get(normalize_query(query))
        return dict(sorted(got.items(), key=lambda kv: (-kv[1], kv[0]))) if got else {}

    def expansions(self, ids: Iterable[str] | None = None,
                   max_per_item: int = 50) -> dict[str, list[str]]:
        """Item id -> the logged queries (as typed) that clicked it, most clicks first.

        Args:
            ids: keep only these items (e.g. the catalogue's ids); None keeps every clicked id.
            max_per_item: at most this many queries per item (a head item clicked by
                thousands of queries would otherwise drown its own title).
        """
        keep = None if ids is None else set(ids)
        per_item: dict[str, list[tuple[int, str]]] = {}
        for key, items in self.clicks.items():
            for item, n in items.items():
                if keep is None or item in keep:
                    per_item.setdefault(item, []).append((n, key))
        return {item: [self.texts[k] for _, k in sorted(qs, key=lambda t: (-t[0], t[1]))
                       [:max_per_item]]
                for item, qs in sorted(per_item.items())}

    def without(self, queries: Iterable[str]) -> QueryLog:
        """A copy with these queries (any form; matched normalised) left out."""
        drop = {normalize_query(q) for q in queries}
        out = QueryLog()
        for key, text in self.texts.items():
            if key in drop:
                continue
            out.texts[key] = text
            out.searches[key] = self.searches[key]
            if key in self.clicks:
                out.clicks[key] = Counter(self.clicks[key])
        return out

    def overlap(self, queries: Iterable[str]) -> list[str]:
        """The given queries that the log holds (normalised match), in the given order."""
        return [q for q in queries if normalize_query(q) in self.texts]

    def checksum(self) -> str:
        """A digest of the log's content, independent of line order."""
        h = hashlib.sha256()
        for key in sorted(self.texts):
            h.update(key.encode())
            h.update(b"\x00%d\x00" % self.searches[key])
            for item, n in sorted(self.clicks.get(key, {}).items()):
                h.update(f"{item}\x01{n}\x02".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, int]:
        """Counts for reports: distinct queries, searches, clicks, clicked items."""
        items = {i for c in self.clicks.values() for i in c}
        return {"queries": len(self.texts), "searches": sum(self.searches.values()),
                "clicks": self.click_count, "clicked_items": len(items)}


def read_query_log(path: str | os.PathLike[str]) -> tuple[QueryLog, list[LogReject]]:
    """Read a ``query`` / ``query<TAB>clicked_id`` log.

    Returns:
        The log and the rejected lines (file, line, reason).

    Raises:
        DataError: the file is missing, unreadable, not UTF-8, or holds no valid line.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"query log {path} is a directory; pass a file of query<TAB>id lines")
    log, rejects = QueryLog(), []
    for n, raw in numbered_lines(path, "query log", undecodable="is not UTF-8 text"):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        reason = None
        if len(fields) > 2:
            reason = f"expected 'query' or 'query<TAB>clicked_id', got {len(fields)} fields"
        elif not fields[0].strip():
            reason = "the query is empty"
        elif len(fields) == 2 and not fields[1].strip():
            reason = "the clicked id after the TAB is empty"
        if reason:
            rejects.append(LogReject(str(path), n, reason))
            continue
        log.add(fields[0], fields[1].strip() if len(fields) == 2 else None)
    if not len(log):
        raise DataError(f"query log {path} holds no valid line ({len(rejects)} rejected); "
                        "expected 'query' or 'query<TAB>clicked_id' per line")
    return log, rejects


def write_log_rejects(path: str | os.PathLike[str], rejects: Iterable[LogReject]) -> Path:
    """Write rejected log lines as JSONL (replaces the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps({"file": r.file, "line": r.line, "reason": r.reason}) + "\n")
    return path


def unknown_clicks(log: QueryLog, ids: Mapping[str, object] | set[str]) -> int:
    """Clicks on ids the catalogue does not hold (reported, not fatal)."""
    return sum(n for c in log.clicks.values() for i, n in c.items() if i not in ids)
