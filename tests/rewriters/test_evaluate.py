import math

import pytest

from rewriters.commands import Command
from rewriters.evaluate import (
    distinct_n, held_out_commands, length_mse, relevance_by_bucket, relevance_slope,
    rewrite_quality, within_k,
)


def test_length_metrics_by_hand():
    # errors: +1, +2, -3, 0 → squared 1, 4, 9, 0 → MSE 14/4 = 3.5; within ±2: 3 of 4
    t, a = [10, 12, 20, 5], [11, 14, 17, 5]
    assert length_mse(t, a) == 3.5
    assert within_k(t, a, 2) == 0.75
    assert within_k(t, a, 0) == 0.25


def test_empty_inputs_are_nan_not_crash():
    assert math.isnan(length_mse([], []))
    assert math.isnan(within_k([], []))
    assert distinct_n([]) == 0.0


def test_distinct_2_by_hand():
    # "a b c" → (a b),(b c); "a b d" → (a b),(b d): 3 distinct of 4 bigrams
    assert distinct_n(["a b c", "A B d"], 2) == 0.75
    assert distinct_n(["one"], 2) == 0.0  # no bigrams at all


def test_relevance_by_bucket_and_missing_buckets():
    got = relevance_by_bucket([0, 0, 4, 4], [0.1, 0.3, 0.7, 0.9])
    assert got[0] == pytest.approx(0.2) and got[4] == pytest.approx(0.8)
    assert got[1] is None and got[2] is None


def test_rewrite_quality_reports_rising_relevance():
    cmds = [Command("image", 5, b) for b in (0, 1, 2, 3, 4)]
    q = rewrite_quality(cmds, ["a b c d e"] * 5, [5, 5, 6, 5, 9], [True] * 4 + [False],
                        [0.1, 0.2, 0.3, 0.4, 0.5])
    assert q["length_mse"] == pytest.approx((0 + 0 + 1 + 0 + 16) / 5)
    assert q["relevance_rises_with_bucket"] is True
    assert q["relevance_spearman"] == pytest.approx(1.0)
    assert q["invalid_rate"] == pytest.approx(0.2)


def test_relevance_slope_is_paired_within_groups():
    # group "a": 0.10 0.12 0.14 0.16 0.18 (slope 0.02); group "b": 0.60 ... 0.68 (slope 0.02)
    # with bucket 2 of "b" missing, the per-bucket means dip at 2, the paired slope does not
    rows = [("a", b, 0.10 + 0.02 * b) for b in range(5)]
    rows += [("b", b, 0.60 + 0.02 * b) for b in range(5) if b != 2]
    groups, buckets, scores = zip(*rows)
    means = relevance_by_bucket(buckets, scores)
    assert means[2] < means[1]
    got = relevance_slope(buckets, scores, groups)
    assert got["mean"] == pytest.approx(0.02) and got["groups"] == 2
    assert got["low"] == pytest.approx(0.02) and got["high"] == pytest.approx(0.02)
    one = relevance_slope([0, 4], [0.1, 0.3], ["a", "a"])  # one group: no interval
    assert one["mean"] == pytest.approx(0.05) and math.isnan(one["low"])
    flat = relevance_slope([2, 2], [0.1, 0.3], ["a", "b"])  # no group varies the bucket
    assert flat["groups"] == 0 and math.isnan(flat["mean"])
    q = rewrite_quality([Command("image", 5, b) for b in buckets], ["x"] * len(rows),
                        [1] * len(rows), [True] * len(rows), scores, groups=groups)
    assert q["relevance_slope"]["mean"] == pytest.approx(0.02)


def test_held_out_commands_cover_queries_and_are_valid(synthetic_examples):
    cmds = held_out_commands(synthetic_examples, 200, seed=3)
    assert len(cmds) == 200
    pairs = {(e.query, e.task) for e in synthetic_examples}
    assert all((q, c.task) in pairs for q, c in cmds)
    assert len({c.length for _, c in cmds}) > 20 and {c.relevance for _, c in cmds} == set(range(5))


def test_held_out_commands_ask_for_every_bucket_on_the_same_query_and_length(synthetic_examples):
    from collections import Counter

    cmds = held_out_commands(synthetic_examples, 12, seed=1)
    assert len(cmds) == 15  # rounded up to whole groups of 5 buckets
    groups = Counter((q, c.task, c.length) for q, c in cmds)
    assert len(groups) == 3 and set(groups.values()) == {5}
    for key in groups:
        assert sorted(c.relevance for q, c in cmds if (q, c.task, c.length) == key) == [0, 1, 2, 3, 4]


def test_spearman_averages_ties():
    from rewriters.evaluate import _spearman

    # ranks with ties averaged: a -> 1.5 1.5 3 4, b -> 1 2 3 4; rho = corr = 0.9486833
    assert abs(_spearman([0, 0, 1, 2], [0.1, 0.2, 0.3, 0.4]) - 0.9486833) < 1e-6
    import math

    assert math.isnan(_spearman([3, 3, 3], [0.1, 0.2, 0.3]))  # one bucket: undefined, not 1.0
