"""Safe rewriting: validation, the fallback chain and the rewrite cache.

A generated prompt is checked before it reaches an index. Rejected (empty or no letters or
digits, a word repeated back to back, far over or under the asked length, leaked command tokens,
a blocklisted term, or flagged by the rewriter) → retry by sampling → fall back to the raw query. Every outcome records the path
taken: ``rewrite`` (first try accepted), ``retry`` (a later try accepted), ``raw`` (the raw
query is used; ``reason`` says why, including ``deadline`` when the model did not answer in time).

The cache maps (the query's ``Query.key``, command, model version) to accepted prompts; it is
bounded (least recently used entries go first) and counts hits and misses. ``udrl rewrite-batch`` writes
precomputed rewrites to JSONL that the service loads into the cache at start.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field
from pydantic.dataclasses import dataclass

from rewriters.commands import Command
from rewriters.errors import ConfigError, DataError
from rewriters.files import file_mode
from rewriters.engines import Rewrite

from .query import Query

__all__ = [
    "PATHS",
    "PromptOutcome",
    "PromptPath",
    "RewriteCache",
    "check_prompt",
    "read_precomputed",
    "write_precomputed",
]

PromptPath = Literal["rewrite", "retry", "raw"]  # how a prompt was obtained, best to worst
PATHS: tuple[str, ...] = get_args(PromptPath)


# a pydantic dataclass: the HTTP API returns it as it is (``/v1/rewrite``'s ``prompts``)
@dataclass
class PromptOutcome:
    """The prompt a task searches with, and how it was obtained."""

    task: str
    command: dict[str, Any]  # task, length, relevance asked for
    prompt: str  # what the index is searched with (the raw query on path "raw")
    words: int
    path: PromptPath
    source: str  # model | cache | precomputed | none (raw query)
    attempts: int  # model calls made for this prompt
    rejected: list[str]  # why earlier attempts were refused
    reason: str | None  # why the raw query is used (path "raw")
    alternatives: list[str]  # extra prompts when n > 1
    requested: int = Field(1, description="Prompts asked for (the request's n).")
    returned: int = Field(1, description="Prompts returned: 1 + len(alternatives). Fewer than "
                          "requested when duplicates or refused prompts were dropped, or the "
                          "raw query was used.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_WORD = re.compile(r"[\w'-]+")


def check_prompt(
    rewrite: Rewrite, blocklist: Sequence[str] = (), max_over: int = 3
) -> list[str]:
    """Why a generated prompt must not be used; empty when it is fine.

    Args:
        rewrite: the rewriter's output (its own validation problems count too).
        blocklist: terms (case-insensitive, whole words or phrases) that must not appear.
        max_over: words over (or under) the asked length tolerated before "over length"
            ("under length").
    """
    problems = [p for p in rewrite.problems if not p.startswith("truncated")]
    text = rewrite.prompt
    if not text.strip():
        return problems or ["empty output"]
    if not any(c.isalnum() for c in text):
        problems.append("no letters or digits")
    if "<|" in text or "|>" in text:
        problems.append("leaked command token")
    words = [w.lower().strip(",.;:!?") for w in text.split()]
    if any(a and a == b for a, b in zip(words, words[1:])):
        problems.append("repeated words")
    if rewrite.words > rewrite.command.length + max_over:
        problems.append(f"over length ({rewrite.words} words for {rewrite.command.length})")
    if rewrite.words < rewrite.command.length - max_over:
        problems.append(f"under length ({rewrite.words} words for {rewrite.command.length})")
    lowered = " ".join(_WORD.findall(text.lower()))
    for term in blocklist:
        t = " ".join(_WORD.findall(term.lower()))
        if t and re.search(rf"(?<!\S){re.escape(t)}(?!\S)", lowered):
            problems.append(f"blocklisted term {term!r}")
    return list(dict.fromkeys(problems))


class RewriteCache:
    """Bounded LRU of accepted prompts keyed by (``Query.key``, command, model version).

    Thread-safe; ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, max_entries: int = 10_000):
        if max_entries < 0:
            raise ConfigError(f"cache size {max_entries} must be >= 0 (0 turns the cache off)")
        self.max_entries = max_entries
        self._data: OrderedDict[tuple, tuple[list[str], str]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(query: Query, command: Command, version: str) -> tuple:
        return (query.key, command.task, command.length, command.relevance, version)

    def get(self, query: Query, command: Command, version: str,
            count: bool = True) -> tuple[list[str], str] | None:
        """(prompts, source) for a key, or None; counts a hit or a miss (``count=False``: a
        look that neither counts nor refreshes the entry)."""
        k = self.key(query, command, version)
        with self._lock:
            value = self._data.get(k)
            if not count:
                return value
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(k)
            self.hits += 1
            return value

    def put(self, query: Query, command: Command, version: str, prompts: Sequence[str],
            source: str = "model") -> None:
        if self.max_entries == 0 or not prompts:
            return
        k = self.key(query, command, version)
        with self._lock:
            self._data[k] = (list(prompts), source)
            self._data.move_to_end(k)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "max_entries": self.max_entries, "hits": self.hits,
                "misses": self.misses}


def write_precomputed(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write precomputed rewrites as JSONL atomically; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def read_precomputed(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a precomputed-rewrite file and one message per unusable line (with its number).

    Each row: {"query", "task", "length", "relevance", "model_version", "prompts": [...]}.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read precomputed rewrites {path}: {e}") from e
    rows, rejects = [], []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            Command(row["task"], int(row["length"]), int(row["relevance"]))
            Query(str(row["query"]))  # the service's own check (ConfigError)
            if not isinstance(row["prompts"], list):
                raise TypeError("prompts must be a list")
            if not all(isinstance(p, str) and p.strip() for p in row["prompts"]):
                raise ValueError("prompts must be non-empty strings")
            row["model_version"] = str(row["model_version"])
        except (ValueError, KeyError, TypeError, ConfigError) as e:
            rejects.append(f"{path}:{no}: {e}")
            continue
        rows.append(row)
    return rows, rejects
