"""Batch jobs behind the CLI: wiring settings to the rewriter library. No argument parsing here.

Each job takes :class:`plugin.config.Settings`, calls library functions, writes its outputs under
the workspace and returns a JSON-able report that the CLI prints. Index builds, publishing
and rollback are in ``plugin.index_jobs``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rewriters.data import read_examples, split_by_query, write_examples
from rewriters.errors import ConfigError, DataError, ModelError
from rewriters.rewards import Scorer, load_scorer, relabel

from .config import Settings
from .grounded_jobs import WORKSPACE_LOG, query_log_of

__all__ = [
    "distill_job",
    "eval_rewriter_job",
    "load_query_specs",
    "make_scorer",
    "make_teacher",
    "relabel_file",
    "train_intent_job",
    "train_job",
]

log = logging.getLogger(__name__)


def _has_catalogue(settings: Settings) -> bool:
    return settings.template_index_dir.is_dir() or settings.image_index_dir.is_dir() or (
        "elasticsearch" in (settings.index.template_backend, settings.index.image_backend)
        and bool(settings.index.es_url))


def make_scorer(settings: Settings, kind: str | None = None, grounder=None) -> Scorer:
    """The return scorer the settings name (``kind`` overrides): ``retrieval`` (nDCG@10 of what
    a prompt retrieves against the query's clicks or grounding set), ``minilm`` (similarity of
    prompt and query) or ``lexical``; ``auto`` is retrieval when a catalogue index exists."""
    kind = kind or settings.scorer
    if kind == "auto":
        kind = "retrieval" if _has_catalogue(settings) else "minilm"
    if kind != "retrieval":
        return load_scorer(kind, settings.scorer_model)
    from rewriters.retrieval_return import RetrievalScorer

    from .grounded_jobs import open_grounder

    grounder = grounder or open_grounder(settings, query_log_of(settings))
    if grounder is None or grounder.template_index is None:
        raise ModelError("the retrieval return needs a template index; build one with `udrl "
                         "index templates`, or set scorer = \"minilm\"")
    return RetrievalScorer(grounder.search_prompts, grounder.targets)


def make_teacher(settings: Settings, grounder=None):
    """The teacher the settings name: ``catalog`` (grounded in the workspace's indexes and the
    query log; ``auto`` picks it whenever a catalogue index exists), ``builtin`` (offline
    composer of its own vocabulary) or ``openai`` (an OpenAI-compatible LLM, given the catalogue
    neighbours as context when an index exists)."""
    from rewriters.builtin_teacher import BuiltinTeacher
    from rewriters.teachers import OpenAITeacher

    from .grounded_jobs import open_grounder

    t = settings.teacher
    kind = t.kind
    if kind == "auto":
        kind = "catalog" if _has_catalogue(settings) else "builtin"
    if kind == "builtin":
        return BuiltinTeacher(seed=t.seed)
    grounder = grounder or open_grounder(settings, query_log_of(settings))
    if kind == "catalog":
        from rewriters.catalog_teacher import CatalogTeacher, document_frequencies
        from rewriters.grounding import GroundItem

        if grounder is None:
            raise ModelError("the catalog teacher needs an index; build one with `udrl index "
                             "templates` (or `udrl index images`), or use --teacher builtin")
        docs = grounder.template_index.documents() if grounder.template_index else []
        df, n = document_frequencies([GroundItem(id=d.id, title=d.title, tags=tuple(d.tags),
                                                 category=d.category) for d in docs])
        return CatalogTeacher(grounder, vocabulary_df=df or None, n_docs=n or None)
    key = t.api_key.get_secret_value() if t.api_key else None
    return OpenAITeacher(base_url=t.base_url, model=t.model, api_key=key, timeout_s=t.timeout_s,
                         max_retries=t.max_retries, grounder=grounder)


def load_query_specs(settings: Settings):
    """Seed queries from the settings' file (a query log or a seed file); with none, pseudo-
    queries drawn from the catalogue for the catalog teacher, else the builtin generator."""
    from rewriters.queries import builtin_queries

    from .grounded_jobs import catalogue_queries, read_query_source

    if settings.queries_file is not None:
        return read_query_source(settings.queries_file)[0]
    kind = settings.teacher.kind
    if kind == "catalog" or (kind == "auto" and _has_catalogue(settings)):
        return catalogue_queries(settings, settings.builtin_queries, settings.teacher.seed)
    return builtin_queries(settings.builtin_queries, seed=settings.teacher.seed)


def relabel_file(path: Path, scorer: Scorer, progress: bool = True) -> dict[str, Any]:
    """Score relevance where missing and re-bucket every example of a JSONL file, atomically."""
    loaded = read_examples(path)
    if not loaded.examples:
        raise DataError(f"{path} holds no valid examples to relabel")
    examples, edges = relabel(loaded.examples, scorer, progress=progress)
    write_examples(path, examples)
    return {"examples": len(examples), "rejected_lines": len(loaded.rejects),
            "bucket_edges": edges.to_json()}


def distill_job(settings: Settings, progress: bool = True, score: bool = True) -> dict[str, Any]:
    """Distil examples from the teacher into the workspace JSONL, then relabel them."""
    from dataclasses import asdict

    from rewriters.distill import DistillConfig, run_distill

    from .grounded_jobs import open_grounder

    specs = load_query_specs(settings)
    qlog = query_log_of(settings)
    if qlog is not None and settings.queries_file is not None:  # kept for train's returns
        import shutil

        settings.workspace.mkdir(parents=True, exist_ok=True)
        kept = settings.workspace / WORKSPACE_LOG
        if settings.queries_file.resolve() != kept.resolve():
            shutil.copyfile(settings.queries_file, kept)
    grounder = open_grounder(settings, qlog) if _has_catalogue(settings) else None
    teacher = make_teacher(settings, grounder)
    cfg = DistillConfig(prompts_per_task=settings.teacher.prompts_per_task,
                        concurrency=settings.teacher.concurrency, seed=settings.teacher.seed)
    report = asdict(run_distill(specs, teacher, settings.data_path, cfg, progress=progress))
    report.update(out=str(settings.data_path), teacher=teacher.name, queries=len(specs))
    if score:
        scorer = make_scorer(settings, grounder=grounder)
        report["relabel"] = relabel_file(settings.data_path, scorer, progress)
        report["returns"] = compare_returns(settings, scorer)
    return report


def compare_returns(settings: Settings, scorer: Scorer, sample: int = 2000) -> dict[str, Any]:
    """Both returns side by side on (a seeded sample of) the relabelled examples: the one used
    for the buckets and the similarity of prompt and query (MiniLM)."""
    import random

    from rewriters.retrieval_return import describe_returns

    examples = read_examples(settings.data_path).examples
    if scorer.name == "minilm" or not examples:
        return {"used": scorer.name}
    pick = random.Random(0).sample(examples, min(sample, len(examples)))
    sim = load_scorer("minilm", settings.scorer_model).score([e.query for e in pick],
                                                              [e.prompt for e in pick])
    return {"used": scorer.name, "sample": len(pick),
            **describe_returns(sim, [e.relevance for e in pick])}


def _train_config(settings: Settings):
    from rewriters.model import MODEL_PRESETS
    from rewriters.train import TrainConfig

    t = settings.train
    return TrainConfig(
        base_model=t.base_model, model=MODEL_PRESETS[t.preset], steps=t.steps,
        batch_size=t.batch_size, lr=t.lr, warmup_steps=min(t.warmup_steps, t.steps),
        held_out=t.held_out, rounds=t.rounds, round_steps=t.round_steps,
        explore_per_round=t.explore_per_round, eval_commands=t.eval_commands, seed=t.seed,
        marker_every=t.marker_every, marker_tail=t.marker_tail, context_items=t.context_items,
    )


def train_job(settings: Settings, progress: bool = True):
    """Train the UDRL rewriter on the workspace data; returns rewriters.train.TrainResult."""
    from rewriters.train import train_rewriter

    loaded = read_examples(settings.data_path)
    cfg = _train_config(settings)
    context, vocab = _catalogue_inputs(settings, loaded.examples, cfg)
    if context is None and cfg.context_items:
        from dataclasses import replace

        cfg = replace(cfg, context_items=0)
    result = train_rewriter(loaded.examples, make_scorer(settings), settings.model_dir, cfg,
                            progress=progress, context=context, vocab_texts=vocab)
    if settings.train.export_onnx != "none":
        result.metrics["onnx"] = str(export_job(settings, settings.train.export_onnx, "onnx"))
    if settings.train.export != "none":
        result.metrics["ctranslate2"] = str(export_job(settings, settings.train.export))
    from .offline.rewrite_fit import fit_rewrite_fusion

    result.metrics["rewrite_fit"] = fit_rewrite_fusion(settings, progress=progress)
    return result


def _catalogue_inputs(settings: Settings, examples, cfg):
    """(training context function or None, texts the output vocabulary must cover) from the
    workspace's template index: its titles, tags and categories, and the queries."""
    from .hook import open_indexes

    index = open_indexes(settings, clip=False)[0] if settings.template_index_dir.is_dir() or (
        settings.index.template_backend == "elasticsearch" and settings.index.es_url) else None
    queries = sorted({e.query for e in examples})
    vocab = list(queries)
    if index is None:
        if cfg.context_items:
            log.warning("no template index: training without context (context_items = 0)")
        return None, vocab
    vocab += [" ".join([d.title, d.category, *d.tags]) for d in index.documents()]
    if not cfg.context_items:
        return None, vocab
    if not index.has_dense:
        log.warning("the template index has no dense channel: training without context")
        return None, vocab
    from .grounding import ServingContext, training_contexts
    from .index_settings import make_text_encoder

    log.info("grounding contexts for %d training queries (leave-fold-out)", len(queries))
    known = training_contexts(index, query_log_of(settings), make_text_encoder(settings),
                              queries, cfg.context_items, seed=cfg.seed)
    serve = ServingContext(index, cfg.context_items)
    return (lambda q: known[q] if q in known else serve(q)), vocab


