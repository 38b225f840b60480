"""Reciprocal rank fusion of the channels' result lists (raw query, dense, rewritten query).

``score(d) = sum over lists l of  w_l / (k + rank_l(d))`` with 1-based ranks (Cormack et al.,
2009). A document missing from a list gets nothing from it, so a poor rewrite can only add
documents near the bottom; good raw results keep a high fused score.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rewriters.errors import ConfigError

__all__ = ["CHANNELS", "FusionWeights", "Fused", "fuse_channels", "rrf", "term_coverage"]


@dataclass(frozen=True)
class Fused:
    """One fused result."""

    id: str
    score: float  # RRF score; comparable only within one fused list
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank in each list it was in


def rrf(
    lists: Mapping[str, Sequence[str]],
    weights: Mapping[str, float] | None = None,
    k: int = 60,
    limit: int | None = None,
) -> list[Fused]:
    """Fuse ranked id lists with reciprocal rank fusion.

    Args:
        lists: name -> ids best first (duplicates after the first occurrence are ignored).
        weights: name -> weight >= 0; missing names weigh 1.0.
        k: RRF constant (> 0); larger flattens the head of each list.
        limit: keep this many fused results (None keeps all).

    Returns:
        Fused results best first. Ties break on the best rank reached, then on the id, so the
        output is the same for the same input.
    """
    if k <= 0:
        raise ConfigError(f"rrf k {k} must be > 0")
    weights = dict(weights or {})
    for name, w in weights.items():
        if w < 0:
            raise ConfigError(f"fusion weight for {name!r} is {w}; weights must be >= 0")
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, ids in lists.items():
        w = float(weights.get(name, 1.0))
        seen: set[str] = set()
        for rank, doc in enumerate(ids, start=1):
            if doc in seen:
                continue
            seen.add(doc)
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
            ranks.setdefault(doc, {})[name] = rank
    order = sorted(scores, key=lambda d: (-scores[d], min(ranks[d].values()), d))
    if limit is not None:
        order = order[:limit]
    return [Fused(d, scores[d], ranks[d]) for d in order]


# -- per-query channel weights ------------------------------------------------------------------

CHANNELS = ("raw", "dense", "rewrite")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class FusionWeights:
    """How much each channel's list counts for one query, from signals known at query time.

    ``w_raw = raw + raw_coverage × max(0, coverage − coverage_floor) / (1 − coverage_floor)``
    where coverage is the share of the query's words found in its top BM25 hits (words that
    match the catalogue make the raw list trustworthy; a query half of whose words the
    catalogue lacks is usually better served by the dense list);
    ``w_dense = dense``; ``w_rewrite = rewrite × (sim − floor) / (1 − floor)`` where sim is the
    embedding similarity of prompt and query, and a rewrite below ``rewrite_floor`` is dropped
    (weight 0), so an off-topic rewrite cannot push good raw hits down. ``raw``,
    ``raw_coverage``, ``coverage_floor``, ``dense`` and ``k`` are fitted on the training log when
    the index is built (``plugin.fusion_fit``); the rewrite's two come from the settings.
    """

    raw: float = 1.0  # base weight of the raw-query BM25 list, >= 0
    raw_coverage: float = 0.0  # added to the raw weight at full query-word coverage, >= 0
    coverage_floor: float = 0.0  # coverage at or below which nothing is added, [0, 1)
    dense: float = 1.0  # weight of the dense (embedding) list, >= 0
    rewrite: float = 1.0  # weight of a rewrite whose similarity to the query is 1, >= 0
    rewrite_floor: float = 0.5  # similarity below which the rewrite is dropped, [0, 1)
    k: int = 60  # RRF constant, >= 1

    def __post_init__(self) -> None:
        for name in ("raw", "raw_coverage", "dense", "rewrite"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fusion weight {name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.coverage_floor < 1:
            raise ConfigError(f"coverage_floor {self.coverage_floor} is out of range [0, 1)")
        if not 0 <= self.rewrite_floor < 1:
            raise ConfigError(f"rewrite_floor {self.rewrite_floor} is out of range [0, 1)")
        if self.k < 1:
            raise ConfigError(f"rrf k {self.k} must be >= 1")

    def for_query(self, coverage: float = 0.0, rewrite_sim: float | None = None
                  ) -> dict[str, float]:
        """Channel -> weight for one query; a channel weighted 0 is not used."""
        gain = max(0.0, coverage - self.coverage_floor) / (1 - self.coverage_floor)
        w = {"raw": self.raw + self.raw_coverage * gain, "dense": self.dense, "rewrite": 0.0}
        if rewrite_sim is not None and rewrite_sim > self.rewrite_floor:
            w["rewrite"] = self.rewrite * (rewrite_sim - self.rewrite_floor) / (
                1 - self.rewrite_floor)
        return {c: round(v, 6) for c, v in w.items()}


def _stem(word: str) -> str:
    return word[:5]  # a crude shared-prefix stem: "templates" ~ "template", "runner" ~ "running"


def term_coverage(query: str, hit_texts: Sequence[str]) -> float:
    """Share of the query's words found in the best of ``hit_texts`` (0 when none), in [0, 1].

    Words match on a 5-character prefix, a cheap stand-in for the index's stemmer.
    """
    words = {_stem(w) for w in _WORD.findall(query.casefold())}
    if not words or not hit_texts:
        return 0.0
    best = 0
    for text in hit_texts:
        have = {_stem(w) for w in _WORD.findall(text.casefold())}
        best = max(best, len(words & have))
    return best / len(words)


def fuse_channels(lists: Mapping[str, Sequence[str]], weights: Mapping[str, float], k: int,
                  limit: int | None = None) -> list[Fused]:
    """RRF of the channels whose weight is > 0 (a channel weighted 0 contributes nothing and
    its documents are not added)."""
    used = {c: ids for c, ids in lists.items() if weights.get(c, 0.0) > 0}
    return rrf(used, {c: weights[c] for c in used}, k, limit)
