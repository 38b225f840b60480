"""The retrieval return: nDCG@k against ranx, the batched caching scorer, both returns reported."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

from rewriters.data import Example
from rewriters.errors import ConfigError
from rewriters.retrieval_return import (RetrievalScorer, describe_returns, ndcg_at_k,
                                        ndcg_batch)
from rewriters.rewards import relabel

L3 = 1 / math.log2(3)  # the discount of rank 2: 0.6309


@pytest.mark.parametrize("ranked, relevant, k, want", [
    (["a", "b", "c"], {"a": 1}, 10, 1.0),  # the one relevant item first
    (["x", "a"], {"a": 1}, 10, L3),  # ... second: DCG 1/log2(3), ideal 1
    (["x", "a"], {"a": 1}, 1, 0.0),  # ... cut off by k
    (["b", "a"], {"a": 2, "b": 1}, 10, (1 + 2 * L3) / (2 + L3)),  # graded: 2.262 / 2.631
    (["a"], {"a": 1, "b": 1}, 10, 1 / (1 + L3)),  # k beyond the list: ideal still has both
    (["a", "b"], {"a": 3, "b": 3}, 10, 1.0),  # all relevant
    (["a", "a"], {"a": 1, "b": 1}, 10, 1 / (1 + L3)),  # a repeated id counts once
    ([], {"a": 1}, 10, 0.0),  # empty ranking
    (["a", "b"], {}, 10, 0.0),  # nothing relevant
    (["a", "b"], {"a": 0, "b": -1}, 10, 0.0),  # grades <= 0 are not relevant
])
def test_ndcg_by_hand(ranked, relevant, k, want):
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(want)


def ranx_ndcg(qrels, run, k):
    from numba.core.errors import NumbaTypeSafetyWarning
    from ranx import evaluate

    # two metrics: ranx 0.3.21 fails to key a single "@k" metric's per-query scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        got = evaluate(qrels, run, [f"ndcg@{k}", "mrr"], return_mean=False)
    return np.asarray(got[f"ndcg@{k}"], dtype=np.float64)


@pytest.mark.parametrize("k", [1, 3, 10, 17])
def test_ndcg_matches_ranx_on_random_cases(k):
    rng = random.Random(k)
    pool = [f"d{i}" for i in range(37)]
    rankings, relevants = [], []
    for _ in range(53):
        rankings.append(rng.sample(pool, rng.randint(1, 23)))
        relevants.append({d: rng.randint(0, 3) for d in rng.sample(pool, rng.randint(1, 11))})
    keep = [i for i, rel in enumerate(relevants) if any(g > 0 for g in rel.values())]
    qids = [f"q{i}" for i in keep]
    qrels = {q: relevants[i] for q, i in zip(qids, keep)}
    # ranx ranks by score: rank-derived scores n, n-1, ... keep our list order
    run = {q: {d: float(len(rankings[i]) - r) for r, d in enumerate(rankings[i])}
           for q, i in zip(qids, keep)}
    ours = ndcg_batch([rankings[i] for i in keep], [relevants[i] for i in keep], k)
    np.testing.assert_allclose(ours, ranx_ndcg(qrels, run, k), atol=1e-6)
    dropped = [i for i in range(53) if i not in keep]  # no positive grade: 0 here, not in ranx
    assert all(ndcg_at_k(rankings[i], relevants[i], k) == 0.0 for i in dropped)


def test_ndcg_rejects_bad_k_and_mismatched_batches():
    with pytest.raises(ConfigError, match="k 0"):
        ndcg_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(ConfigError, match="2 rankings but 1"):
        ndcg_batch([["a"], ["b"]], [{"a": 1}])


# --------------------------------------------------------------------------- scorer

CATALOGUE = {"i1": "github brand logo", "i2": "git branch icon", "i3": "dog icon",
             "i4": "cat photo", "i5": "logo design template"}


class FakeSearch:
    """Ranks the catalogue by words shared with the prompt (ties by id); records its batches."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def __call__(self, prompts):
        self.batches.append(list(prompts))
        out = []
        for p in prompts:
            words = set(p.split())
            hits = [(len(words & set(t.split())), i) for i, t in CATALOGUE.items()]
            out.append([i for n, i in sorted(hits, key=lambda h: (-h[0], h[1])) if n])
        return out


TARGETS = {"github": {"i1": 2.0, "i2": 1.0}, "pets": {"i3": 1.0, "i4": 1.0}}


def make_scorer(**kw):
    search = FakeSearch()
    return RetrievalScorer(search, lambda q: TARGETS.get(q, {}), **kw), search


