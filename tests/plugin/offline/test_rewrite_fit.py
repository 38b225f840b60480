"""The rewrite channel's fitted weight and floor (``plugin.offline.rewrite_fit``) on constructed
queries, checkable by eye: each query has one relevant item ``"hit"``.

- raw and dense rank ``hit`` 11th (below the top 10: nDCG@10 = 0) on "hard" queries and 1st on
  "easy" ones;
- an on-topic rewrite (similarity 0.9) ranks ``hit`` 1st;
- an off-topic rewrite (similarity 0.55, just above the settings' floor 0.5) ranks junk first
  and ``hit`` nowhere.
"""

from __future__ import annotations

import json
import math

import pytest

from plugin.fitted_weights import REWRITE_FIT_FILE, read_rewrite_fit
from plugin.fusion import FusionWeights
from plugin.offline.rewrite_fit import RewriteFitConfig, choose_rewrite_weights, fitting_queries

FILLER = [f"f{i}" for i in range(10)]
HARD = FILLER + ["hit"]  # the relevant item 11th
EASY = ["hit"] + FILLER
ON_TOPIC = ["hit"] + [f"r{i}" for i in range(9)]
OFF_TOPIC = [f"junk{i}" for i in range(20)]
CFG = RewriteFitConfig()


def row(base: list[str], rewrite: list[str] | None, sim: float | None):
    lists = {"raw": base, "dense": base}
    if rewrite is not None:
        lists["rewrite"] = rewrite
    return lists, 0.0, sim


def test_a_rewrite_that_finds_what_raw_and_dense_miss_is_turned_on():
    rows = [row(HARD, ON_TOPIC, 0.9)] * 30 + [row(EASY, ON_TOPIC, 0.9)] * 10
    out = choose_rewrite_weights(rows, [{"hit": 1.0}] * 40, FusionWeights(), CFG)
    assert out["rewrite"] > 0 and out["p_value"] < CFG.alpha
    assert out["ndcg@10"]["fitted"] > out["ndcg@10"]["without_rewrite"]


def test_an_off_topic_rewrite_stays_off_and_fused_equals_raw_plus_dense():
    # raw alone (dense weight 0, RRF k 10) ranks the hit 10th; a rewrite that reads close to
    # the query (similarity 0.99) but retrieves junk would push it out of the top 10
    tenth = FILLER[:9] + ["hit"]
    rows = [({"raw": tenth, "rewrite": OFF_TOPIC}, 0.0, 0.99)] * 40
    base = FusionWeights(dense=0.0, k=10)
    out = choose_rewrite_weights(rows, [{"hit": 1.0}] * 40, base, CFG)
    assert out["rewrite"] == 0.0
    assert out["ndcg@10"]["fitted"] == out["ndcg@10"]["without_rewrite"] == pytest.approx(
        1 / math.log2(11), abs=1e-4)
    assert out["ndcg@10"]["settings"] == 0.0  # the unfitted weight 1 loses the hit


def test_a_gain_within_noise_is_not_taken():
    # one query of 40 gains, one loses a little: the best grid point wins on the mean, but
    # the paired test cannot tell it from noise, so the channel stays off
    rows = ([row(HARD, ON_TOPIC, 0.9)] + [row(EASY, OFF_TOPIC, 0.95)]
            + [row(EASY, None, None)] * 38)
    out = choose_rewrite_weights(rows, [{"hit": 1.0}] * 40, FusionWeights(), CFG)
    assert out["ndcg@10"]["best_grid_point"] > out["ndcg@10"]["without_rewrite"]
    assert out["p_value"] >= CFG.alpha and out["rewrite"] == 0.0


def test_fitting_queries_are_held_out_and_clicked():
    from indexers.query_log import QueryLog

    qlog = QueryLog.from_events([(f"q{i}", "a") for i in range(30)] + [("wide", str(i))
                                                                       for i in range(20)])
    held = [f"q{i}" for i in range(25)] + ["wide", "never logged"]
    got = fitting_queries(held, qlog, {"a", *map(str, range(20))}, CFG)
    assert got == sorted(f"q{i}" for i in range(25))  # "wide" clicked 20 > max_clicked items
    assert fitting_queries(held[:10], qlog, {"a"}, CFG) == []  # below min_queries


def test_read_rewrite_fit_only_for_its_model(tmp_path, caplog):
    assert read_rewrite_fit(tmp_path, "v1") is None
    (tmp_path / REWRITE_FIT_FILE).write_text(json.dumps(
        {"rewrite": 0.5, "rewrite_floor": 0.6, "model_version": "v1"}))
    assert read_rewrite_fit(tmp_path, "v1") == {"rewrite": 0.5, "rewrite_floor": 0.6}
    assert read_rewrite_fit(tmp_path, "v2") is None
    assert "fitted for model v1, not v2" in caplog.text


@pytest.mark.parametrize("fitted_fusion", [True, False])
def test_pipeline_weights_take_the_fit(fitted_fusion):
    from plugin.config import PipelineSettings
    from plugin.fitted_weights import fusion_weights

    p = PipelineSettings(fitted_fusion=fitted_fusion)
    w = fusion_weights(p, {"rewrite": 0.25, "rewrite_floor": 0.7, "dense": 0.0})
    assert (w.rewrite, w.rewrite_floor, w.dense) == (
        (0.25, 0.7, 0.0) if fitted_fusion else (p.rewrite_weight, p.rewrite_floor, p.dense_weight))
