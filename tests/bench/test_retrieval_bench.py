"""bench.retrieval's pure parts: reuse-or-rebuild, report reading, targets, query trimming.

Nothing is trained or downloaded: the data is built from the hand-made icons fixture placed
where a fetched copy would be cached, and the reports are written out by hand below.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import retrieval as rb

FIXTURE = Path(__file__).parent / "fixtures" / "tabler_icons.json"


@pytest.fixture()
def data(tmp_path) -> Path:
    """The benchmark built offline from the fixture (the icons file sits in the npm cache)."""
    icons = tmp_path / "datasets" / "tabler-icons-3.52.0.json"
    icons.parent.mkdir()
    shutil.copy(FIXTURE, icons)
    out = tmp_path / "bench" / "tabler" / "data"
    assert rb.ensure_data(out, tmp_path / "datasets") is True
    return out


# -- the cached data and the reuse decision -----------------------------------------------------

def test_data_is_built_once_and_every_file_is_hashed(data, tmp_path):
    assert rb.ensure_data(data, tmp_path / "datasets") is False  # all files there: kept
    digests = rb.file_digests(data)
    assert sorted(digests) == sorted(rb.DATA_FILES)
    assert all(len(h) == 64 for h in digests.values())
    assert (data / "mismatch" / "queries.tsv").read_text().count("\n") == 19  # fixture: 19 tags
    assert not (data.parent / f".{data.name}.tmp").exists()


def test_a_missing_data_file_rebuilds_the_same_data(data, tmp_path):
    before = rb.file_digests(data)
    (data / "log.tsv").unlink()
    assert rb.ensure_data(data, tmp_path / "datasets") is True
    assert rb.file_digests(data) == before  # seeded draw: the same files again


STAMP = {"data": {"catalog.jsonl": "aa", "log.tsv": "bb"}, "commit": "abc123",
         "built": "2026-01-01T00:00:00Z"}


def test_reuses_a_model_built_from_the_same_data():
    reuse, why = rb.reuse_decision(STAMP, {"catalog.jsonl": "aa", "log.tsv": "bb"}, True, False)
    assert reuse and "abc123" in why


def test_a_new_commit_alone_does_not_rebuild():
    stamp = {**STAMP, "commit": "an-older-commit"}
    assert rb.reuse_decision(stamp, {"catalog.jsonl": "aa", "log.tsv": "bb"}, True, False)[0]


@pytest.mark.parametrize("stamp, digests, has_model, retrain, reason", [
    (STAMP, {"catalog.jsonl": "aa", "log.tsv": "CHANGED"}, True, False, "log.tsv"),
    (STAMP, {"catalog.jsonl": "aa", "log.tsv": "bb", "match/qrels.txt": "cc"}, True, False,
     "match/qrels.txt"),  # a file the stamp does not know counts as changed
    (None, {"catalog.jsonl": "aa", "log.tsv": "bb"}, True, False, "bench_stamp.json"),
    (STAMP, {"catalog.jsonl": "aa", "log.tsv": "bb"}, False, False, "no trained model"),
    (STAMP, {"catalog.jsonl": "aa", "log.tsv": "bb"}, True, True, "UDRL_BENCH_RETRAIN"),
])
def test_rebuilds_when_data_model_or_stamp_is_missing_or_asked(stamp, digests, has_model,
                                                               retrain, reason):
    reuse, why = rb.reuse_decision(stamp, digests, has_model, retrain)
    assert not reuse and reason in why


def test_an_edited_data_file_invalidates_the_stamp(data):
    stamp = {"data": rb.file_digests(data), "commit": None}
    assert rb.reuse_decision(stamp, rb.file_digests(data), True, False)[0]
    with (data / "match" / "qrels.txt").open("a") as fh:
        fh.write("m-9999 0 extra-icon 1\n")
    reuse, why = rb.reuse_decision(stamp, rb.file_digests(data), True, False)
    assert not reuse and why.endswith("match/qrels.txt")


# -- trimming the query files for a quick run --------------------------------------------------

def test_trim_keeps_the_first_n_queries_and_skips_blank_lines(tmp_path):
    src = tmp_path / "queries.tsv"
    src.write_text("q1\tab-test\n\nq2\tsquirrel\nq3\tvital signs\nq4\tgondola\nq5\t911\n")
    dst = tmp_path / "quick" / "mismatch" / "queries.tsv"
    assert rb.trim_queries(src, dst, 3) == 3
    assert dst.read_text() == "q1\tab-test\nq2\tsquirrel\nq3\tvital signs\n"
    assert rb.trim_queries(src, dst, 50) == 5  # fewer than n: all of them
    assert rb.trim_queries(src, tmp_path / "none.tsv", 0) == 0
    assert (tmp_path / "none.tsv").read_text() == ""


# -- reading an eval report and checking the targets ------------------------------------------

def eval_report(ndcg: dict[str, float], significance: list[dict]) -> dict:
    """The parts of a `udrl eval` report.json that the bench reads."""
    return {
        "counts": {"queries": 100, "evaluated": 100},
        "results": {m: {"metrics": {"ndcg@10": v, "mrr": 0.0}} for m, v in ndcg.items()},
        "significance": significance,
        "rewrite_quality": {"rewrite": {
            "count": 98, "length_mse": 0.5, "within_2": 0.97, "fallback_rate": 0.02,
            "distinct_2": 0.8, "relevance_by_bucket": {"0": None, "4": 0.61}}},
    }


def sig(a, b, p, wins, ties, losses):
    return {"a": a, "b": b, "metric": "ndcg@10", "p_value": p, "significant": p <= 0.05,
            "wins": wins, "ties": ties, "losses": losses}


# mismatch: raw .30 dense .40 hybrid .44 rewrite .38 fused .47, teacher .40
#   best single = max(.30, .40) = .40 → fused - best = +.07      ≥ 0      pass
#   fused .47                                                      ≥ .45    pass
#   fused - hybrid = +.03                                          ≥ .02    pass
#   rewrite / teacher = .38 / .40 = .95                            ≥ .94    pass
MISMATCH = eval_report(
    {"raw": 0.30, "dense": 0.40, "hybrid": 0.44, "rewrite": 0.38, "fused": 0.47},
    # ranx lists each pair in mode order (a before b): counts are from the first mode's side
    [sig("raw", "fused", 0.001, 10, 50, 40), sig("dense", "fused", 0.03, 20, 55, 25),
     sig("hybrid", "fused", 0.04, 5, 80, 15), sig("raw", "fused", 0.5, 0, 100, 0) | {
         "metric": "mrr"}])
# match: raw .80 dense .60 hybrid .78 rewrite .70 fused .79, teacher .80
#   fused - raw = -.01                                             ≥ -.005  FAIL
#   rewrite / teacher = .70 / .80 = .875                           ≥ .94    FAIL
MATCH = eval_report(
    {"raw": 0.80, "dense": 0.60, "hybrid": 0.78, "rewrite": 0.70, "fused": 0.79},
    [sig("raw", "fused", 0.2, 30, 50, 20), sig("hybrid", "fused", 0.6, 10, 80, 10)])


def test_paired_reads_the_test_from_the_first_names_side():
    # the report has (hybrid, fused): 5 hybrid wins, 15 fused wins → from fused: 15 / 80 / 5
    assert rb.paired(MISMATCH, "fused", "hybrid") == pytest.approx(
        {"delta": 0.03, "p_value": 0.04, "significant": True, "wins": 15, "ties": 80,
         "losses": 5})
    assert rb.paired(MISMATCH, "hybrid", "fused")["wins"] == 5
    # only the ndcg@10 entry counts, not the mrr one listed later
    assert rb.paired(MISMATCH, "fused", "raw")["p_value"] == 0.001
    # a pair the report did not test: the difference only
    assert rb.paired(MISMATCH, "rewrite", "dense") == pytest.approx({"delta": -0.02})


def test_slice_summary_numbers():
    s = rb.slice_summary(MISMATCH, 0.40)
    assert s["ndcg@10"]["teacher"] == 0.40 and s["queries"] == 100
    assert s["fused_minus_best_single"] == pytest.approx(0.07)
    assert s["rewrite_contribution"]["delta"] == pytest.approx(0.03)
    assert s["fused_vs_raw"]["wins"] == 40 and s["fused_vs_raw"]["losses"] == 10
    assert s["fused_vs_dense"]["delta"] == pytest.approx(0.07)
    assert s["rewrite_over_teacher"] == pytest.approx(0.95)
    assert s["rewrite_quality"]["relevance_by_bucket"] == {"4": 0.61}  # empty buckets dropped
    assert s["rewrite_quality"]["count"] == 98 and s["rewrite_quality"]["within_2"] == 0.97
    assert rb.slice_summary(MISMATCH, None)["rewrite_over_teacher"] is None
    assert rb.slice_summary(MISMATCH, 0.0)["rewrite_over_teacher"] is None


def rounds(*top_bucket: float) -> dict:
    return {"rounds": [{"round": i, "examples": 1000 + i, "length_mse": 0.4, "within_2": 0.98,
                        "relevance_by_bucket": {"0": 0.1, "4": v}, "explore_mean_relevance": v}
                       for i, v in enumerate(top_bucket)]}


def test_rounds_compare_the_final_round_with_round0_on_the_top_bucket():
    r = rb.rounds_summary(rounds(0.50, 0.52, 0.55))
    assert r["count"] == 3 and r["top_bucket"] == 4 and r["final_above_round0"] is True
    assert r["round0"]["relevance_by_bucket"]["4"] == 0.50 and r["final"]["round"] == 2
    assert rb.rounds_summary(rounds(0.50, 0.49))["final_above_round0"] is False
    assert rb.rounds_summary(rounds(0.50))["final_above_round0"] is None  # train.rounds = 0
    assert rb.rounds_summary({}) == {"count": 0, "final_above_round0": None}


def test_targets_from_hand_made_reports():
    slices = {"mismatch": rb.slice_summary(MISMATCH, 0.40),
              "match": rb.slice_summary(MATCH, 0.80)}
    t = rb.compute_targets(slices, similarity=0.52,
                           length={"length_mse": 1.2, "within_2": 0.96},  # MSE fails
                           rounds=rb.rounds_summary(rounds(0.50, 0.55)), train_s=3000.0)
    passed = {name: v["pass"] for name, v in t.items()}
    assert passed == {
        "mismatch.fused_ge_best_single": True,  # +.07
        "mismatch.fused_ge_0.45": True,  # .47
        "mismatch.rewrite_adds_0.02": True,  # +.03
        "match.fused_ge_raw_minus_0.005": False,  # -.01
        "mismatch.rewrite_ge_0.94_teacher": True,  # .95
        "match.rewrite_ge_0.94_teacher": False,  # .875
        "similarity_ge_0.5": True,  # .52
        "length_mse_le_1": False,  # 1.2
        "within_2_ge_95pct": True,  # .96
        "final_round_above_round0": True,  # .55 > .50
        "train_le_45_min": False,  # 3000 s > 2700 s
    }
    assert t["match.fused_ge_raw_minus_0.005"]["value"] == pytest.approx(-0.01)
    assert t["match.rewrite_ge_0.94_teacher"]["value"] == pytest.approx(0.875)


def test_targets_that_cannot_be_told_are_none_and_no_udrl_round_fails():
    slices = {"mismatch": rb.slice_summary(MISMATCH, None)}  # no teacher number
    t = rb.compute_targets(slices, similarity=None, length=None,
                           rounds=rb.rounds_summary(rounds(0.5)), train_s=None)
    assert t["mismatch.rewrite_ge_0.94_teacher"]["pass"] is None
    assert t["similarity_ge_0.5"]["pass"] is None and t["length_mse_le_1"]["pass"] is None
    assert t["within_2_ge_95pct"]["pass"] is None and t["train_le_45_min"]["pass"] is None
    assert t["final_round_above_round0"] == {  # only round 0: UDRL never ran, a fail
        "value": 1, "goal": "rounds >= 2 and final top-bucket relevance > round 0's",
        "pass": False}
    # the boundaries are inclusive: exactly at each goal passes
    edge = rb.compute_targets({}, 0.5, {"length_mse": 1.0, "within_2": 0.95},
                              rb.rounds_summary({}), 2700.0)
    assert all(edge[k]["pass"] for k in ("similarity_ge_0.5", "length_mse_le_1",
                                         "within_2_ge_95pct", "train_le_45_min"))


# -- the section without a cached model ----------------------------------------------------------

def test_quick_run_with_an_empty_cache_is_skipped_without_touching_it(tmp_path, monkeypatch):
    def no_subprocess(*a, **k):
        raise AssertionError("a quick run without a model must not run anything")

    monkeypatch.setattr(rb.subprocess, "run", no_subprocess)
    assert rb.run(quick=True, cache=tmp_path) == rb.SKIPPED
    assert "skipped" in rb.SKIPPED and "--only retrieval" in rb.SKIPPED["skipped"]
    assert list(tmp_path.iterdir()) == []  # no data built, no workspace made


def test_quick_run_reads_the_cache_root_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("UDRL_DATA_CACHE", str(tmp_path))
    ws = tmp_path / "bench" / "tabler" / "ws" / "rewriter"
    ws.mkdir(parents=True)  # a workspace without metrics.json: training never finished
    assert rb.run(quick=True) == rb.SKIPPED
