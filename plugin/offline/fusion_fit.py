"""Fit the fusion weights on the training query log, never on test queries.

When a template index is built with a log (``udrl index templates FILE --log LOG``), a sample
of the logged queries is held out: a temporary index is built from the rest of the log, each
held-out query is searched as an unseen query would be (raw BM25 and dense), and the weights of
:class:`plugin.fusion.FusionWeights` (``FITTED``) are chosen
by grid search on nDCG@10 against the held-out queries' own clicks. The published index then
uses the whole log; the weights are stored with it (``TemplateIndex.fusion_params``).
"""

from __future__ import annotations

import itertools
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from indexers.query_log import QueryLog
from indexers.tantivy_index import build_tantivy_index, open_tantivy_index
from rewriters.errors import ConfigError
from rewriters.retrieval_return import ndcg_at_k

from ..fitted_weights import FITTED
from ..fusion import FusionWeights, fuse_channels, term_coverage

__all__ = ["FusionFitConfig", "fit_fusion", "fit_queries"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FusionFitConfig:
    """How the fusion weights are fitted on the log."""

    max_queries: int = 300  # held-out logged queries at most, 20..5000
    share: float = 0.15  # share of the eligible logged queries held out, (0, 0.5]
    max_clicked: int = 10  # eligible: queries that clicked 1..this many catalogue items
    min_queries: int = 20  # below this many eligible queries nothing is fitted
    depth: int = 100  # list depth per channel
    seed: int = 0  # which queries are held out
    # the grid: raw base weight, raw weight per unit of coverage, dense weight, RRF k
    # (on a tie the earlier grid point wins, so each list starts at the plain equal-weight RRF)
    raw: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
    raw_coverage: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    coverage_floor: tuple[float, ...] = (0.0, 0.5, 0.9)
    dense: tuple[float, ...] = (1.0, 0.0)
    k: tuple[int, ...] = (60, 10)

    def __post_init__(self) -> None:
        if not 20 <= self.max_queries <= 5000:
            raise ConfigError(f"max_queries {self.max_queries} is out of range 20-5000")
        if not 0 < self.share <= 0.5:
            raise ConfigError(f"share {self.share} is out of range (0, 0.5]")


def fit_queries(qlog: QueryLog, ids: set[str], cfg: FusionFitConfig) -> list[str]:
    """The normalised logged queries held out for fitting (seeded, sorted before sampling)."""
    eligible = sorted(q for q, c in qlog.clicks.items()
                      if 1 <= len(set(c) & ids) <= cfg.max_clicked)
    n = min(cfg.max_queries, int(len(eligible) * cfg.share))
    return sorted(random.Random(cfg.seed).sample(eligible, n)) if n >= cfg.min_queries else []


def _grid(cfg: FusionFitConfig):
    for raw, cov, floor, dense, k in itertools.product(cfg.raw, cfg.raw_coverage,
                                                       cfg.coverage_floor, cfg.dense, cfg.k):
        if raw + cov + dense > 0 and (cov > 0 or floor == 0):
            yield FusionWeights(raw=raw, raw_coverage=cov, coverage_floor=floor, dense=dense,
                                k=k)


def fit_fusion(records: Sequence[Any], qlog: QueryLog | None, encoder,
               cfg: FusionFitConfig | None = None, progress: bool = True) -> dict[str, Any] | None:
    """Fit the fusion weights on held-out logged queries (see the module docstring).

    Args:
        records: the catalogue's ``TemplateRecord``s.
        qlog: the training log; None (or too few eligible queries) fits nothing.
        encoder: the dense channel's text encoder; None fits the raw weights only.

    Returns:
        ``{<each of FITTED>, "fitted_on", "ndcg@10": {...}, "seconds"}`` or
        None when nothing could be fitted.
    """
    cfg = cfg or FusionFitConfig()
    if qlog is None:
        return None
    t0 = time.perf_counter()
    ids = {r.id for r in records}
    held = fit_queries(qlog, ids, cfg)
    if not held:
        log.warning("the query log has too few clicked queries to fit fusion weights; the "
                    "settings' weights are used")
        return None
    rest = qlog.without(held)
    with tempfile.TemporaryDirectory(prefix="udrl-fusion-fit-") as tmp:
        build_tantivy_index(records, tmp, expansions=rest.expansions(ids), encoder=encoder,
                            keep_versions=1)
        index = open_tantivy_index(tmp, encoder=encoder)
        texts = [qlog.texts[q] for q in held]
        raw = index.search_batch(texts, cfg.depth)
        dense = (index.search_dense_batch(texts, cfg.depth) if encoder is not None
                 else [[] for _ in texts])
        index.close()
    rel = [{i: 1.0 for i in qlog.clicks[q] if i in ids} for q in held]
    cover = [term_coverage(t, [" ".join([h.title, h.category, *h.tags]) for h in hits[:3]])
             for t, hits in zip(texts, raw)]
    lists = [{"raw": [h.id for h in r], "dense": [h.id for h in d]} for r, d in zip(raw, dense)]

    def score(w: FusionWeights) -> float:
        return float(np.mean([ndcg_at_k([f.id for f in fuse_channels(
            ls, w.for_query(c), w.k, 10)], r, 10) for ls, c, r in zip(lists, cover, rel)]))

    grid = [w for w in _grid(cfg) if encoder is not None or w.dense == 0]
    scored = [(score(w), -i, w) for i, w in enumerate(grid)]  # ties: the earlier grid point
    best_score, _, best = max(scored, key=lambda t: (t[0], t[1]))
    single = {"raw": score(FusionWeights(raw=1, dense=0)),
              "dense": score(FusionWeights(raw=0, dense=1)) if encoder is not None else None,
              "equal_rrf": score(FusionWeights(raw=1, dense=1 if encoder is not None else 0))}
    out = {n: v for n, v in asdict(best).items() if n in FITTED}
    out.update({"fitted_on": len(held), "grid_points": len(grid),
                "ndcg@10": {"fitted": round(best_score, 4),
                            **{n: None if v is None else round(v, 4) for n, v in single.items()}},
                "seconds": round(time.perf_counter() - t0, 2)})
    if progress:
        log.info("fusion weights fitted on %d held-out logged queries: %s (nDCG@10 %.4f; raw "
                 "%.4f, dense %s)", len(held), {n: out[n] for n in FITTED},
                 best_score, single["raw"], single["dense"])
    return out
