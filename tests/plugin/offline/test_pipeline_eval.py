import json

import pytest

from plugin.offline.head_rewrites import precompute_rewrites
from plugin.offline.pipeline_eval import eval_retrieval, parse_command_spec
from plugin.offline.trec import EvalQuery, read_trec_run
from plugin.rewrite import read_precomputed
from rewriters.errors import ConfigError

from ...indexers.template_fixtures import make_templates
from ..fakes import FakeRewriter


def test_parse_command_spec():
    assert parse_command_spec("12") == (12, None)
    assert parse_command_spec(" 8:3 ") == (8, 3)
    for bad in ("x", "12:9", "2", "12:"):
        with pytest.raises(ConfigError):
            parse_command_spec(bad)


def test_eval_retrieval_modes_runs_and_quality(make_pipeline, tmp_path):
    # every 10th synthetic template has a unique title word: searching for it must find it.
    # The fake rewrite keeps the query's first word and pads, so it finds it too.
    cat = make_templates(120)
    words = sorted(cat.distinctive)[:6]
    queries = [EvalQuery(f"q{i}", f"{w} design") for i, w in enumerate(words)]
    queries.append(EvalQuery("q-unjudged", "anything"))
    qrels = {f"q{i}": {cat.distinctive[w]: 2} for i, w in enumerate(words)}
    pipe = make_pipeline(FakeRewriter())
    report = eval_retrieval(pipe, queries, qrels, "template", tmp_path / "ev",
                            commands=["5:2"], progress=False)
    modes = ["raw", "rewrite", "fused", "rewrite@len=5.rel=2", "fused@len=5.rel=2"]
    assert report["modes"] == modes
    assert report["counts"]["no_qrels"] == 1 and report["counts"]["evaluated"] == 6
    assert report["results"]["raw"]["metrics"]["mrr"] == pytest.approx(1.0)
    run = read_trec_run(tmp_path / "ev" / "runs" / "rewrite@len=5.rel=2.trec")
    assert "fake-v1" in run.tag and "template,5,2" in run.tag
    q = report["rewrite_quality"]["rewrite@len=5.rel=2"]
    assert q["count"] == 7 and q["fallback_rate"] == 0.0
    assert q["length_mse"] == 0.0 and q["within_2"] == 1.0  # fake prompts hit the length
    assert "raw" not in report["rewrite_quality"]
    saved = json.loads((tmp_path / "ev" / "rewrite_quality.json").read_text())
    assert saved.keys() == report["rewrite_quality"].keys()
    with pytest.raises(ConfigError, match="unknown mode"):
        eval_retrieval(pipe, queries, qrels, "template", tmp_path / "x", modes=["best"])


def test_precompute_rewrites_round_trip(make_pipeline, tmp_path):
    pipe = make_pipeline(FakeRewriter(), generation={"image_length": 4})
    target = tmp_path / "rewrites.jsonl"
    summary = precompute_rewrites(pipe, ["red dog", "modern poster", "cozy cabin"], target,
                                  task="image", progress=False)
    assert summary["rows"] == 3 and summary["fell_back_to_raw"] == 0
    rows, rejects = read_precomputed(target)
    assert not rejects and {r["query"] for r in rows} == {"red dog", "modern poster", "cozy cabin"}
    fresh = make_pipeline(FakeRewriter(), generation={"image_length": 4},
                          pipeline={"precomputed": str(target)})
    res = fresh.rewrite("Red Dog", task="image")
    assert res.prompts[0].source == "precomputed" and fresh.rewriter.calls == []
