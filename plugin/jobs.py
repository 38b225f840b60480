"""Batch jobs behind the CLI: wiring settings to the rewriter library. No argument parsing here.

Each job takes :class:`plugin.config.Settings`, calls library functions, writes its outputs under
the workspace and returns a JSON-able report that the CLI prints.
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

__all__ = [
    "make_scorer",
    "make_teacher",
    "load_query_specs",
    "relabel_file",
    "distill_job",
    "train_job",
    "train_intent_job",
    "eval_rewriter_job",
    "index_images_job",
    "merge_images_job",
    "index_templates_job",
]

log = logging.getLogger(__name__)


def make_scorer(settings: Settings) -> Scorer:
    """The relevance scorer the settings name."""
    return load_scorer(settings.scorer, settings.scorer_model)


def make_teacher(settings: Settings):
    """The teacher the settings name (builtin offline composer or an OpenAI-compatible LLM)."""
    from rewriters.builtin_teacher import BuiltinTeacher
    from rewriters.teachers import OpenAITeacher

    t = settings.teacher
    if t.kind == "builtin":
        return BuiltinTeacher(seed=t.seed)
    key = t.api_key.get_secret_value() if t.api_key else None
    return OpenAITeacher(base_url=t.base_url, model=t.model, api_key=key, timeout_s=t.timeout_s,
                         max_retries=t.max_retries)


def load_query_specs(settings: Settings):
    """Seed queries from the settings' file, or the builtin generator."""
    from rewriters.queries import builtin_queries, read_queries

    if settings.queries_file is not None:
        return read_queries(settings.queries_file)
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

    specs = load_query_specs(settings)
    teacher = make_teacher(settings)
    cfg = DistillConfig(prompts_per_task=settings.teacher.prompts_per_task,
                        concurrency=settings.teacher.concurrency, seed=settings.teacher.seed)
    report = asdict(run_distill(specs, teacher, settings.data_path, cfg, progress=progress))
    report["out"] = str(settings.data_path)
    if score:
        report["relabel"] = relabel_file(settings.data_path, make_scorer(settings), progress)
    return report


def _train_config(settings: Settings):
    from rewriters.model import MODEL_PRESETS
    from rewriters.train import TrainConfig

    t = settings.train
    return TrainConfig(
        base_model=t.base_model, model=MODEL_PRESETS[t.preset], steps=t.steps,
        batch_size=t.batch_size, lr=t.lr, warmup_steps=min(t.warmup_steps, t.steps),
        held_out=t.held_out, rounds=t.rounds, round_steps=t.round_steps,
        explore_per_round=t.explore_per_round, eval_commands=t.eval_commands, seed=t.seed,
        marker_every=t.marker_every, marker_tail=t.marker_tail,
    )


def train_job(settings: Settings, progress: bool = True):
    """Train the UDRL rewriter on the workspace data; returns rewriters.train.TrainResult."""
    from rewriters.train import train_rewriter

    loaded = read_examples(settings.data_path)
    result = train_rewriter(loaded.examples, make_scorer(settings), settings.model_dir,
                            _train_config(settings), progress=progress)
    if settings.train.export_onnx != "none":
        result.metrics["onnx"] = str(export_job(settings, settings.train.export_onnx, "onnx"))
    if settings.train.export != "none":
        result.metrics["ctranslate2"] = str(export_job(settings, settings.train.export))
    return result


EXPORT_ENGINES = ("onnx", "ctranslate2")


def export_job(settings: Settings, quantization: str = "int8", engine: str = "ctranslate2",
               force: bool = True) -> Path:
    """Export the workspace rewriter for a serving engine (`pipeline.engine = auto` picks it up).

    ``engine``: "onnx" (ONNX Runtime; quantization int8 or float32) or "ctranslate2" (int8,
    int8_float32, float32, ...).
    """
    if engine not in EXPORT_ENGINES:
        raise ConfigError(f"unknown export engine {engine!r}; allowed: "
                          f"{', '.join(EXPORT_ENGINES)}")
    if not settings.model_dir.is_dir():
        raise ModelError(f"no rewriter at {settings.model_dir}; train one with `udrl train`")
    if engine == "onnx":
        from rewriters.onnx_engine import export_onnx

        return export_onnx(settings.model_dir, quantization=quantization, force=force)
    from rewriters.fast import export_ctranslate2

    return export_ctranslate2(settings.model_dir, quantization=quantization, force=force)


def train_intent_job(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train the intent detector on the workspace data, holding queries out for its report."""
    from rewriters.intent import IntentConfig, evaluate_intent, train_intent

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
    from rewriters.intent import evaluate_intent, load_intent_detector

    held = settings.intent_dir / "heldout.jsonl"
    if not settings.intent_dir.is_dir() or not held.is_file():
        log.warning("no intent model at %s; the report has no intent accuracy", settings.intent_dir)
        return None
    return evaluate_intent(load_intent_detector(settings.intent_dir), read_examples(held).examples)


def index_images_job(settings: Settings, source: Path, shard: str | None = None,
                     rejects: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode a catalogue into a new image-index version and publish it (or one shard)."""
    from indexers.reindex import ImageReindexConfig, reindex_images

    ix = settings.index
    cfg = ImageReindexConfig(source=source, store_root=settings.image_index_dir,
                             model_name=ix.clip_model, pretrained=ix.pretrained,
                             index_type=ix.image_index_type, batch_size=ix.batch_size,
                             shard=shard, rejects_path=rejects, device=settings.device)
    return reindex_images(cfg, progress=progress)


def merge_images_job(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Merge every shard under the image index directory into one published version."""
    from indexers.reindex import merge_images

    return merge_images(None, settings.image_index_dir, progress=progress)


def index_templates_job(settings: Settings, source: Path, rejects: Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Build a new template-index version from a catalogue and switch to it atomically."""
    from indexers.reindex import TemplateReindexConfig, reindex_templates

    ix = settings.index
    key = ix.es_api_key.get_secret_value() if ix.es_api_key else None
    cfg = TemplateReindexConfig(source=source, backend=ix.template_backend,
                                root=settings.template_index_dir, es_url=ix.es_url,
                                alias=ix.es_alias, api_key=key, rejects_path=rejects)
    return reindex_templates(cfg, progress=progress)
