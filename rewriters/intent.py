"""Intent detection: route each query to image search, template search or both.

A hashed bag of word and character n-grams feeds a multinomial logistic regression over
``INTENTS``; a temperature fitted on held-out queries calibrates its probabilities. Training
uses torch; inference is pure numpy (gather weight rows, sum, softmax) and never imports torch.
Training, calibration and evaluation are in ``rewriters.intent_train``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .commands import INTENTS, TASKS
from .errors import ConfigError, ModelError
from .files import share

__all__ = [
    "FEATURE_SPEC", "IntentConfig", "IntentDetector", "IntentPrediction", "featurize",
    "load_intent_detector",
]

FEATURE_SPEC = "crc32-word-char-ngrams-v1"  # bump whenever featurize() changes its output
WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "intent.safetensors", "intent_config.json", "metrics.json"
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
