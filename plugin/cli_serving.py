"""``udrl`` commands around the pipeline: serve, search, rewrite-batch, catalog, demo.

Registered on the main app by ``plugin.cli``; like every command they parse, validate and call
library code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from rewriters.errors import ConfigError

__all__ = ["register"]

log = logging.getLogger("udrl")


def _settings(ctx: typer.Context, **dotted: Any):
    from .config import with_overrides

    return with_overrides(ctx.obj, dotted)


def serve(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8080)."),
    engine: Optional[str] = typer.Option(None, help="auto | onnx | ctranslate2 | torch"),
    log_format: Optional[str] = typer.Option(
        None, "--log-format", help="text | json (one object per line; default "
                                   "service.log_format)"),
) -> None:
    """Run the HTTP rewrite hook (FastAPI + uvicorn). Indexes that are missing or unreachable
    are reported on /readyz (503) instead of stopping the service."""
    import uvicorn

    from .config import get_settings
    from .hook import load_pipeline
    from .logs import configure_logging
    from .service import bind_warning, create_app

    s = _settings(ctx, **{"service.host": host, "service.port": port,
                          "pipeline.engine": engine, "service.log_format": log_format})
    configure_logging(ctx.find_root().params.get("verbose", False), s.service.log_format)
    warning = bind_warning(s)
    if warning:
        log.warning(warning)
    # load before serving: a missing rewriter is one error line. The app owns the pipeline: it
    # closes it at shutdown, or once a reload has replaced it and its last request is done
    app = create_app(load_pipeline(s), own=True)
    app.dependency_overrides[get_settings] = lambda: s
    # log_config=None: uvicorn's lines go through the handler configured above
    uvicorn.run(app, host=s.service.host, port=s.service.port, log_level="info",
                log_config=None)


def search(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="Search query."),
    k: int = typer.Option(5, "-k", help="Results per modality."),
    task: Optional[str] = typer.Option(None, help="Only this task (default: intent routing)."),
    no_fusion: bool = typer.Option(False, "--no-fusion", help="Rewritten-query results only."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run QUERY through intent → rewrite → retrieval in-process and print the results
    (only the indexes QUERY is routed to are loaded)."""
    from .offline.demo import format_results
    from .hook import load_pipeline, routed_tasks
    from .query import Query

    checked = Query(query)  # before anything loads: a bad query is one error line
    s = _settings(ctx)
    pipe = load_pipeline(s, tasks=routed_tasks(s, checked, task))
    try:
        res = pipe.search(checked, k=k, task=task, fusion=False if no_fusion else None,
                          deadline_ms=60_000)  # interactive: show what the model writes
    finally:
        pipe.close()
    typer.echo(json.dumps(res.to_dict(), indent=2) if as_json else format_results([res], k))


def rewrite_batch(
    ctx: typer.Context,
    queries: Path = typer.Argument(..., help="Head queries, one per line."),
    out: Optional[Path] = typer.Option(None, help="Output JSONL (default "
                                                  "<workspace>/rewrites.jsonl)."),
    task: Optional[str] = typer.Option(None, help="Only this task (default: intent routing)."),
    n: int = typer.Option(1, "-n", help="Prompts per query and task."),
) -> None:
    """Precompute rewrites for head queries into a file the service loads at start."""
    from .hook import load_pipeline
    from .offline.head_rewrites import precompute_rewrites, read_head_queries

    s = _settings(ctx)
    head = read_head_queries(queries)
    target = out or s.precomputed_path
    pipe = load_pipeline(s, indexes=False, precomputed=False)
    try:
        summary = precompute_rewrites(pipe, head, target, task=task, n=n)
    finally:
        pipe.close()
    typer.echo(json.dumps(summary, indent=2))


def catalog(
    out: Path = typer.Argument(..., help="Folder for the generated sample catalogue."),
    images: int = typer.Option(240, help="Images to draw."),
    templates: int = typer.Option(400, help="Templates to write."),
    seed: int = typer.Option(0),
) -> None:
    """Generate a sample catalogue (images + templates) for trying the plugin offline."""
    from .offline.sample_catalog import write_sample_catalog

    if images < 1 or templates < 1:
        raise ConfigError("--images and --templates must be at least 1")
    typer.echo(json.dumps(write_sample_catalog(out, n_images=images, n_templates=templates,
                                               seed=seed), indent=2, default=str))


