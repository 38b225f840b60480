"""The retrieval return: how well what a prompt finds matches what the query's users wanted.

UDRL on retrieval: a prompt's return is the nDCG@k of the catalogue items it finds, judged
against the query's targets (the items the search log shows clicked for the query, or where
the log has none the teacher's grounding set). :class:`RetrievalScorer` plugs this into the
:class:`~rewriters.rewards.Scorer` protocol so ``relabel`` and exploration can use it in place
of the query–prompt similarity; :func:`describe_returns` reports both returns side by side.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["ndcg_at_k", "ndcg_batch", "RetrievalScorer", "describe_returns"]


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one ranking with graded gains (the trec_eval / ranx "ndcg" form).

    DCG = Σ_{i<k} gain(ranked[i]) / log2(i + 2); the ideal DCG ranks the positive grades of
    ``relevant`` best first. An id listed twice counts at its first place only.

    Args:
        ranked: item ids, best first.
        relevant: item id → gain; gains <= 0 count as not relevant.
        k: cutoff, >= 1.

    Returns:
        nDCG in [0, 1]; 0.0 when nothing is relevant or the ranking is empty.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k {k!r} must be a whole number >= 1")
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    dcg, seen = 0.0, set()
    for i, doc in enumerate(ranked[:k]):
        if doc in seen:
            continue
        seen.add(doc)
        g = relevant.get(doc, 0.0)
        if g > 0:
            dcg += g / math.log2(i + 2)
    return dcg / idcg


def ndcg_batch(rankings: Sequence[Sequence[str]], relevants: Sequence[Mapping[str, float]],
               k: int = 10) -> np.ndarray:
    """:func:`ndcg_at_k` of each (ranking, relevant) pair, shape (N,), float64."""
    if len(rankings) != len(relevants):
        raise ConfigError(f"{len(rankings)} rankings but {len(relevants)} relevance maps; "
                          "give one of each per query")
    return np.array([ndcg_at_k(r, rel, k) for r, rel in zip(rankings, relevants)],
                    dtype=np.float64)


class RetrievalScorer:
    """Scores a prompt by the nDCG@k of what it retrieves against its query's targets.

    Implements :class:`~rewriters.rewards.Scorer`. Prompts are searched in one batch per
    ``score`` call, distinct prompts once; rankings are cached by prompt text (least recently
    used dropped past ``cache_size``) and targets by query, so relabelling a file again costs
    no search. ``stats`` counts pairs scored, pairs whose query had no targets (scored 0.0),
    prompts searched and prompts served from the cache.
    """

    name = "retrieval"

    def __init__(self, search: Callable[[Sequence[str]], list[list[str]]],
                 targets: Callable[[str], Mapping[str, float]], k: int = 10,
                 cache_size: int = 100_000):
        """Args:
            search: a batch of prompt texts → for each, the ranked item ids found, best first.
            targets: a query → its relevant item ids with gains (> 0): the log's clicked items
                for the query where the log has them, else the teacher's grounding set; an
                empty mapping when there are none.
            k: nDCG cutoff, >= 1.
            cache_size: prompts whose rankings are kept (and queries whose targets are), >= 1.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k {k!r} must be a whole number >= 1")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError(f"cache_size {cache_size!r} must be a whole number >= 1")
        self.search, self.targets, self.k, self.cache_size = search, targets, k, cache_size
        self._ranked: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._targets: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.stats = {"pairs": 0, "no_targets": 0, "searched": 0, "cached": 0}

    def _remember(self, cache: OrderedDict, key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _targets_of(self, query: str) -> dict[str, float]:
        if query in self._targets:
            self._targets.move_to_end(query)
            return self._targets[query]
        got = {str(d): float(g) for d, g in dict(self.targets(query)).items() if g > 0}
        self._remember(self._targets, query, got)
        return got

    def score(self, queries: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        """nDCG@k of each prompt's ranking against its query's targets.

        Args:
            queries: the queries, shape (N,).
            prompts: one prompt per query, shape (N,).

        Returns:
            float32 scores in [0, 1], shape (N,); 0.0 for a query without targets.
        """
        if len(queries) != len(prompts):
            raise ConfigError(f"{len(queries)} queries but {len(prompts)} prompts; give one "
                              "prompt per query")
        targets = [self._targets_of(q) for q in queries]
        wanted = list(dict.fromkeys(p for p, t in zip(prompts, targets) if t))
        todo = [p for p in wanted if p not in self._ranked]
        found: dict[str, tuple[str, ...]] = {}
        for p in wanted:  # read before searching: the search batch may evict them
            if p in self._ranked:
                self._ranked.move_to_end(p)
                found[p] = self._ranked[p]
        if todo:
            got = self.search(todo)
            if len(got) != len(todo):
                raise ConfigError(f"search returned {len(got)} rankings for {len(todo)} "
                                  "prompts; it must return one ranked id list per prompt, "
                                  "in order")
            for p, ids in zip(todo, got):
                found[p] = tuple(str(d) for d in list(ids)[: self.k])
                self._remember(self._ranked, p, found[p])
        self.stats["pairs"] += len(queries)
        self.stats["no_targets"] += sum(1 for t in targets if not t)
        self.stats["searched"] += len(todo)
        self.stats["cached"] += len(wanted) - len(todo)
        out = [ndcg_at_k(found[p], t, self.k) if t else 0.0 for p, t in zip(prompts, targets)]
        return np.asarray(out, dtype=np.float32)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def describe_returns(sim_scores: Sequence[float] | np.ndarray,
                     retrieval_scores: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Both returns of the same (query, prompt) pairs side by side, for reports.

    Args:
        sim_scores: the similarity return of each pair (e.g. MiniLM cosine), shape (N,).
        retrieval_scores: the retrieval return (nDCG@k) of the same pairs, shape (N,).

    Returns:
        ``{"pairs", "similarity": {"mean", "std", "min", "max"}, "retrieval": {"mean", "std",
        "min", "max", "zero_share", "one_share"}, "spearman"}``: ``zero_share``/``one_share``
        are the shares of prompts finding nothing relevant / a perfect ranking; statistics are
        None without pairs and ``spearman`` (rank correlation, ties averaged) is None when
        either return is constant.
    """
    sim = np.asarray(sim_scores, dtype=np.float64).reshape(-1)
    ret = np.asarray(retrieval_scores, dtype=np.float64).reshape(-1)
    if sim.shape != ret.shape:
        raise ConfigError(f"{sim.size} similarity scores but {ret.size} retrieval scores; "
                          "give both returns of the same pairs")
    if not (np.isfinite(sim).all() and np.isfinite(ret).all()):
        raise ConfigError("returns hold NaN or infinite scores; score every pair first")

    def stats(a: np.ndarray) -> dict[str, float | None]:
        if not a.size:
            return {"mean": None, "std": None, "min": None, "max": None}
        return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
                "max": float(a.max())}

    rho = None
    if sim.size > 1 and np.ptp(sim) > 0 and np.ptp(ret) > 0:
        rho = float(np.corrcoef(_average_ranks(sim), _average_ranks(ret))[0, 1])
    retrieval = stats(ret)
    retrieval["zero_share"] = float(np.mean(ret == 0.0)) if ret.size else None
    retrieval["one_share"] = float(np.mean(ret >= 1.0 - 1e-6)) if ret.size else None
    return {"pairs": int(sim.size), "similarity": stats(sim), "retrieval": retrieval,
            "spearman": rho}
