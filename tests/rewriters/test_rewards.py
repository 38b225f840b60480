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
