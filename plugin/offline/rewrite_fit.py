"""Fit the rewrite channel's fusion weight and similarity floor on logged queries the rewriter
never trained on, so that the fused list only uses rewrites where they help.

The index-time fit (:mod:`plugin.fusion_fit`) sets the raw and dense weights; the rewrite
channel can only be fitted once a rewriter exists. After training (``udrl train``, or
``udrl fit-rewrite`` for an existing model):

1. fitting queries: the rewriter's own held-out queries (``heldout.jsonl``, never trained on)
   that the query log holds with 1..``max_clicked`` clicked catalogue items, at most
   ``max_queries`` (seeded sample);
2. a temporary template index from the catalogue and the log without those queries, so their
   clicks are not indexed (raw, dense and the rewriter's catalogue context all see them as
   unseen queries);
3. each fitting query is rewritten with the template task's default command and searched in
   the raw, dense and rewrite channels;
4. grid search over the rewrite weight and floor of :class:`plugin.fusion.FusionWeights` (the
   other weights as the published index and the settings give them) on nDCG@10 against the
   query's clicks. Weight 0 is the first grid point and wins ties, and the best point is kept
   only when its gain over raw + dense is significant (paired t-test, p < ``alpha``): the
   rewrite channel stays off unless it adds to raw + dense on queries it has never seen.

The result is saved as ``fusion.json`` next to the model; the pipeline applies it (when
``pipeline.fitted_fusion`` is on) to the model version it was fitted for.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rewriters.errors import ConfigError
from rewriters.retrieval_return import ndcg_at_k

from ..config import Settings
from ..fitted_weights import REWRITE_FIT_FILE, fusion_weights
from ..fusion import FusionWeights, fuse_channels, term_coverage

__all__ = ["RewriteFitConfig", "choose_rewrite_weights", "fit_rewrite_fusion", "fitting_queries"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewriteFitConfig:
    """How the rewrite channel's weights are fitted."""

    max_queries: int = 300  # fitting queries at most, 20..5000 (each is rewritten once)
    min_queries: int = 20  # below this many eligible held-out queries nothing is fitted
    max_clicked: int = 10  # eligible: queries that clicked 1..this many catalogue items
    depth: int = 100  # list depth per channel
    seed: int = 0  # which queries are sampled
    # the grid; the first point of each (weight 0) wins ties, so the channel stays off unless
    # it helps
    rewrite: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    rewrite_floor: tuple[float, ...] = (0.5, 0.3, 0.4, 0.6, 0.7)
    # the rewrite channel is turned on only when its gain over raw + dense is significant
    # (paired t-test over the fitting queries, two-sided p below this)
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 20 <= self.max_queries <= 5000:
            raise ConfigError(f"max_queries {self.max_queries} is out of range 20-5000")
        if any(not 0 <= f < 1 for f in self.rewrite_floor):
            raise ConfigError(f"rewrite_floor grid {self.rewrite_floor} must lie in [0, 1)")


def _heldout_queries(model_dir: Path) -> list[str]:
    path = model_dir / "heldout.jsonl"
    if not path.is_file():
        return []
    out: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out[json.loads(line)["query"]] = None
    return list(out)


def fitting_queries(heldout: list[str], qlog, ids: set[str], cfg: RewriteFitConfig) -> list[str]:
    """The held-out queries (as typed) the log holds with 1..max_clicked clicked catalogue
    items, a seeded sample of at most ``max_queries``, sorted."""
    from indexers.query_log import normalize_query

    eligible = sorted({q for q in heldout
                       if 1 <= len(set(qlog.clicked(q)) & ids) <= cfg.max_clicked},
                      key=normalize_query)
    n = min(cfg.max_queries, len(eligible))
    return sorted(random.Random(cfg.seed).sample(eligible, n)) if n >= cfg.min_queries else []


def _records(index) -> list:
    from indexers.catalog_templates import TemplateRecord

    return [TemplateRecord(id=d.id, title=d.title, category=d.category, tags=tuple(d.tags),
                           description=str(d.fields.get("description") or ""),
                           thumbnail=d.fields.get("thumbnail"))
            for d in index.documents()]


