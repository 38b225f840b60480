import numpy as np
import pytest

from rewriters.data import Example
from rewriters.errors import ConfigError
from rewriters.rewards import (BucketEdges, LexicalScorer, assign_buckets, bucket_edges,
                               load_scorer, relabel)


def test_bucket_edges_are_quantiles():
    # 10 scores 0.0..0.9: quintile edges at the 20/40/60/80% quantiles (linear interpolation)
    edges = bucket_edges([i / 10 for i in range(10)])
    assert edges == pytest.approx([0.18, 0.36, 0.54, 0.72])
    assert assign_buckets([0.0, 0.19, 0.5, 0.9], edges).tolist() == [0, 1, 2, 4]


def test_bucket_edges_need_scores():
    with pytest.raises(ConfigError):
        bucket_edges([])


def test_bucket_edges_are_quantiles_within_length_bands():
    # relevance falls with length: 5-word prompts score 0.5-0.9, 30-word prompts 0.1-0.5
    rng = np.random.default_rng(0)
    words = np.repeat([5, 30], 200)
    scores = np.concatenate([rng.uniform(0.5, 0.9, 200), rng.uniform(0.1, 0.5, 200)])
    edges = BucketEdges.fit(scores, words, bands=2)
    assert edges.starts == (5, 30)
    buckets = edges.assign(scores, words)
    for length in (5, 30):  # every length fills every bucket equally
        assert np.bincount(buckets[words == length], minlength=5).tolist() == [40] * 5
    # one set of edges over all prompts would give the long ones buckets 0-1 only
    flat = assign_buckets(scores, bucket_edges(scores))
    assert set(flat[words == 30].tolist()) <= {0, 1, 2} and set(flat[words == 5]) >= {3, 4}
    assert BucketEdges.from_json(edges.to_json()) == edges
    assert BucketEdges.from_json([0.1, 0.2, 0.3, 0.4]).starts == (3,)  # an older model's edges


def test_thin_length_bands_are_merged():
    words = [4] * 200 + [20] * 30 + [35] * 200  # 30 examples cannot fill 5 buckets of 20
    edges = BucketEdges.fit(np.linspace(0, 1, len(words)), words, bands=4)
    assert edges.starts == (4, 35) and edges.band([20, 34, 35, 40]).tolist() == [0, 0, 1, 1]
    assert BucketEdges.fit([0.5] * 10, [7] * 10).starts == (7,)  # too few for more than one


def test_tied_returns_still_fill_the_buckets():
    """nDCG-like returns: most prompts find nothing (exactly 0.0), some find everything (1.0)."""
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.01, 0.99, 300)
    for zeros in (300, 500, 900):  # 90% zeros made plain quantile edges [0, 0, 0, 0]
        scores = np.concatenate([np.zeros(zeros), np.ones(200), spread])
        edges = bucket_edges(scores)
        buckets = assign_buckets(scores, edges)
        assert np.bincount(buckets, minlength=5).all(), (zeros, edges)  # every bucket used
        assert set(buckets[scores == 0.0]) == {0} and set(buckets[scores == 1.0]) == {4}
        order = np.argsort(scores, kind="stable")
        assert np.all(np.diff(buckets[order]) >= 0)  # a higher return never gets a lower bucket
    # 900 zeros and the spread: the zeros fill bucket 0, the rest share buckets 1-4 evenly
    scores = np.concatenate([np.zeros(900), spread[:100]])
    assert np.bincount(assign_buckets(scores, bucket_edges(scores))).tolist() == [900] + [25] * 4


@pytest.mark.parametrize("scores, buckets", [
    ([0.0] * 80 + [1.0] * 20, {0.0: 0, 1.0: 4}),  # two distinct returns: bottom and top
    ([0.0] * 80 + [0.5] * 3 + [1.0] * 20, {0.0: 0, 0.5: 2, 1.0: 4}),  # three: spread evenly
    ([0.0] * 100, {0.0: 2}),  # one: the middle bucket, neither good nor bad
])
def test_few_distinct_returns_spread_over_the_buckets(scores, buckets):
    got = assign_buckets(scores, bucket_edges(scores))
    assert {s: int(b) for s, b in zip(scores, got)} == buckets
    # a constant band still ranks returns it has not seen: above goes up, below goes down
    if len(buckets) == 1:
        assert assign_buckets([-0.1, 0.1], bucket_edges(scores)).tolist() == [0, 4]


def test_tied_returns_relabel_within_length_bands():
    words = [5] * 200 + [30] * 200
    scores = [0.0] * 150 + [1.0] * 50 + list(np.linspace(0, 1, 200))  # short prompts: all or none
    edges = BucketEdges.fit(scores, words, bands=2)
    buckets = edges.assign(scores, words)
    assert set(buckets[:150]) == {0} and set(buckets[150:200]) == {4}
    assert np.bincount(buckets[200:], minlength=5).tolist() == [40] * 5  # no ties: quantiles
    assert BucketEdges.from_json(edges.to_json()) == edges


def test_lexical_scorer_ranks_overlap_higher():
    s = LexicalScorer()
    got = s.score(["cozy cabin"] * 3, ["cozy cabin", "a cozy wooden cabin", "neon city at night"])
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert got[0] > got[1] > got[2] >= 0.0


def test_relabel_scores_missing_and_rebuckets_all():
    exs = [Example.make("cabin", "image", p, "t", "image")
           for p in ["cabin", "snow cabin", "red car", "blue sea", "cabin in woods"]]
    exs[2] = exs[2].model_copy(update={"relevance": 0.99})  # pre-scored: kept as is
    out, edges = relabel(exs, LexicalScorer())
    assert out[2].relevance == 0.99
    assert all(e.relevance is not None and e.bucket is not None for e in out)
    assert out[0].relevance == pytest.approx(1.0, abs=1e-5)
    assert edges.starts == (1,) and len(edges.edges[0]) == 4  # 5 examples: one length band
    # the same edges give the same buckets on a second pass
    again, _ = relabel(out, LexicalScorer(), edges=edges)
    assert [e.bucket for e in again] == [e.bucket for e in out]


def test_unknown_scorer_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: minilm, lexical"):
        load_scorer("bm25")


def test_minilm_scorer_loads_offline_and_prefers_related_text():
    s = load_scorer("minilm")
    got = s.score(["cozy cabin in the snow"] * 2,
                  ["a wooden log cabin in a snowy forest", "quarterly tax spreadsheet template"])
    assert got.shape == (2,) and np.all(np.abs(got) <= 1.0)
    assert got[0] > got[1] + 0.2
