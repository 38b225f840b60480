"""Offline retrieval evaluation: hand-checked metrics, edge cases, TREC I/O and the report.

ranx's nDCG is the Järvelin form (linear gain: grade / log2(rank + 1)), as in trec_eval.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from plugin.offline.retrieval_eval import EvalConfig, evaluate_modes, judged_qrels, score_modes
from plugin.offline.trec import (
    EvalQuery,
    read_eval_queries,
    read_qrels,
    read_trec_run,
    run_tag,
    write_trec_run,
)
from rewriters.errors import ConfigError, DataError

L3 = 1 / math.log2(3)  # discount at rank 2 = 0.6309

# q1: three relevant docs (d1 grade 2, d2 and d4 grade 1); d3 judged not relevant.
# q2: one relevant doc. q3: not in the qrels. q4: judged, nothing relevant.
QRELS_TEXT = """\
q1 0 d1 2
q1 0 d2 1
q1 0 d3 0
q1 0 d4 1
q2 0 d5 1
q4 0 d9 0
"""
QUERIES = [EvalQuery("q1", "red barn"), EvalQuery("q2", "birthday flyer"),
           EvalQuery("q3", "unjudged query"), EvalQuery("q4", "nothing relevant")]

RUNS = {
    # q1: d2 (1) · d3 (0) · d1 (2) · x (0); d4 is missed.
    #   DCG@10 = 1/log2(2) + 2/log2(4) = 1 + 1 = 2; IDCG = 2/1 + 1/log2(3) + 1/log2(4) = 3.1309
    #   nDCG@10 = 2 / 3.1309 = 0.6388; recall = 2/3; RR = 1 (rank 1); AP = (1/1 + 2/3) / 3 = 5/9
    # q2: y · d5  →  nDCG = (1/log2(3)) / 1 = 0.6309; recall = 1; RR = 1/2; AP = (1/2) / 1 = 1/2
    # means over q1, q2: nDCG 0.6349, recall 0.8333, MRR 0.75, MAP 0.5278
    "raw": {"q1": [("d2", 9.0), ("d3", 8.0), ("d1", 7.0), ("x", 6.0)],
            "q2": [("y", 0.9), ("d5", 0.8)],
            "q3": [("z", 1.0)], "q4": [("d9", 1.0)]},
    # q1: d1 · d4 · d2 is the ideal ranking → 1 everywhere; q2: no hits → 0 everywhere.
    # means: 0.5 for every metric.
    "rewrite": {"q1": [("d1", 0.3), ("d4", 0.2), ("d2", 0.1)], "q2": [],
                "q3": [], "q4": []},
}
NDCG_Q1_RAW = 2 / (2 + L3 + 0.5)
RAW = {"ndcg@10": (NDCG_Q1_RAW + L3) / 2, "recall@100": (2 / 3 + 1) / 2, "mrr": 0.75,
       "map": (5 / 9 + 1 / 2) / 2}


def table_search(runs):
    return lambda q, mode: runs[mode].get(q.qid, [])


@pytest.fixture
def qrels(tmp_path):
    p = tmp_path / "qrels.txt"
    p.write_text(QRELS_TEXT)
    return read_qrels(p)


def test_metrics_match_hand_computed_values(qrels, tmp_path):
    rep = evaluate_modes(QUERIES, qrels, table_search(RUNS), ["raw", "rewrite"], tmp_path / "out",
                         progress=False)
    assert rep["results"]["raw"]["metrics"] == pytest.approx(RAW)
    assert rep["results"]["rewrite"]["metrics"] == pytest.approx(
        {"ndcg@10": 0.5, "recall@100": 0.5, "mrr": 0.5, "map": 0.5})
    rows = {r["qid"]: r for r in map(json.loads, (tmp_path / "out/per_query.jsonl").open())}
    assert rows["q1"]["modes"]["raw"]["scores"]["ndcg@10"] == pytest.approx(0.6388, abs=1e-4)
    assert rows["q1"]["modes"]["rewrite"]["scores"] == pytest.approx(
        {"ndcg@10": 1, "recall@100": 1, "mrr": 1, "map": 1})
    # deltas of the primary metric (nDCG@10) against raw: q1 +0.36, q2 −0.63
    assert rep["deltas"]["rewrite"] == pytest.approx(
        {"metric": "ndcg@10", "mean": ((1 - NDCG_Q1_RAW) + (0 - L3)) / 2,
         "improved": 1, "unchanged": 0, "worsened": 1})


def test_hits_are_ranked_in_list_order_not_by_score(qrels):
    # Equal scores (ties) and rising scores: the list order is the ranking. With d1 first the
    # AP of q1 is 1; sorted by score it would be d2 first (AP 5/9 as in RUNS["raw"]).
    runs = {"m": {"q1": [("d1", 0.0), ("d4", 0.0), ("d2", 5.0)], "q2": [("d5", 0.0)]}}
    got = score_modes(judged_qrels(qrels, ["q1", "q2"])[0], runs, EvalConfig(metrics=("map",)))
    assert got["means"]["m"]["map"] == pytest.approx(1.0)


def test_empty_run_scores_zero_and_counts_no_hits(qrels, tmp_path):
    rep = evaluate_modes(QUERIES, qrels, lambda q, m: [], ["raw", "rewrite"], tmp_path,
                         progress=False)
    for mode in ("raw", "rewrite"):
        r = rep["results"][mode]
        assert r["metrics"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr": 0.0, "map": 0.0}
        assert r["no_hits"] == 4 and r["no_hits_qids"] == ["q1", "q2", "q3", "q4"]
        assert r["errors"] == 0
        assert (tmp_path / "runs" / f"{mode}.trec").read_text() == ""
    # pure kernel: a run holding no query at all also scores 0 on every judged query
    got = score_modes({"q1": {"d1": 1}}, {"a": {}}, EvalConfig(metrics=("ndcg@10",)))
    assert got["per_query"]["a"]["ndcg@10"] == {"q1": 0.0}


def test_queries_without_qrels_are_counted_excluded_but_still_searched(qrels, tmp_path):
    rep = evaluate_modes(QUERIES, qrels, table_search(RUNS), ["raw"], tmp_path, progress=False)
    assert rep["counts"] == {"queries": 4, "evaluated": 2, "no_qrels": 1, "no_relevant": 1,
                             "qrels_without_query": 0}
    assert rep["excluded"] == {"no_qrels": ["q3"], "no_relevant": ["q4"]}
    # q3 and q4 would pull every mean down if they were scored; they are not
    assert rep["results"]["raw"]["metrics"]["mrr"] == pytest.approx(0.75)
    run = read_trec_run(tmp_path / "runs" / "raw.trec")
    assert set(run.hits) == {"q1", "q2", "q3", "q4"}  # pooled for later judging
    assert rep["deltas"] == {} and rep["files"]["deltas_plot"] is None


def test_failing_or_malformed_search_is_counted_and_scores_zero(qrels, tmp_path):
    def search(q, mode):
        if mode == "flaky" and q.qid == "q1":
            raise TimeoutError("template index timed out")
        if mode == "flaky" and q.qid == "q2":
            return [("d5", 1.0), ("d5", 0.5)]  # duplicate doc: malformed
        return RUNS["raw"].get(q.qid, [])

    rep = evaluate_modes(QUERIES, qrels, search, ["raw", "flaky"], tmp_path, progress=False)
    flaky = rep["results"]["flaky"]
    assert flaky["errors"] == 2 and flaky["no_hits"] == 0
    assert flaky["error_messages"]["q1"] == "TimeoutError: template index timed out"
    assert "twice" in flaky["error_messages"]["q2"]
    assert flaky["metrics"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr": 0.0, "map": 0.0}
    assert rep["results"]["raw"]["metrics"] == pytest.approx(RAW)


def test_identical_modes_are_not_significant(qrels, tmp_path):
    runs = {"a": RUNS["raw"], "b": RUNS["raw"]}
    rep = evaluate_modes(QUERIES, qrels, table_search(runs), ["a", "b"], tmp_path, progress=False)
    assert len(rep["significance"]) == 4  # one pair × four metrics
    for s in rep["significance"]:
        assert (s["p_value"], s["significant"], s["ties"]) == (None, False, 2)
    rows = [ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| ")]
    assert rows and not any("†" in ln for ln in rows)


def test_consistently_better_mode_is_significant():
    rng = random.Random(0)
    qrels = {f"q{i}": {f"rel{i}": 1} for i in range(30)}
    noise = [(f"n{j}", 1.0) for j in range(5)]
    runs = {"worse": {}, "better": {}}
    for i in range(30):  # the relevant doc sits at rank 1-2 in "better", 4-6 in "worse"
        hit = (f"rel{i}", 1.0)
        runs["better"][f"q{i}"] = noise[:rng.randint(0, 1)] + [hit] + noise[2:]
        runs["worse"][f"q{i}"] = noise[:rng.randint(3, 5)] + [hit]
    got = score_modes(qrels, runs, EvalConfig(metrics=("mrr",)))
    (s,) = got["significance"]
    assert (s["a"], s["b"], s["losses"], s["significant"]) == ("worse", "better", 30, True)
    assert s["p_value"] < 1e-6


def test_report_files(qrels, tmp_path):
    rep = evaluate_modes(QUERIES, qrels, table_search(RUNS), ["raw", "rewrite"], tmp_path,
                         cfg=EvalConfig(k=3), progress=False,
                         tag_for_mode=lambda m: run_tag(m, "image,12,4", "v 7"))
    assert json.loads((tmp_path / "report.json").read_text()) == rep
    assert rep["tags"]["rewrite"] == "rewrite|cmd=image,12,4|model=v_7"
    md = (tmp_path / "report.md").read_text()
    assert "| mode | ndcg@10 | recall@100 | mrr | map | no hits | errors |" in md
    assert "| rewrite | " in md and "## Paired tests" in md
    for name in ("metrics.png", "deltas.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    run = read_trec_run(rep["files"]["runs"]["raw"])
    assert run.tag == "raw|cmd=image,12,4|model=v_7" and len(run.hits["q1"]) == 3  # depth k=3


def test_trec_run_round_trip(tmp_path):
    hits = {"q1": [("d2", 0.5), ("d1", 0.25), ("d3", -1e-9)], "q2": [("d9", 3.0)], "q3": []}
    tag = run_tag("fused", command="template,8,4", model_version="2024-05-01 ab12")
    assert tag == "fused|cmd=template,8,4|model=2024-05-01_ab12"
    path = write_trec_run(tmp_path / "r.trec", hits, tag)
    assert path.read_text().splitlines()[0] == f"q1 Q0 d2 1 0.5 {tag}"
    back = read_trec_run(path)
    assert back.tag == tag
    assert back.hits == {"q1": hits["q1"], "q2": hits["q2"]}  # no lines for a query with no hits
    with pytest.raises(DataError, match="doc id 'a b'"):
        write_trec_run(tmp_path / "bad.trec", {"q1": [("a b", 1.0)]}, "t")
    with pytest.raises(DataError, match="run tag"):
        write_trec_run(tmp_path / "bad.trec", hits, "has space")


def test_bad_qrels_line_names_file_and_line(tmp_path):
    p = tmp_path / "qrels.txt"
    p.write_text("q1 0 d1 1\n\nq1 0 d2 high\n")
    with pytest.raises(DataError, match=r"qrels\.txt:3: grade 'high' must be an integer >= 0"):
        read_qrels(p)
    p.write_text("q1 0 d1 1\nq1 d2 1\n")
    with pytest.raises(DataError, match=r"qrels\.txt:2: expected 'qid iteration doc_id grade'"):
        read_qrels(p)
    p.write_text("q1 0 d1 1\nq1 0 d1 2\n")
    with pytest.raises(DataError, match=r"qrels\.txt:2: .* again \(first on line 1\)"):
        read_qrels(p)
    with pytest.raises(DataError, match="does not exist"):
        read_qrels(tmp_path / "missing.txt")


def test_read_queries_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "q.tsv"
    tsv.write_text("qid\tquery\n# a comment\nq1\t  red   barn \n\n7\tbirthday flyer\n")
    assert read_eval_queries(tsv) == [EvalQuery("q1", "red barn"), EvalQuery("7", "birthday flyer")]
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"qid": 7, "query": "sunset beach"}\n\n{"qid": "q2", "query": "menu"}\n')
    assert read_eval_queries(jl) == [EvalQuery("7", "sunset beach"), EvalQuery("q2", "menu")]
    tsv.write_text("q1\tred barn\nq2 no tab here\n")
    with pytest.raises(DataError, match=r"q\.tsv:2: expected 'qid<TAB>query', got 1 field"):
        read_eval_queries(tsv)
    tsv.write_text("q1\tred barn\nq1\tblue barn\n")
    with pytest.raises(DataError, match=r"q\.tsv:2: qid 'q1' repeats line 1"):
        read_eval_queries(tsv)
    jl.write_text('{"qid": "q1", "query": "ok"}\n{"qid": "q2"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: 'query' must be a string"):
        read_eval_queries(jl)
    with pytest.raises(ConfigError, match="allowed: tsv, jsonl"):
        read_eval_queries(jl, fmt="csv")


def test_bad_options_fail_before_any_search(qrels, tmp_path):
    def never(q, m):
        raise AssertionError("searched")

    with pytest.raises(ConfigError, match="unknown metric 'ndcg10'.*allowed: ndcg"):
        EvalConfig(metrics=("ndcg10",))
    with pytest.raises(ConfigError, match="allowed: student, fisher"):
        EvalConfig(stat_test="tukey")
    with pytest.raises(ConfigError, match="bad: \\['raw mode'\\]"):
        evaluate_modes(QUERIES, qrels, never, ["raw mode"], tmp_path, progress=False)
    with pytest.raises(DataError, match="same qids"):
        evaluate_modes([EvalQuery("other", "x")], qrels, never, ["raw"], tmp_path,
                       progress=False)
