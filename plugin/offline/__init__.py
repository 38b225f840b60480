"""Offline work on the plugin: evaluation, precomputed rewrites, fitting, sample data, the demo.

Nothing here runs inside the HTTP service; the CLI (``udrl eval``, ``rewrite-batch``,
``fit-rewrite``, ``catalog``, ``demo``, ``search``) and the index and training jobs call it.
The serving side reads what the fits write through ``plugin.fitted_weights``. Modules::

    pipeline_eval    `udrl eval` over a loaded Pipeline: modes, leak check, rewrite quality
    retrieval_eval   ranx scoring of every mode, paired tests, TREC runs and the report files
    eval_report      the Markdown report and the two plots of `udrl eval`
    report_html      the self-contained HTML report of `udrl eval`
    trec             evaluation queries, qrels and TREC run files
    head_rewrites    `udrl rewrite-batch`: head queries rewritten ahead of time for the cache
    fusion_fit       the fusion weights fitted on the training log when an index is built
    rewrite_fit      the rewrite channel's weight and floor fitted after training
    sample_catalog   a seeded sample catalogue (`udrl catalog`)
    sample_images    the drawn images of the sample catalogue
    demo             the demo queries and the result table (`udrl demo`, `udrl search`)

Public names are imported lazily (``plugin.offline.<name>``), so importing one module never
loads the others (matplotlib, PIL, the pipeline).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "eval_retrieval": "pipeline_eval", "default_modes": "pipeline_eval",
    "leaked_queries": "pipeline_eval", "parse_command_spec": "pipeline_eval",
    "rewrite_quality_report": "pipeline_eval",
    "SearchFn": "retrieval_eval", "EvalConfig": "retrieval_eval",
    "METRIC_NAMES": "retrieval_eval", "STAT_TESTS": "retrieval_eval",
    "judged_qrels": "retrieval_eval", "per_query_scores": "retrieval_eval",
    "score_modes": "retrieval_eval", "evaluate_modes": "retrieval_eval",
    "markdown_report": "eval_report", "plot_metrics": "eval_report",
    "plot_deltas": "eval_report",
    "html_report": "report_html", "query_rows": "report_html",
    "write_html_report": "report_html",
    "EvalQuery": "trec", "TrecRun": "trec", "read_eval_queries": "trec", "read_qrels": "trec",
    "run_tag": "trec", "write_trec_run": "trec", "read_trec_run": "trec",
    "precompute_rewrites": "head_rewrites", "read_head_queries": "head_rewrites",
    "FusionFitConfig": "fusion_fit", "fit_fusion": "fusion_fit",
    "RewriteFitConfig": "rewrite_fit", "fit_rewrite_fusion": "rewrite_fit",
    "write_sample_catalog": "sample_catalog", "draw_sample_image": "sample_images",
    "DEMO_QUERIES": "demo", "run_demo_queries": "demo", "format_results": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
