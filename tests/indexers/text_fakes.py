"""A deterministic stand-in for the sentence encoder of the dense channel (no model download),
and the dense channel's brute-force reference.

``WordEncoder`` embeds a text as its hashed bag of words (md5 of each casefolded word, modulo
``dim``), L2-normalised, float32: two texts sharing no word have cosine 0 unless two of their
words collide in a bucket (``collides`` lets a test check it has none), and a text equals
itself. ``calls`` records every batch, so tests can check what was encoded.
``TextRandEncoder`` gives each distinct text a seeded random unit vector instead: equal
texts embed equal, others nearly orthogonal.

``brute_scores`` is the score ``indexers.dense`` documents, in float64::

    centroid(item) = normalise(item_weight * item rows + sum of query rows)
    score(q, item) = cos(q, centroid) + max_weight * max over the item's rows cos(q, row)

and ``brute_top`` ranks it best first, ties on the item id.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

__all__ = ["TextRandEncoder", "WordEncoder", "brute_scores", "brute_top", "bucket",
           "dense_rows"]

_WORD = re.compile(r"[^\W_]+")


def bucket(word: str, dim: int) -> int:
    """The dimension ``word`` lands in."""
    return int(hashlib.md5(word.casefold().encode()).hexdigest(), 16) % dim


class WordEncoder:
    """Hashed bag of words -> unit float32 vector; an empty text maps to the zero vector.

    ``synonyms`` maps a word to the word it is embedded as (a "semantic" match that BM25,
    which sees the words themselves, does not make).
    """

    def __init__(self, dim: int = 512, name: str | None = None,
                 synonyms: dict[str, str] | None = None):
        self.dim = dim
        self.name = name or f"words-{dim}"
        self.synonyms = {a.casefold(): b.casefold() for a, b in (synonyms or {}).items()}
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.casefold()):
                out[i, bucket(self.synonyms.get(w, w), self.dim)] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def collides(self, word: str, others) -> bool:
        """True when ``word`` shares a bucket with any word of the texts ``others``."""
        b = bucket(word, self.dim)
        return any(bucket(w, self.dim) == b for t in others for w in _WORD.findall(t.casefold())
                   if w != word.casefold())


class TextRandEncoder:
    """A seeded random unit vector per distinct text: equal texts embed equal, others nearly
    orthogonal (no ties), so the nearest row of a query is the row with its exact text."""

    def __init__(self, dim: int = 24):
        self.name, self.dim = f"text-rand-{dim}", dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.md5(t.encode()).hexdigest()[:16], 16)
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def brute_scores(vectors, row_ids, kinds, cfg, queries) -> list[dict[str, float]]:
    """Every item's documented score, for each query vector (float64)."""
    rows, q = _unit(vectors), _unit(np.atleast_2d(queries))  # (R, D), (Q, D)
    groups: dict[str, list[int]] = {}
    for r, item in enumerate(row_ids):
        groups.setdefault(item, []).append(r)
    out = [{} for _ in q]
    for item, mine in groups.items():
        w = np.array([cfg.item_weight if kinds[r] == "item" else 1.0 for r in mine])
        centroid = _unit((w[:, None] * rows[mine]).sum(axis=0))  # (D,)
        score = q @ centroid + cfg.max_weight * (q @ rows[mine].T).max(axis=1)  # (Q,)
        for d, s in zip(out, score):
            d[item] = float(s)
    return out


def brute_top(scores: dict[str, float], k: int, allow=None) -> list[tuple[str, float]]:
    items = [(i, s) for i, s in scores.items() if allow is None or allow.get(i, False)]
    return sorted(items, key=lambda t: (-t[1], t[0]))[:k]


def dense_rows(records, expansions) -> tuple[list[str], list[str], list[str]]:
    """(texts, row ids, kinds) of the rows a tantivy build embeds: each template's
    ``dense_text`` ("item"), then each logged query that clicked it ("query")."""
    from indexers.tantivy_index import dense_text

    texts, ids, kinds = [], [], []
    for r in records:
        texts.append(dense_text(r)), ids.append(r.id), kinds.append("item")
        for q in expansions.get(r.id, ()):
            texts.append(q), ids.append(r.id), kinds.append("query")
    return texts, ids, kinds
