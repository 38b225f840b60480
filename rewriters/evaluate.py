"""Rewrite quality: does the model obey its commands?

The metric kernels are pure functions over lists/arrays; :func:`evaluate_rewriter` generates for a
set of held-out commands and applies them. ``udrl eval-rewriter`` and (later) ``udrl eval``'s
rewrite-quality report both use this one implementation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .commands import LENGTH_MAX, LENGTH_MIN, RELEVANCE_BUCKETS, Command
from .data import Example
from .errors import DataError

__all__ = [
    "length_mse",
    "within_k",
    "distinct_n",
    "relevance_by_bucket",
    "relevance_slope",
    "held_out_commands",
    "rewrite_quality",
    "evaluate_rewriter",
    "plot_length_errors",
]


def length_mse(targets: Sequence[int], achieved: Sequence[int]) -> float:
    """Mean squared error in words² between target and achieved lengths (nan when empty)."""
    t, a = np.asarray(targets, float), np.asarray(achieved, float)
    return float(np.mean((t - a) ** 2)) if t.size else float("nan")


def within_k(targets: Sequence[int], achieved: Sequence[int], k: int = 2) -> float:
    """Share of prompts whose length is within ±k words of the target (nan when empty)."""
    t, a = np.asarray(targets, float), np.asarray(achieved, float)
    return float(np.mean(np.abs(t - a) <= k)) if t.size else float("nan")


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams across ``texts`` (Li et al., 2016); 0.0 when none."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = t.lower().split()
        grams += [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def relevance_by_bucket(requested: Sequence[int], scores: Sequence[float]) -> dict[int, float | None]:
    """Mean achieved relevance score for each requested bucket (None where none requested)."""
    req, sc = np.asarray(requested, int), np.asarray(scores, float)
    out: dict[int, float | None] = {}
    for b in range(RELEVANCE_BUCKETS):
        m = req == b
        out[b] = float(sc[m].mean()) if m.any() else None
    return out


def relevance_slope(requested: Sequence[int], scores: Sequence[float],
                    groups: Sequence[Any], seed: int = 0) -> dict[str, Any]:
    """Relevance gained per requested bucket, paired within groups of the same query and length.

    Each group's least-squares slope of achieved relevance on requested bucket, averaged over
    the groups, with a 95% percentile-bootstrap interval over groups (2,000 resamples). Pairing
    removes what the query and length do to relevance, which the per-bucket means carry as
    noise: the mean can dip at one bucket while the slope is clearly positive, or the reverse.

    Returns:
        {"mean", "low", "high", "groups"}; nan bounds when fewer than 2 groups vary the bucket.
    """
    by: dict[Any, list[tuple[int, float]]] = {}
    for g, b, sc in zip(groups, requested, scores):
        by.setdefault(g, []).append((int(b), float(sc)))
    slopes = []
    for pts in by.values():
        b = np.array([p[0] for p in pts], float)
        if np.ptp(b) == 0:
            continue
        y = np.array([p[1] for p in pts], float)
        slopes.append(float(((b - b.mean()) * (y - y.mean())).sum() / ((b - b.mean()) ** 2).sum()))
    arr = np.asarray(slopes)
    if arr.size < 2:
        mean = float(arr.mean()) if arr.size else float("nan")
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "groups": int(arr.size)}
    rng = np.random.default_rng(seed)
    boot = arr[rng.integers(0, arr.size, size=(2000, arr.size))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high),
            "groups": int(arr.size)}


def held_out_commands(examples: Sequence[Example], n: int, seed: int = 0) -> list[tuple[str, Command]]:
    """About ``n`` (query, command) pairs over held-out queries, in groups of one per bucket.

    Each group draws a held-out (query, task) pair and a length uniformly from 3..40 and asks
    for it at every relevance bucket, so the buckets are compared on the same queries and
    lengths: relevance falls with length, and independent draws would bury the buckets'
    differences under the lengths'. ``n`` is rounded up to a whole number of groups. Each query
    is paired with a task it has data for, so commands are ones a caller could make.
    """
    pairs = sorted({(e.query, e.task) for e in examples})
    if not pairs:
        raise DataError("no held-out examples to draw evaluation commands from")
    rng = random.Random(seed)
    out = []
    for i in range(-(-n // RELEVANCE_BUCKETS)):
        query, task = pairs[rng.randrange(len(pairs))] if i >= len(pairs) else pairs[i]
        length = rng.randint(LENGTH_MIN, LENGTH_MAX)
        out += [(query, Command(task, length, b)) for b in range(RELEVANCE_BUCKETS)]
    rng.shuffle(out)
    return out


def rewrite_quality(
    commands: Sequence[Command], prompts: Sequence[str], words: Sequence[int],
    valid: Sequence[bool], relevance: Sequence[float], groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """All rewrite-quality numbers from generated outputs (pure; no model, no I/O).

    ``groups`` (one key per command, e.g. (query, task, length)) adds ``relevance_slope``.
    """
    targets = [c.length for c in commands]
    by_bucket = relevance_by_bucket([c.relevance for c in commands], relevance)
    filled = [v for v in by_bucket.values() if v is not None]
    slope = (relevance_slope([c.relevance for c in commands], relevance, groups)
             if groups is not None else None)
    return {
        "count": len(commands),
        "length_mse": length_mse(targets, words),
        "within_2": within_k(targets, words, 2),
        "exact_length": within_k(targets, words, 0),
        "mean_abs_length_error": float(np.mean(np.abs(np.subtract(targets, words)))) if targets else float("nan"),
        "relevance_by_bucket": {str(k): v for k, v in by_bucket.items()},
        "relevance_rises_with_bucket": bool(len(filled) > 1 and all(
            a < b for a, b in zip(filled, filled[1:]))),
        "relevance_spearman": _spearman([c.relevance for c in commands], relevance),
        "relevance_slope": slope,
        "distinct_2": distinct_n(prompts, 2),
        "invalid_rate": float(1 - np.mean(valid)) if len(valid) else float("nan"),
    }


def _ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate_rewriter(
    rewriter, scorer, commands: Sequence[tuple[str, Command]], strict_length: bool = False,
    decoding: str = "greedy", seed: int = 0, progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate one prompt per (query, command) and measure how well commands are obeyed.

    Returns:
        (metrics dict, per-item rows with query, command, prompt, words, relevance)
    """
    outs = rewriter.rewrite_batch(commands, n=1, strict_length=strict_length,
                                  decoding=decoding, seed=seed, progress=progress)
    rewrites = [o[0] for o in outs]
    queries = [q for q, _ in commands]
    rel = scorer.score(queries, [r.prompt or "-" for r in rewrites])
    metrics = rewrite_quality([c for _, c in commands], [r.prompt for r in rewrites],
                              [r.words for r in rewrites], [r.valid for r in rewrites], rel,
                              groups=[(q, c.task, c.length) for q, c in commands])
    metrics.update(strict_length=strict_length, decoding=decoding)
    rows = [
        {"query": q, "task": c.task, "length": c.length, "relevance": c.relevance,
         "prompt": r.prompt, "words": r.words, "score": float(s), "valid": r.valid,
         "problems": list(r.problems)}
        for (q, c), r, s in zip(commands, rewrites, rel)
    ]
    return metrics, rows


def plot_length_errors(rows_by_mode: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Histogram of achieved − target length per decoding mode, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.arange(-10.5, 11.5, 1.0)
    for mode, rows in rows_by_mode.items():
        err = np.clip([r["words"] - r["length"] for r in rows], -10, 10)
        ax.hist(err, bins=bins, alpha=0.55, label=mode)
    ax.set_xlabel("achieved − target length (words; clipped at ±10)")
    ax.set_ylabel("prompts")
    ax.set_title("Length control on held-out commands")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