def test_scorer_returns_ndcg_per_pair_from_one_batched_search():
    scorer, search = make_scorer(k=10)
    queries = ["github", "github", "pets", "github", "unknown"]
    prompts = ["github logo", "dog icon", "dog cat", "github logo", "github logo"]
    got = scorer.score(queries, prompts)
    assert got.dtype == np.float32 and got.shape == (5,)
    # "github logo" finds i1 (2 words), i5 (1): DCG 2, ideal 2 + 1/log2(3)
    # "dog icon" finds i3 (2), i2 (1): i2 at rank 2 is worth 1/log2(3)
    # "dog cat" finds i3 and i4, ties by id: both relevant, a perfect ranking
    want = [2 / (2 + L3), L3 / (2 + L3), 1.0, 2 / (2 + L3), 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert search.batches == [["github logo", "dog icon", "dog cat"]]  # distinct, once
    assert scorer.stats == {"pairs": 5, "no_targets": 1, "searched": 3, "cached": 0}
    # scoring again costs no search
    np.testing.assert_allclose(scorer.score(queries, prompts), want, rtol=1e-6)
    assert len(search.batches) == 1 and scorer.stats["cached"] == 3


def test_scorer_cache_is_bounded_least_recently_used_first():
    scorer, search = make_scorer(cache_size=2)
    scorer.score(["github"] * 3, ["github", "logo", "brand"])
    scorer.score(["github"], ["brand"])  # kept: among the last two
    assert len(search.batches) == 1
    scorer.score(["github"], ["github"])  # dropped: searched again
    assert search.batches[-1] == ["github"]


def test_scorer_edge_cases():
    scorer, search = make_scorer()
    assert scorer.score([], []).shape == (0,) and search.batches == []
    assert scorer.score(["unknown"], ["github"]).tolist() == [0.0] and search.batches == []
    with pytest.raises(ConfigError, match="2 queries but 1 prompts"):
        scorer.score(["a", "b"], ["x"])
    broken = RetrievalScorer(lambda ps: [], lambda q: {"i1": 1.0})
    with pytest.raises(ConfigError, match="returned 0 rankings for 1 prompts"):
        broken.score(["q"], ["p"])
    with pytest.raises(ConfigError, match="k 0"):
        RetrievalScorer(FakeSearch(), dict, k=0)


def test_relabel_with_the_retrieval_return():
    """The scorer drops into relabel: nDCG becomes the relevance, ties bucket sensibly."""
    scorer, _ = make_scorer()
    prompts = ["github logo", "git branch", "dog cat", "cat photo", "logo design", "weather",
               "github brand", "dog"]
    exs = [Example.make(q, "template", p, "t", "template")
           for q in ("github", "pets") for p in prompts * 5]
    out, _ = relabel(exs, scorer)
    rel = np.array([e.relevance for e in out])
    buckets = np.array([e.bucket for e in out])
    # for "github" (i1 gain 2, i2 gain 1; ideal 2 + 1/log2(3)): "logo design" finds i5 then i1
    ideal = 2 + L3
    assert rel[:8] == pytest.approx([2 / ideal, 1 / ideal, 0, 0, 2 * L3 / ideal, 0,
                                     2 / ideal, 0])
    assert rel.min() == 0.0 and rel.max() == pytest.approx(1.0)
    assert set(buckets[rel == 0.0]) == {0} and set(buckets[rel >= 0.999]) == {4}
    assert set(buckets) == {0, 1, 2, 3, 4}
    # plain quantile edges would have put every "found nothing" prompt above bucket 0
    plain = np.searchsorted(np.quantile(rel, [0.2, 0.4, 0.6, 0.8]), rel, side="right")
    assert plain[rel == 0.0].min() > 0


# --------------------------------------------------------------------------- reporting

def test_describe_returns_side_by_side():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    sim = rng.uniform(0.2, 0.9, 101)
    ret = np.where(sim > 0.6, 1.0, 0.0) * rng.integers(0, 2, 101)  # tie-heavy: 0s and 1s
    got = describe_returns(sim, ret)
    assert got["pairs"] == 101
    assert got["similarity"]["mean"] == pytest.approx(sim.mean())
    assert got["retrieval"]["mean"] == pytest.approx(ret.mean())
    assert got["retrieval"]["zero_share"] == pytest.approx((ret == 0).mean())
    assert got["retrieval"]["one_share"] == pytest.approx((ret == 1).mean())
    assert got["spearman"] == pytest.approx(spearmanr(sim, ret).statistic)
    assert got["spearman"] > 0.3


def test_describe_returns_edge_cases():
    assert describe_returns([0.5, 0.7], [0.0, 0.0])["spearman"] is None  # constant return
    empty = describe_returns([], [])
    assert empty["pairs"] == 0 and empty["similarity"]["mean"] is None
    assert empty["spearman"] is None
    with pytest.raises(ConfigError, match="3 similarity scores but 2"):
        describe_returns([0.1, 0.2, 0.3], [0.0, 1.0])
    with pytest.raises(ConfigError, match="NaN"):
        describe_returns([0.1, float("nan")], [0.0, 1.0])
