"""The HTML report of `udrl eval` (plugin.offline.report_html): rows by hand, a self-contained file.

The table is sorted and filtered in a real browser in test_browser.py.
"""

from __future__ import annotations

import base64
import re

import pytest

from plugin.offline.report_html import query_rows
from plugin.offline.retrieval_eval import EvalConfig, evaluate_modes
from plugin.offline.trec import EvalQuery

QUERIES = [EvalQuery("q1", "red barn"), EvalQuery("q2", "<b>flyer</b> & co"),
           EvalQuery("q3", "not judged")]
QRELS = {"q1": {"d1": 2, "d3": 0}, "q2": {"d5": 1}}
# MRR by hand: q1 raw finds d1 at rank 2 (0.5), rewrite at rank 1 (1.0) → +0.5;
#              q2 raw finds d5 at rank 1 (1.0), rewrite misses it (0.0) → −1.0
RUNS = {
    "raw": {"q1": [("d3", 2.0), ("d1", 1.0), ("d7", 0.5)], "q2": [("d5", 1.0)], "q3": []},
    "rewrite": {"q1": [("d1", 3.0), ("d3", 2.0)], "q2": [("d6", 1.0)], "q3": [("d1", 1.0)]},
}
PER_QUERY = {"raw": {"mrr": {"q1": 0.5, "q2": 1.0}}, "rewrite": {"mrr": {"q1": 1.0, "q2": 0.0}}}
PROMPTS = {("rewrite", "q1"): ("red barn in a field", "rewrite"),
           ("rewrite", "q2"): ("<b>flyer</b> & co", "raw")}


def test_query_rows_by_hand():
    rows = query_rows(QUERIES, QRELS, RUNS, PER_QUERY, "mrr",
                      prompt_of=lambda m, q: PROMPTS.get((m, q)),
                      title_of={"d1": "Red barn"}.get, top=2)
    assert [r["qid"] for r in rows] == ["q1", "q2"]  # q3 has no qrels: not evaluated
    q1, q2 = rows
    assert q1["delta"] == {"rewrite": pytest.approx(0.5)}
    assert q2["delta"] == {"rewrite": pytest.approx(-1.0)}
    assert q1["scores"] == {"raw": 0.5, "rewrite": 1.0}
    # top 2 per mode, grade from the qrels (None: unjudged), title where known
    assert q1["hits"]["raw"] == [("d3", 0, None), ("d1", 2, "Red barn")]
    assert q2["hits"]["rewrite"] == [("d6", None, None)]
    assert q1["prompts"] == {"rewrite": ("red barn in a field", "rewrite")}


def test_rows_without_prompts_or_hits():
    rows = query_rows(QUERIES, QRELS, {"raw": {}}, {"raw": {"mrr": {"q1": 0.0, "q2": 0.0}}},
                      "mrr")
    assert [(r["delta"], r["prompts"], r["hits"]) for r in rows] == [
        ({}, {}, {"raw": []}), ({}, {}, {"raw": []})]


@pytest.fixture
def written(tmp_path):
    rep = evaluate_modes(QUERIES, QRELS, lambda q, m: RUNS[m][q.qid], ["raw", "rewrite"],
                         tmp_path, EvalConfig(metrics=("mrr", "ndcg@10")), progress=False,
                         prompt_of=lambda m, q: PROMPTS.get((m, q)))
    return rep, tmp_path


def test_eval_writes_a_self_contained_html_report(written):
    rep, out = written
    assert rep["files"]["html"] == str(out / "report.html")
    html = (out / "report.html").read_text()
    # nothing is loaded from elsewhere: no links, no external scripts, no remote images
    assert not re.search(r"<link|<script\s+src|@import|url\(|src=\"(?!data:image/png;base64,)",
                         html)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert [base64.b64decode(e) for e in embedded] == [
        (out / "metrics.png").read_bytes(), (out / "deltas.png").read_bytes()]
    # metric table: both modes, MRR means 0.75 and 0.5 (see RUNS)
    assert "<th>raw</th><td>0.7500</td>" in html and "<th>rewrite</th><td>0.5000</td>" in html
    assert "Paired tests" in html
    # per-query rows with the change as a sortable number, text escaped
    assert 'data-qid="q1" data-order="0" data-d0="0.5"' in html
    assert 'data-qid="q2" data-order="1" data-d0="-1.0"' in html
    assert "&lt;b&gt;flyer&lt;/b&gt; &amp; co" in html and "<b>flyer</b>" not in html
    assert 'data-qid="q3"' not in html
    assert "10 most hurt by rewrite" in html
    assert '<span class="path path-raw">raw</span>' in html  # q2's prompt fell back


def test_single_mode_report_has_no_change_columns(tmp_path):
    rep = evaluate_modes(QUERIES, QRELS, lambda q, m: RUNS[m][q.qid], ["raw"], tmp_path,
                         EvalConfig(metrics=("mrr",)), progress=False)
    html = (tmp_path / "report.html").read_text()
    assert rep["deltas"] == {} and 'class="hurt"' not in html and "data-d0" not in html
    assert "Δ " not in html and 'data-qid="q1"' in html
    assert html.count('src="data:image/png;base64,') == 1  # no deltas plot