def export_job(settings: Settings, quantization: str = "int8", engine: str = "ctranslate2",
               force: bool = True) -> Path:
    """Export the workspace rewriter for a serving engine (`pipeline.engine = auto` picks it up).

    ``engine``: a name in ``rewriters.engines.exporting_engines()`` ("onnx", "ctranslate2");
    ``quantization`` one of that engine's (``ENGINES[engine].quantizations``).
    """
    from rewriters.engines import export_engine, exporting_engines

    if engine not in exporting_engines():
        raise ConfigError(f"unknown export engine {engine!r}; allowed: "
                          f"{', '.join(exporting_engines())}")
    if not settings.model_dir.is_dir():
        raise ModelError(f"no rewriter at {settings.model_dir}; train one with `udrl train`")
    return export_engine(engine, settings.model_dir, quantization=quantization, force=force)


def train_intent_job(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train the intent detector on the workspace data, holding queries out for its report."""
    from rewriters.intent import IntentConfig
    from rewriters.intent_train import evaluate_intent, train_intent

    s = settings.intent
    examples = read_examples(settings.data_path).examples
    train, test = split_by_query(examples, s.held_out, s.seed)
    if not test:
        raise DataError("too few distinct queries to hold some out for the intent report")
    detector, fit = train_intent(train, IntentConfig(threshold=s.threshold, epochs=s.epochs,
                                                     seed=s.seed), progress=progress)
    metrics = {"fit": fit, "heldout": evaluate_intent(detector, test)}
    detector.save(settings.intent_dir, metrics=metrics)
    write_examples(settings.intent_dir / "heldout.jsonl", test)
    return metrics


EVAL_MODES = (  # (name, strict_length, decoding)
    ("free-greedy", False, "greedy"),
    ("free-sample", False, "sample"),
    ("strict-greedy", True, "greedy"),
)


def eval_rewriter_job(settings: Settings, n_commands: int = 300, progress: bool = True,
                      out: Path | None = None) -> dict[str, Any]:
    """Measure command obedience on held-out commands (and intent accuracy) and write a report.

    Generates on the engine the service would use (``pipeline.engine``; strict length runs on
    its PyTorch fallback), so the numbers are those of what is served. Writes
    ``<reports>/eval_rewriter.json``, a per-item JSONL and a length-error histogram.
    """
    from rewriters.evaluate import evaluate_rewriter, held_out_commands, plot_length_errors

    from .hook import load_engine

    rewriter = load_engine(settings)
    heldout = settings.model_dir / "heldout.jsonl"
    if not heldout.is_file():
        raise ModelError(f"{heldout} is missing; it is written by `udrl train`")
    scorer = make_scorer(settings)
    commands = held_out_commands(read_examples(heldout).examples, n_commands, settings.train.seed)
    report: dict[str, Any] = {"model": str(settings.model_dir), "version": rewriter.version,
                              "engine": type(rewriter).__name__, "commands": len(commands),
                              "modes": {}}
    rows_by_mode = {}
    for name, strict, decoding in EVAL_MODES:
        metrics, rows = evaluate_rewriter(rewriter, scorer, commands, strict_length=strict,
                                          decoding=decoding, seed=settings.train.seed,
                                          progress=progress)
        report["modes"][name] = metrics
        rows_by_mode[name] = rows
    report["intent"] = _intent_report(settings)
    out_dir = out or settings.reports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot_length_errors(rows_by_mode, out_dir / "length_errors.png"))
    with (out_dir / "eval_rewriter_items.jsonl").open("w") as fh:
        for name, rows in rows_by_mode.items():
            for r in rows:
                fh.write(json.dumps({"mode": name, **r}) + "\n")
    (out_dir / "eval_rewriter.json").write_text(json.dumps(report, indent=2) + "\n")
    report["report"] = str(out_dir / "eval_rewriter.json")
    return report


def _intent_report(settings: Settings) -> dict[str, Any] | None:
    from rewriters.intent import load_intent_detector
    from rewriters.intent_train import evaluate_intent

    held = settings.intent_dir / "heldout.jsonl"
    if not settings.intent_dir.is_dir() or not held.is_file():
        log.warning("no intent model at %s; the report has no intent accuracy", settings.intent_dir)
        return None
    return evaluate_intent(load_intent_detector(settings.intent_dir), read_examples(held).examples)
