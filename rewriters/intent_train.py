"""Training, calibration and evaluation of the intent detector (``rewriters.intent``).

``train_intent`` fits the multinomial logistic regression on the distilled examples' labelled
queries with torch, then a temperature on held-out queries (``fit_temperature``);
``evaluate_intent`` reports accuracy, calibration and latency of a detector.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .commands import INTENTS
from .data import Example
from .errors import DataError
from .intent import IntentConfig, IntentDetector, _softmax, featurize

__all__ = ["evaluate_intent", "expected_calibration_error", "fit_temperature", "train_intent"]

MIN_QUERIES = 10  # fewer distinct labelled queries than this cannot train anything useful


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence over equal-width bins.

    Args:
        probs: (N, C) predicted probabilities.
        labels: (N,) true class indices.
        n_bins: number of equal-width confidence bins on [0, 1].

    Returns:
        sum over bins of |accuracy - mean confidence| weighted by the bin's share of N; 0 if N=0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    # per bin |sum correct - sum conf| / N  ==  |accuracy - confidence| * bin share
    gaps = np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins)
    return float(np.abs(gaps).sum() / len(probs))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0
) -> float:
    """Temperature T in [lo, hi] minimising the NLL of softmax(logits / T).

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search finds the minimum;
    T = 1 is kept if the search does not beat it, so calibration never raises the NLL.

    Args:
        logits: (N, C) uncalibrated scores.
        labels: (N,) true class indices.

    Returns:
        the temperature (> 0); 1.0 when N = 0.
    """
    if len(labels) == 0:
        return 1.0
    f = lambda log_t: _nll(logits / math.exp(log_t), labels)
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    log_t = (a + b) / 2
    return math.exp(log_t) if f(log_t) < f(0.0) else 1.0


def _label_queries(examples: Sequence[Example]) -> tuple[list[str], list[int], int]:
    """One (query, majority intent index) per distinct lower-cased query, plus conflicts."""
    votes: dict[str, Counter] = {}
    for e in examples:
        votes.setdefault(e.query.lower(), Counter())[e.intent] += 1
    queries, labels, conflicts = [], [], 0
    for q, c in votes.items():
        ranked = c.most_common()
        top = ranked[0][0]
        if len(ranked) > 1:
            conflicts += 1
            if ranked[1][1] == ranked[0][1]:
                top = "both"  # a tie means sources disagree on the query: it is ambiguous
        queries.append(q)
        labels.append(INTENTS.index(top))
    return queries, labels, conflicts


def _fit(feats: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray, cfg: IntentConfig,
         rng: np.random.Generator, progress: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial logistic regression with Adam; EmbeddingBag(sum) is the sparse linear layer."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    lengths = np.array([len(i) for i, _ in feats], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    flat_idx = torch.from_numpy(np.concatenate([i for i, _ in feats]))
    flat_val = torch.from_numpy(np.concatenate([v for _, v in feats]))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    bag = torch.nn.EmbeddingBag(cfg.n_features, len(INTENTS), mode="sum")
    torch.nn.init.zeros_(bag.weight)  # the problem is convex: zeros are a fine, seed-free start
    bias = torch.nn.Parameter(torch.zeros(len(INTENTS)))
    opt = torch.optim.Adam([bag.weight, bias], lr=cfg.lr)
    bar = tqdm(range(cfg.epochs), desc="training intent", unit="epoch", disable=not progress)
    loss_sum = 0.0
    for _ in bar:
        order, loss_sum = rng.permutation(len(feats)), 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            n = lengths[rows]
            # positions of the batch rows' features in the flat arrays, without a Python loop
            pos = np.repeat(indptr[rows] - np.cumsum(n) + n, n) + np.arange(n.sum())
            pos_t = torch.from_numpy(pos)
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(n)[:-1]]))
            logits = bag(flat_idx[pos_t], offsets, per_sample_weights=flat_val[pos_t]) + bias
            loss = F.cross_entropy(logits, yt[torch.from_numpy(rows)])  # (B, C) vs (B,)
            if cfg.l2:
                loss = loss + 0.5 * cfg.l2 * bag.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(rows)
        bar.set_postfix(loss=f"{loss_sum / len(order):.4f}")
    w = bag.weight.detach().numpy().astype(np.float32)
    return w, bias.detach().numpy().astype(np.float32), loss_sum / len(feats)


def train_intent(examples: Sequence[Example], cfg: IntentConfig | None = None,
                 progress: bool = True) -> tuple[IntentDetector, dict]:
    """Train and calibrate an intent detector on one labelled row per distinct query.

    Args:
        examples: distilled examples; each query's label is the majority of its ``intent``s.
        cfg: features, training and routing settings (defaults to ``IntentConfig()``).
        progress: show a tqdm bar over epochs.

    Returns:
        (detector, metrics): metrics hold counts, conflicts, final training loss, training
        accuracy and, when a calibration split exists, temperature, NLL and ECE before/after.
    """
    cfg = cfg or IntentConfig()
    queries, labels, conflicts = _label_queries(examples)
    present = sorted({INTENTS[i] for i in labels})
    if len(queries) < MIN_QUERIES:
        raise DataError(f"{len(queries)} distinct queries are too few to train intent detection; "
                        f"need at least {MIN_QUERIES}")
    if len(present) < 2:
        raise DataError(f"only intent {present} occurs in the data; need at least 2 of "
                        f"{', '.join(INTENTS)}")
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(queries))
    n_cal = round(len(queries) * cfg.held_out)
    cal, tr = perm[:n_cal], perm[n_cal:]
    feats = [featurize(queries[i], cfg) for i in tr]
    weight, bias, loss = _fit(feats, y[tr], cfg, rng, progress)
    raw = IntentDetector(cfg, weight, bias, 1.0)
    metrics: dict = {
        "queries": len(queries), "train_queries": len(tr), "calibration_queries": n_cal,
        "conflicts": conflicts,
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(INTENTS)},
        "train_loss": loss,
        "train_accuracy": float((raw.logits([queries[i] for i in tr]).argmax(1) == y[tr]).mean()),
        "temperature": 1.0,
    }
    if n_cal:
        z, yc = raw.logits([queries[i] for i in cal]), y[cal]
        t = fit_temperature(z, yc)
        metrics.update(
            temperature=t, calibration_accuracy=float((z.argmax(1) == yc).mean()),
            nll_before=_nll(z, yc), nll_after=_nll(z / t, yc),
            ece_before=expected_calibration_error(_softmax(z), yc),
            ece_after=expected_calibration_error(_softmax(z / t), yc),
        )
    return IntentDetector(cfg, weight, bias, metrics["temperature"]), metrics


def evaluate_intent(detector: IntentDetector, examples: Sequence[Example]) -> dict:
    """Accuracy, per-class precision/recall, confusion, ECE and latency on distinct queries.

    Args:
        detector: the detector to evaluate.
        examples: labelled examples; each query counts once, with its majority intent.

    Returns:
        dict with accuracy, per_class {intent: {precision, recall, support}}, confusion
        (rows true, columns predicted, in ``labels`` order), ece (10 bins), routed_both (share of
        queries sent to both tasks), latency_us (mean wall time per query of predict_batch),
        conflicts and count.
    """
    queries, labels, conflicts = _label_queries(examples)
    if not queries:
        raise DataError("no examples to evaluate the intent detector on")
    y = np.asarray(labels, dtype=np.int64)
    t0 = time.perf_counter()
    preds = detector.predict_batch(queries)
    latency_us = (time.perf_counter() - t0) / len(queries) * 1e6
    probs = np.array([[p.probs[c] for c in INTENTS] for p in preds])
    pred = probs.argmax(axis=1)
    k = len(INTENTS)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    per_class = {}
    for i, c in enumerate(INTENTS):
        tp, n_pred, n_true = confusion[i, i], confusion[:, i].sum(), confusion[i].sum()
        per_class[c] = {"precision": float(tp / n_pred) if n_pred else 0.0,
                        "recall": float(tp / n_true) if n_true else 0.0, "support": int(n_true)}
    return {
        "accuracy": float((pred == y).mean()), "per_class": per_class,
        "labels": list(INTENTS), "confusion": confusion.tolist(),
        "ece": expected_calibration_error(probs, y),
        "routed_both": float(np.mean([len(p.routed) > 1 for p in preds])),
        "latency_us": latency_us, "conflicts": conflicts, "count": len(queries),
    }
