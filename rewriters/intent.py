"""Intent detection: route each query to image search, template search or both.

A hashed bag of word and character n-grams feeds a multinomial logistic regression over
``INTENTS``; a temperature fitted on held-out queries calibrates its probabilities. Training
uses torch; inference is pure numpy (gather weight rows, sum, softmax) and never imports torch.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .commands import INTENTS, TASKS
from .data import Example
from .errors import ConfigError, DataError, ModelError
from .files import share

__all__ = [
    "FEATURE_SPEC", "IntentConfig", "IntentDetector", "IntentPrediction", "evaluate_intent",
    "expected_calibration_error", "featurize", "fit_temperature", "load_intent_detector",
    "train_intent",
]

FEATURE_SPEC = "crc32-word-char-ngrams-v1"  # bump whenever featurize() changes its output
WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "intent.safetensors", "intent_config.json", "metrics.json"
MIN_QUERIES = 10  # fewer distinct labelled queries than this cannot train anything useful
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class IntentConfig:
    """Features, training and routing settings of the intent detector."""

    n_features: int = 2**18  # hashing dimension (weight rows); 2**14..2**22, 12 bytes a row
    word_ngram_min: int = 1  # shortest word n-gram, in words; 1..word_ngram_max
    word_ngram_max: int = 2  # longest word n-gram, in words; word_ngram_min..4
    char_ngram_min: int = 3  # shortest character n-gram inside one "<word>"; 1..char_ngram_max
    char_ngram_max: int = 5  # longest character n-gram, in characters; char_ngram_min..8
    epochs: int = 30  # passes over the training queries; 1..1000, 10..50 is typical
    batch_size: int = 256  # queries per optimiser step; 1..65536
    lr: float = 0.05  # Adam learning rate; 1e-4..1, 0.02..0.2 suits sparse logistic regression
    l2: float = 1e-5  # L2 penalty per weight (loss += l2/2 * ||W||^2); 0..1e-2
    held_out: float = 0.2  # share of distinct queries kept to fit the temperature; 0 (off)..0.5
    threshold: float = 0.5  # top probability below which a query routes to both tasks; 0..1
    seed: int = 0  # seeds the calibration split and the batch order; any int

    def __post_init__(self) -> None:
        ranges = {  # name: (lowest, highest, whole numbers only)
            "n_features": (2**4, 2**24, True), "word_ngram_min": (1, 4, True),
            "word_ngram_max": (1, 4, True), "char_ngram_min": (1, 8, True),
            "char_ngram_max": (1, 8, True), "epochs": (1, 1000, True),
            "batch_size": (1, 65536, True), "lr": (1e-6, 10.0, False), "l2": (0.0, 1.0, False),
            "held_out": (0.0, 0.5, False), "threshold": (0.0, 1.0, False),
            "seed": (-(2**63), 2**63 - 1, True),
        }
        for name, (lo, hi, whole) in ranges.items():
            v = getattr(self, name)
            kind_ok = isinstance(v, int) if whole else isinstance(v, (int, float))
            if isinstance(v, bool) or not kind_ok or not lo <= v <= hi:
                kind = "a whole number" if whole else "a number"
                raise ConfigError(f"{name}={v!r} must be {kind} in {lo}..{hi}")
        for kind in ("word", "char"):
            lo, hi = getattr(self, f"{kind}_ngram_min"), getattr(self, f"{kind}_ngram_max")
            if lo > hi:
                raise ConfigError(f"{kind}_ngram_min={lo} exceeds {kind}_ngram_max={hi}")


@lru_cache(maxsize=1 << 16)
def _hash(key: str, dim: int) -> int:
    # crc32, unlike hash(), is identical in every process and on every platform
    return zlib.crc32(key.encode()) % dim


@lru_cache(maxsize=1 << 16)
def _char_hashes(word: str, lo: int, hi: int, dim: int) -> tuple[int, ...]:
    padded = f"<{word}>"  # the marks make prefixes and suffixes their own n-grams
    return tuple(
        zlib.crc32(f"c:{padded[i : i + n]}".encode()) % dim
        for n in range(lo, hi + 1)
        for i in range(len(padded) - n + 1)
    )


def featurize(query: str, cfg: IntentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Hashed, sublinear, normalised bag of word and character n-grams of the lower-cased query.

    Each block (word n-grams, character n-grams) gets tf 1 + log(count) and norm 1/sqrt(blocks),
    so a word's ~15 character n-grams do not drown its word features; the norm is 1 unless a
    word and a character n-gram share a bucket.

    Args:
        query: the raw query; case and punctuation are ignored.
        cfg: gives the hashing dimension and the n-gram ranges.

    Returns:
        (indices int64 (F,), values float32 (F,)): distinct hash buckets and their weights, in
        first-seen order; both empty when the query has no word characters.
    """
    words = _WORD.findall(query.lower())
    dim = cfg.n_features
    word_keys = [
        _hash("w:" + " ".join(words[i : i + n]), dim)
        for n in range(cfg.word_ngram_min, cfg.word_ngram_max + 1)
        for i in range(len(words) - n + 1)
    ]
    char_keys = [
        h for w in words for h in _char_hashes(w, cfg.char_ngram_min, cfg.char_ngram_max, dim)
    ]
    blocks = [b for b in (word_keys, char_keys) if b]
    idx: list[int] = []
    val: list[float] = []
    for keys in blocks:
        counts = Counter(keys)
        tf = [1.0 + math.log(c) if c > 1 else 1.0 for c in counts.values()]
        scale = 1.0 / math.sqrt(len(blocks) * sum(x * x for x in tf))
        idx += counts
        val += [x * scale for x in tf]
    if len(set(idx)) < len(idx):  # a word and a character n-gram share a bucket: add them
        merged: dict[int, float] = {}
        for k, v in zip(idx, val):
            merged[k] = merged.get(k, 0.0) + v
        idx, val = list(merged), list(merged.values())
    return np.array(idx, dtype=np.int64), np.array(val, dtype=np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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


@dataclass(frozen=True)
class IntentPrediction:
    """The detected intent of one query and the search tasks it routes to."""

    intent: str  # the most probable intent, one of INTENTS
    probs: dict[str, float]  # calibrated probability of each intent; sums to 1
    routed: tuple[str, ...]  # tasks to run: ("image",), ("template",) or ("image", "template")


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"query {query!r} is blank; pass a non-empty search query")
    return query


