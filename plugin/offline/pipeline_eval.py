"""Retrieval evaluation over a loaded Pipeline (``udrl eval`` → :func:`eval_retrieval`).

It scores raw / rewrite / fused searches (and any extra commands) with ranx
(``plugin.offline.retrieval_eval``) and adds a rewrite-quality report over the same queries,
computed by the same function as ``udrl eval-rewriter`` (``rewriters.evaluate.rewrite_quality``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewriters.commands import Command, count_words
from rewriters.errors import ConfigError

from ..channels import MODES
from ..pipeline import RETRIEVAL_MODES, Pipeline

__all__ = ["eval_retrieval", "default_modes", "leaked_queries", "parse_command_spec",
           "rewrite_quality_report"]

log = logging.getLogger(__name__)


_SPEC = re.compile(r"^(\d+)(?::(\d))?$")


def parse_command_spec(spec: str) -> tuple[int, int | None]:
    """``"12"`` or ``"12:3"`` → (length, relevance or None); ConfigError names the bad spec."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ConfigError(f"command {spec!r} is not LENGTH or LENGTH:RELEVANCE (e.g. 12 or 12:4)")
    length, rel = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
    Command("image", length, 4 if rel is None else rel)  # validates the ranges
    return length, rel


def default_modes(pipeline: Pipeline, task: str) -> list[str]:
    """raw, dense and hybrid (when the index has a dense channel), rewrite, fused."""
    index = pipeline.template_index if task == "template" else pipeline.image_index
    dense = getattr(index, "has_dense", False)
    return [m for m in RETRIEVAL_MODES if dense or m not in ("dense", "hybrid")]


def leaked_queries(pipeline: Pipeline, task: str, queries) -> list[str]:
    """Evaluation queries that the index's query log holds (their clicks are in the index)."""
    index = pipeline.template_index if task == "template" else pipeline.image_index
    logged = index.logged_queries() if hasattr(index, "logged_queries") else set()
    return [q.qid for q in queries if " ".join(q.query.split()).casefold() in logged]


def eval_retrieval(pipeline: Pipeline, queries, qrels, task: str, out_dir: Path,
                   modes: Sequence[str] | None = None, commands: Sequence[str] = (),
                   cfg=None, scorer=None, progress: bool = True) -> dict[str, Any]:
    """Search every query in every mode, score with ranx, and report rewrite quality.

    Args:
        queries, qrels: from ``plugin.offline.trec.read_eval_queries`` / ``read_qrels``.
        task: which index to evaluate ("image" or "template"); doc ids are its ids.
        modes: any of raw, dense, rewrite, hybrid, fused (None: :func:`default_modes`); the
            first is the baseline of the tests.
        commands: extra rewrite commands, each ``LENGTH[:RELEVANCE]``; each adds the modes
            ``rewrite@len=L.rel=R`` and ``fused@len=L.rel=R``.
        cfg: ``retrieval_eval.EvalConfig`` (depth, metrics, test).
        scorer: relevance scorer for the rewrite-quality report (None: no relevance numbers).
    """
    from .retrieval_eval import EvalConfig, evaluate_modes
    from .trec import run_tag

    if task not in ("image", "template"):
        raise ConfigError(f"unknown task {task!r}; allowed: image, template")
    modes = default_modes(pipeline, task) if modes is None else list(modes)
    bad = [m for m in modes if m not in RETRIEVAL_MODES]
    if bad or not modes:
        raise ConfigError(f"unknown mode(s) {bad}; allowed: {', '.join(RETRIEVAL_MODES)}")
    cfg = cfg or EvalConfig()
    leaked = leaked_queries(pipeline, task, queries)
    if leaked:
        log.warning("%d of %d evaluation queries are in the index's query log (e.g. %s): their "
                    "clicks are indexed, so the scores overstate unseen queries; rebuild the "
                    "index with a log that leaves the test queries out", len(leaked),
                    len(queries), ", ".join(leaked[:5]))
    plan: dict[str, tuple[str, int | None, int | None]] = {m: (m, None, None) for m in modes}
    for spec in commands:
        length, rel = parse_command_spec(spec)
        cmd = pipeline.command(task, length, rel)
        for base in ("rewrite", "fused"):
            plan[f"{base}@len={cmd.length}.rel={cmd.relevance}"] = (base, length, rel)
    seen: dict[tuple[str, str], tuple[Command, str, str]] = {}
    titles: dict[str, str] = {}  # doc id -> title, for the HTML report

    def search(q, mode: str):
        base, length, rel = plan[mode]
        res = pipeline.retrieve(q.query, task, base, cfg.k, length, rel)  # no deadline cut
        if "rewrite" in MODES[base]:
            seen[(mode, q.qid)] = (pipeline.command(task, length, rel), res.prompt, res.path)
        for r in res.results[:10]:
            if r.fields.get("title"):
                titles.setdefault(r.id, str(r.fields["title"]))
        return [(r.id, r.score) for r in res.results]

    def tag(mode: str) -> str:
        base, length, rel = plan[mode]
        cmd = pipeline.command(task, length, rel) if "rewrite" in MODES[base] else None
        spec = None if cmd is None else f"{cmd.task},{cmd.length},{cmd.relevance}"
        return run_tag(mode, spec, pipeline.model_version)

    out_dir = Path(out_dir)
    report = evaluate_modes(queries, qrels, search, list(plan), out_dir, cfg, tag, progress,
                            prompt_of=lambda m, qid: seen[(m, qid)][1:] if (m, qid) in seen
                            else None, title_of=titles.get)
    text = {q.qid: q.query for q in queries}
    quality = {}
    for mode in plan:
        rows = [(text[qid], *v) for (m, qid), v in seen.items() if m == mode]
        if rows:
            quality[mode] = rewrite_quality_report(rows, scorer)
    report["rewrite_quality"] = quality
    report["leaked_queries"] = leaked
    (out_dir / "rewrite_quality.json").write_text(json.dumps(quality, indent=2) + "\n")
    report["files"]["rewrite_quality"] = str(out_dir / "rewrite_quality.json")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def rewrite_quality_report(rows: Sequence[tuple[str, Command, str, str]], scorer=None
                           ) -> dict[str, Any]:
    """Rewrite quality of (query, command, prompt, path) rows: the eval-rewriter numbers over
    the prompts the model produced, plus the share that fell back to the raw query."""
    from rewriters.evaluate import rewrite_quality

    made = [r for r in rows if r[3] != "raw"]
    fallback = 1 - len(made) / len(rows) if rows else float("nan")
    if not made:
        return {"count": 0, "queries": len(rows), "fallback_rate": fallback}
    queries, commands, prompts = [r[0] for r in made], [r[1] for r in made], [r[2] for r in made]
    relevance = (scorer.score(queries, prompts).tolist() if scorer is not None
                 else [float("nan")] * len(made))
    out = rewrite_quality(commands, prompts, [count_words(p) for p in prompts],
                          [True] * len(made), relevance)
    return {**out, "queries": len(rows), "fallback_rate": fallback}