def demo(ctx: typer.Context, k: int = typer.Option(3, "-k", help="Results shown per task.")) -> None:
    """Run a handful of queries through the whole pipeline and print a table."""
    from .offline.demo import NEXT_STEPS, format_results, prompt_similarity, run_demo_queries
    from .hook import load_pipeline

    s = _settings(ctx)
    pipe = load_pipeline(s)
    try:
        results = run_demo_queries(pipe, k=k)
    finally:
        pipe.close()
    typer.echo(format_results(results, top=k))
    sim = prompt_similarity(results, pipe.text_encoder)
    typer.echo(f"\nmean similarity of the {sim['prompts']} model-written prompts to their "
               f"queries (MiniLM cosine): {sim['mean']:.3f}")
    routed = {t for r in results for t in r.rewrite.tasks}
    found = sum(bool(m.results) for r in results for m in r.modalities)
    typer.echo(f"\n{len(results)} queries; tasks routed: {', '.join(sorted(routed))}; "
               f"{found} result lists returned; engine {type(pipe.rewriter).__name__}, "
               f"model {pipe.model_version}")
    config = getattr(ctx.find_root().params, "get", lambda *_: None)("config") or "udrl.toml"
    typer.echo("\n" + NEXT_STEPS.format(config=config, ws=s.workspace))


def evaluate(
    ctx: typer.Context,
    queries: Path = typer.Argument(..., help="Queries: TSV (qid<TAB>query) or JSONL."),
    qrels: Path = typer.Argument(..., help="Graded qrels in TREC format."),
    task: str = typer.Option("template", help="Index to evaluate: image | template."),
    modes: str = typer.Option("auto", help="Comma-separated: raw, dense, rewrite, hybrid (raw + "
                              "dense), fused (all three); auto: every mode the index has."),
    command: list[str] = typer.Option([], "--command",
                                      help="Extra rewrite command LENGTH[:RELEVANCE]; repeatable."),
    k: int = typer.Option(100, "-k", help="Run depth (hits per query)."),
    metrics: str = typer.Option("ndcg@10,recall@100,mrr,map", help="ranx metric names."),
    stat_test: str = typer.Option("student", help="Paired test: student | fisher."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default <workspace>/reports/"
                                                  "eval-<task>)."),
    no_relevance: bool = typer.Option(False, "--no-relevance",
                                      help="Skip scoring prompt relevance in the quality report."),
) -> None:
    """Offline retrieval evaluation: TREC runs per mode, ranx metrics and significance."""
    from .hook import load_pipeline
    from .jobs import make_scorer
    from .offline.pipeline_eval import eval_retrieval
    from .offline.retrieval_eval import EvalConfig
    from .offline.trec import read_eval_queries, read_qrels

    s = _settings(ctx)
    cfg = EvalConfig(k=k, metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
                     stat_test=stat_test)
    qs, judged = read_eval_queries(queries), read_qrels(qrels)
    mode_list = (None if modes.strip() == "auto"
                 else [m.strip() for m in modes.split(",") if m.strip()])
    out_dir = out or s.reports_dir / f"eval-{task}"
    pipe = load_pipeline(s)
    try:
        report = eval_retrieval(pipe, qs, judged, task, out_dir, mode_list, command, cfg,
                                None if no_relevance else make_scorer(s, "minilm"))
    finally:
        pipe.close()
    from .offline.eval_report import markdown_report

    typer.echo(markdown_report(report))
    for mode, q in report["rewrite_quality"].items():
        if q.get("count"):
            typer.echo(f"rewrite quality [{mode}]: length MSE {q['length_mse']:.2f}, within ±2 "
                       f"{100 * q['within_2']:.1f}%, distinct-2 {q['distinct_2']:.3f}, "
                       f"fallback rate {100 * q['fallback_rate']:.1f}%")
    typer.echo(f"report: {report['files']['report']}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command()(serve)
    app.command()(search)
    app.command("rewrite-batch")(rewrite_batch)
    app.command()(catalog)
    app.command()(demo)