class IntentDetector:
    """Calibrated intent classifier and router; inference is pure numpy."""

    def __init__(
        self, cfg: IntentConfig, weight: np.ndarray, bias: np.ndarray, temperature: float = 1.0
    ):
        """Wrap trained weights.

        Args:
            cfg: the config the weights were trained with (features and routing threshold).
            weight: (n_features, len(INTENTS)) float32.
            bias: (len(INTENTS),) float32.
            temperature: divides the logits before the softmax; > 0.
        """
        weight = np.asarray(weight, dtype=np.float32)
        bias = np.asarray(bias, dtype=np.float32)
        want = (cfg.n_features, len(INTENTS))
        if weight.shape != want or bias.shape != (len(INTENTS),):
            raise ModelError(
                f"intent weights have shapes {weight.shape} and {bias.shape}; the config needs "
                f"{want} and ({len(INTENTS)},)"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature {temperature!r} must be a positive finite number")
        self.cfg, self.weight, self.bias = cfg, weight, bias
        self.temperature = float(temperature)
        # fold the temperature into the weights once, so predict() is one gather and a softmax
        self._w = np.ascontiguousarray(weight / self.temperature)
        self._b = bias / self.temperature

    def logits(self, queries: Sequence[str]) -> np.ndarray:
        """Temperature-scaled logits, shape (B, len(INTENTS))."""
        if isinstance(queries, str):
            raise ConfigError(f"pass a list of queries, not the single string {queries!r}")
        feats = [featurize(_check_query(q), self.cfg) for q in queries]
        out = np.tile(self._b, (len(feats), 1))  # (B, C)
        if feats:
            idx = np.concatenate([i for i, _ in feats])  # (F,) all queries' features
            val = np.concatenate([v for _, v in feats])
            n = np.array([len(i) for i, _ in feats])
            starts, has = np.cumsum(n) - n, n > 0  # queries' features are contiguous in idx
            out[has] += np.add.reduceat(self._w[idx] * val[:, None], starts[has], axis=0)
        return out

    def predict_proba(self, queries: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape (B, len(INTENTS)), columns in INTENTS order."""
        return _softmax(self.logits(queries))

    def _prediction(self, p: Sequence[float]) -> IntentPrediction:
        top = max(range(len(INTENTS)), key=p.__getitem__)
        intent = INTENTS[top]
        both = intent == "both" or p[top] < self.cfg.threshold  # unsure: run both searches
        return IntentPrediction(
            intent=intent, probs=dict(zip(INTENTS, p)), routed=TASKS if both else (intent,)
        )

    def predict(self, query: str) -> IntentPrediction:
        """Detect the intent of one query and route it; raises ConfigError on a blank query."""
        idx, val = featurize(_check_query(query), self.cfg)
        z = (val @ self._w[idx] + self._b).tolist()  # (C,); plain floats beat numpy for C=3
        m = max(z)
        e = [math.exp(x - m) for x in z]
        s = sum(e)
        return self._prediction([x / s for x in e])

    def predict_batch(self, queries: Sequence[str]) -> list[IntentPrediction]:
        """Detect and route many queries at once (one gather for the whole batch)."""
        return [self._prediction(p) for p in self.predict_proba(queries).tolist()]

    def save(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write weights, config (with temperature, classes, feature spec) and optional metrics.

        Returns:
            the directory written.
        """
        from safetensors.numpy import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight, "bias": self.bias}, str(out / WEIGHTS_FILE))
        share(out / WEIGHTS_FILE)  # safetensors writes it owner-only (0600)
        meta = {"config": asdict(self.cfg), "temperature": self.temperature,
                "classes": list(INTENTS), "feature_spec": FEATURE_SPEC}
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if metrics is not None:
            (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        return out


def load_intent_detector(directory: str | Path) -> IntentDetector:
    """Rebuild a detector saved with :meth:`IntentDetector.save`; ModelError says what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(directory)
    if not d.is_dir():
        raise ModelError(f"intent model directory {d} does not exist; train one with train_intent")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (d / name).is_file():
            raise ModelError(f"intent model directory {d} lacks {name}; save the detector again")
    try:
        meta = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        spec, classes = meta["feature_spec"], meta["classes"]
        saved_cfg, temperature = meta["config"], meta["temperature"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"{d / CONFIG_FILE} is not a valid intent config: {e}") from e
    if spec != FEATURE_SPEC:
        raise ModelError(
            f"{d} was saved with feature spec {spec!r} but this code computes {FEATURE_SPEC!r}; "
            "retrain the intent detector"
        )
    if list(classes) != list(INTENTS):
        raise ModelError(f"{d} predicts classes {classes}; this code expects {list(INTENTS)}")
    try:
        cfg = IntentConfig(**saved_cfg)
    except (TypeError, ConfigError) as e:
        raise ModelError(f"{d / CONFIG_FILE} holds an invalid config: {e}") from e
    try:
        tensors = load_file(str(d / WEIGHTS_FILE))
        return IntentDetector(cfg, tensors["weight"], tensors["bias"], float(temperature))
    except (SafetensorError, KeyError, OSError, ConfigError) as e:
        raise ModelError(f"cannot load intent weights from {d / WEIGHTS_FILE}: {e}") from e


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