def fit_rewrite_fusion(settings: Settings, cfg: RewriteFitConfig | None = None,
                       progress: bool = True) -> dict[str, Any] | None:
    """Fit the rewrite weight and floor (see the module docstring) and save ``fusion.json``.

    Returns:
        What was saved (``rewrite``, ``rewrite_floor``, ``fitted_on``, ``ndcg@10`` of the
        fitted fusion, of raw + dense alone and of the settings' weights, versions, seconds),
        or None when there is no log, no template index or too few eligible queries.
    """
    from indexers.tantivy_index import build_tantivy_index, open_tantivy_index

    from ..grounded_jobs import query_log_of
    from ..hook import load_engine, open_indexes
    from ..index_settings import make_text_encoder
    from ..pipeline import Pipeline

    cfg = cfg or RewriteFitConfig()
    t0 = time.perf_counter()
    qlog = query_log_of(settings)
    index = open_indexes(settings, clip=False)[0] if settings.template_index_dir.is_dir() or (
        settings.index.template_backend == "elasticsearch" and settings.index.es_url) else None
    if qlog is None or index is None:
        log.info("no query log or template index: the rewrite channel's weights stay as set")
        return None
    records = _records(index)
    ids = {r.id for r in records}
    held = fitting_queries(_heldout_queries(settings.model_dir), qlog, ids, cfg)
    if not held:
        log.warning("too few held-out queries with clicks to fit the rewrite channel's weights;"
                    " the settings' weights are used")
        return None
    encoder = make_text_encoder(settings)
    base = fusion_weights(settings.pipeline, getattr(index, "fusion_params", None))
    rest = qlog.without(held)
    with tempfile.TemporaryDirectory(prefix="udrl-rewrite-fit-") as tmp:
        build_tantivy_index(records, tmp, expansions=rest.expansions(ids), encoder=encoder,
                            keep_versions=1)
        temp = open_tantivy_index(tmp, encoder=encoder)
        engine = load_engine(settings, temp)
        pipe = Pipeline(engine, None, settings, template_index=temp, text_encoder=encoder,
                        load_precomputed=False)
        model_version = pipe.model_version
        try:
            rows = [_channels(pipe, q, cfg.depth, encoder)
                    for q in tqdm(held, disable=not progress, desc="fitting the rewrite weight",
                                  unit="query")]
        finally:
            pipe.close()
            temp.close()
    rel = [{i: 1.0 for i in qlog.clicked(q) if i in ids} for q in held]
    out = choose_rewrite_weights(rows, rel, base, cfg)
    out.update({"fitted_on": len(held),
                "rewrites_used": sum(sim is not None for _, _, sim in rows),
                "model_version": model_version, "index_version": getattr(index, "version", None),
                "seconds": round(time.perf_counter() - t0, 2)})
    (settings.model_dir / REWRITE_FIT_FILE).write_text(json.dumps(out, indent=2) + "\n",
                                                       encoding="utf-8")
    log.info("rewrite channel fitted on %d held-out logged queries: weight %s, floor %s "
             "(nDCG@10 %.4f; without the rewrite %.4f)", len(held), out["rewrite"],
             out["rewrite_floor"], out["ndcg@10"]["fitted"], out["ndcg@10"]["without_rewrite"])
    return out


def choose_rewrite_weights(rows, rel, base: FusionWeights,
                           cfg: RewriteFitConfig) -> dict[str, Any]:
    """Grid-search the rewrite weight and floor (see the module docstring).

    Args:
        rows: per query ``({channel: ranked ids}, raw coverage, rewrite similarity or None)``;
            a query without a rewrite (it fell back) has no "rewrite" list.
        rel: per query, the relevant ids (its clicks) -> grade.
        base: the other weights (the index's fitted ones and the settings).

    Returns:
        ``rewrite``, ``rewrite_floor``, ``grid_points``, ``p_value`` (best grid point against
        no rewrite) and ``ndcg@10`` (fitted, without_rewrite, best_grid_point, settings).
    """
    def per_query(w: FusionWeights) -> np.ndarray:
        return np.array([ndcg_at_k([f.id for f in fuse_channels(
            lists, w.for_query(cov, sim), w.k, 10)], r, 10) for (lists, cov, sim), r in
            zip(rows, rel)])

    grid = [replace(base, rewrite=w, rewrite_floor=f) for w in cfg.rewrite
            for f in (cfg.rewrite_floor if w > 0 else cfg.rewrite_floor[:1])]
    scored = [(float(per_query(w).mean()), -i, w) for i, w in enumerate(grid)]  # ties: earlier
    top, _, best = max(scored, key=lambda t: (t[0], t[1]))
    without = per_query(replace(base, rewrite=0.0))
    p_value = _paired_p(per_query(best), without)
    if best.rewrite > 0 and not p_value < cfg.alpha:  # a gain within noise: keep it off
        log.info("the best rewrite weight %s gains %.4f nDCG@10 (p = %.3g): not significant, "
                 "the rewrite channel stays off", best.rewrite, top - without.mean(), p_value)
        best = replace(base, rewrite=0.0)
    return {"rewrite": best.rewrite, "rewrite_floor": best.rewrite_floor,
            "grid_points": len(grid),
            "p_value": None if np.isnan(p_value) else round(float(p_value), 4),
            "ndcg@10": {"fitted": round(float(per_query(best).mean()), 4),
                        "without_rewrite": round(float(without.mean()), 4),
                        "best_grid_point": round(top, 4),
                        "settings": round(float(per_query(base).mean()), 4)}}


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of a against b (nan when they never differ)."""
    from scipy.stats import ttest_rel

    if not np.any(a != b):
        return float("nan")
    return float(ttest_rel(a, b).pvalue)


def _channels(pipe, query: str, depth: int, encoder):
    """({channel: ids}, raw coverage, rewrite similarity or None) of one fitting query."""
    lists: dict[str, list[str]] = {}
    raw = pipe.retrieve(query, "template", "raw", depth)
    lists["raw"] = [r.id for r in raw.results]
    if pipe.template_index.has_dense and encoder is not None:
        lists["dense"] = [r.id for r in pipe.retrieve(query, "template", "dense", depth).results]
    rw = pipe.retrieve(query, "template", "rewrite", depth)
    sim = None
    if rw.path != "raw" and encoder is not None:
        vecs = encoder.encode([query, rw.prompt])  # (2, D)
        sim = float(np.dot(vecs[0], vecs[1]))
        lists["rewrite"] = [r.id for r in rw.results]
    cov = term_coverage(query, [" ".join([r.fields.get("title", ""), r.fields.get("category", ""),
                                          *r.fields.get("tags", ())]) for r in raw.results[:3]])
    return lists, cov, sim
