"""Reciprocal rank fusion of the raw-query and rewritten-query result lists.

``score(d) = sum over lists l of  w_l / (k + rank_l(d))`` with 1-based ranks (Cormack et al.,
2009). A document missing from a list gets nothing from it, so a poor rewrite can only add
documents near the bottom; good raw results keep a high fused score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rewriters.errors import ConfigError

__all__ = ["Fused", "rrf"]


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
