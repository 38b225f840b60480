import numpy as np
import pytest

from rewriters.data import Example
from rewriters.errors import ConfigError
from rewriters.rewards import LexicalScorer, assign_buckets, bucket_edges, load_scorer, relabel


def test_bucket_edges_are_quantiles():
    # 10 scores 0.0..0.9: quintile edges at the 20/40/60/80% quantiles (linear interpolation)
    edges = bucket_edges([i / 10 for i in range(10)])
    assert edges == pytest.approx([0.18, 0.36, 0.54, 0.72])
    assert assign_buckets([0.0, 0.19, 0.5, 0.9], edges).tolist() == [0, 1, 2, 4]


def test_bucket_edges_need_scores():
    with pytest.raises(ConfigError):
        bucket_edges([])


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
    assert len(edges) == 4
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
