"""The fusion weights fitted offline, as the serving side reads them.

The fits themselves run offline (``plugin.offline.fusion_fit`` when a template index is built,
``plugin.offline.rewrite_fit`` after training); the pipeline only needs to combine their
results with the settings, which is all this module does, so serving never imports the
offline fitting code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .fusion import FusionWeights

__all__ = ["FITTED", "REWRITE_FIT_FILE", "fusion_weights", "read_rewrite_fit"]

FITTED = ("raw", "raw_coverage", "coverage_floor", "dense", "k")  # fitted with the index
REWRITE_FIT_FILE = "fusion.json"  # next to the model: the fitted rewrite weight and floor

log = logging.getLogger(__name__)


def fusion_weights(p, fitted: dict[str, Any] | None = None) -> FusionWeights:
    """The fusion weights of the pipeline settings ``p``, with those fitted on the training
    log replaced when ``p.fitted_fusion``: ``FITTED`` (from the index) and ``rewrite`` /
    ``rewrite_floor`` (from ``plugin.offline.rewrite_fit``, next to the model)."""
    base = dict(raw=p.raw_weight, raw_coverage=p.coverage_weight,
                coverage_floor=p.coverage_floor, dense=p.dense_weight,
                rewrite=p.rewrite_weight, rewrite_floor=p.rewrite_floor, k=p.rrf_k)
    if fitted and p.fitted_fusion:
        base.update({n: fitted[n] for n in (*FITTED, "rewrite", "rewrite_floor") if n in fitted})
    return FusionWeights(**base)


def read_rewrite_fit(model_dir: Path, model_version: str | None) -> dict[str, float] | None:
    """The fitted ``rewrite`` and ``rewrite_floor`` for this model version (None: none saved,
    unreadable, or fitted for another model)."""
    path = Path(model_dir) / REWRITE_FIT_FILE
    try:
        fit = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if fit.get("model_version") not in (None, model_version):
        log.warning("%s was fitted for model %s, not %s; it is ignored (run `udrl fit-rewrite`)",
                    path, fit.get("model_version"), model_version)
        return None
    return {k: float(fit[k]) for k in ("rewrite", "rewrite_floor") if k in fit}
