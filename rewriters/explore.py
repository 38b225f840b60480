"""One UDRL exploration round: command the best returns, see what was achieved, relabel.

Following Schmidhuber / Srivastava et al.'s upside-down RL, exploratory commands ask for a return
drawn uniformly from [mean, mean + std] of the top share of returns seen so far; lengths are
drawn over the whole range callers may ask for, and the top share is taken among the returns of
prompts of similar length (the length band the relevance buckets use). Whatever the samples
achieve becomes their label (hindsight relabelling), so even a miss is a correct training
example for the command it actually fulfils.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from .commands import LENGTH_MAX, LENGTH_MIN, Command
from .data import Example
from .rewards import BucketEdges, Scorer

__all__ = ["exploratory_commands", "explore_round"]


def exploratory_commands(
    data: list[Example], edges: BucketEdges, n: int, top_share: float, rng: random.Random
) -> tuple[list[tuple[Example, Command]], dict[str, float]]:
    """Sample ``n`` commands aimed at the best part of the relevance distribution.

    Returns:
        ((source example, command) pairs, the target band averaged over the length bands,
        {"target_low", "target_high"})
    """
    scores = np.asarray([e.relevance for e in data], dtype=float)
    band_of = edges.band([e.words for e in data])
    targets = []
    for b in range(len(edges.starts)):
        mine = np.sort(scores[band_of == b]) if (band_of == b).any() else np.sort(scores)
        top = mine[-max(1, int(len(mine) * top_share)):]
        targets.append((float(top.mean()), float(top.mean() + top.std())))
    out = []
    for _ in range(n):
        src = data[rng.randrange(len(data))]
        length = rng.randint(LENGTH_MIN, LENGTH_MAX)
        low, high = targets[int(edges.band([length])[0])]
        bucket = int(edges.assign([rng.uniform(low, high)], [length])[0])
        out.append((src, Command(src.task, length, bucket)))
    return out, {"target_low": float(np.mean([t[0] for t in targets])),
                 "target_high": float(np.mean([t[1] for t in targets]))}


def explore_round(
    rewriter, scorer: Scorer, data: list[Example], edges: BucketEdges, cfg, round_no: int
) -> tuple[list[Example], dict[str, Any]]:
    """Generate for exploratory commands and relabel the samples with their achieved returns.

    Returns:
        (new examples not already in ``data``, statistics of the round)
    """
    rng = random.Random(cfg.seed * 1009 + round_no)
    pairs, band = exploratory_commands(data, edges, cfg.explore_per_round, cfg.top_share, rng)
    outs = rewriter.rewrite_batch([(src.query, cmd) for src, cmd in pairs], n=1,
                                  decoding="sample", temperature=1.0, seed=cfg.seed + round_no)
    rewrites = [o[0] for o in outs]
    rel = scorer.score([src.query for src, _ in pairs], [r.prompt or "-" for r in rewrites])
    buckets = edges.assign(rel, [r.words for r in rewrites])
    seen = {e.key() for e in data}
    new: list[Example] = []
    for (src, cmd), rw, s, b in zip(pairs, rewrites, rel, buckets):
        if not rw.valid or not LENGTH_MIN <= rw.words <= LENGTH_MAX:
            continue
        ex = Example(query=src.query, task=cmd.task, prompt=rw.prompt,
                     teacher=f"udrl:round-{round_no}", intent=src.intent, words=rw.words,
                     relevance=round(float(np.clip(s, -1, 1)), 6), bucket=int(b))
        if ex.key() not in seen:
            seen.add(ex.key())
            new.append(ex)
    asked = np.array([c.relevance for _, c in pairs])
    return new, {
        "explored": len(pairs),
        "added": len(new),
        **band,
        "explore_mean_relevance": float(np.mean(rel)) if len(rel) else float("nan"),
        "explore_bucket_hit": float(np.mean(buckets >= asked)) if len(rel) else float("nan"),
        "explore_mean_abs_length_error": float(np.mean(
            [abs(r.words - c.length) for r, (_, c) in zip(rewrites, pairs)])),
    }
