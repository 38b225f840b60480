"""Distillation: ask a teacher for prompts of many lengths per query and store them as Examples.

Work is appended to the output JSONL as each query completes, so a stopped run keeps what it
did; a re-run skips queries this teacher already answered, so it never duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from tqdm import tqdm

from .commands import LENGTH_MAX, LENGTH_MIN, TASKS
from .data import Example, append_examples, read_examples, validation_reason
from .errors import ConfigError, TeacherError
from .queries import QuerySpec
from .teachers import Teacher, TeacherReply

__all__ = ["DistillConfig", "DistillReport", "plan_lengths", "distill", "run_distill"]

log = logging.getLogger(__name__)

_MAX_FAILURES_KEPT = 20  # failures listed in the report; the rest are only counted


@dataclass(frozen=True)
class DistillConfig:
    """What to ask the teacher for."""

    prompts_per_task: int = 4  # prompts per query and task, 1..64
    tasks: tuple[str, ...] = TASKS  # which prompt kinds, a subset of TASKS
    length_min: int = LENGTH_MIN  # shortest target length in words, >= LENGTH_MIN
    length_max: int = LENGTH_MAX  # longest target length in words, <= LENGTH_MAX
    concurrency: int = 8  # teacher calls in flight at once, 1..256
    seed: int = 0  # seeds the target-length plan
    # Stop after this many queries fail in a row with no success in between (a dead endpoint
    # would otherwise be retried for every query); 0 never stops early.
    abort_after_failures: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.prompts_per_task <= 64:
            raise ConfigError(f"prompts_per_task {self.prompts_per_task} is out of range 1-64")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks {self.tasks!r} must be distinct and non-empty")
        for t in self.tasks:
            if t not in TASKS:
                raise ConfigError(f"unknown task {t!r}; allowed: {', '.join(TASKS)}")
        if not LENGTH_MIN <= self.length_min <= self.length_max <= LENGTH_MAX:
            raise ConfigError(
                f"length range {self.length_min}-{self.length_max} must lie within "
                f"{LENGTH_MIN}-{LENGTH_MAX} with min <= max")
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"concurrency {self.concurrency} is out of range 1-256")
        if self.abort_after_failures < 0:
            raise ConfigError(f"abort_after_failures {self.abort_after_failures} must be >= 0")


@dataclass
class DistillReport:
    """What a distillation run did."""

    queries_total: int = 0  # distinct queries given
    queries_skipped_existing: int = 0  # already in the output file for this teacher
    # the teacher answered and its valid prompts were written (a query whose prompts were all
    # rejected counts here too, and is asked again on the next run since nothing was written)
    queries_done: int = 0
    queries_failed: int = 0  # the teacher call raised TeacherError; nothing written
    examples_written: int = 0  # lines appended to the output file
    examples_rejected: int = 0  # prompts that were empty or failed Example validation
    existing_rejects: int = 0  # invalid lines found in the pre-existing output file
    failures: list[tuple[str, str]] = field(default_factory=list)  # (query, reason), first 20
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (query, reason), first 20


def plan_lengths(n_queries: int, cfg: DistillConfig) -> dict[str, list[list[int]]]:
    """Target lengths per task and query, stratified so every length is used equally often.

    Each task walks through shuffled permutations of length_min..length_max, so over a run
    the lengths are uniform; query i takes the next prompts_per_task of them.

    Returns:
        ``{task: [lengths of query 0, lengths of query 1, ...]}``.
    """
    span = list(range(cfg.length_min, cfg.length_max + 1))
    k = cfg.prompts_per_task
    out: dict[str, list[list[int]]] = {}
    for task in cfg.tasks:
        rng = random.Random(cfg.seed * 2**32 + zlib.crc32(task.encode()))
        stream: list[int] = []
        while len(stream) < n_queries * k:
            stream += rng.sample(span, len(span))
        out[task] = [stream[i * k : (i + 1) * k] for i in range(n_queries)]
    return out


def _ensure_newline(path: Path) -> None:
    """A run killed mid-write can leave a partial last line; keep appends on a fresh line."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def _examples(spec: QuerySpec, reply: TeacherReply, teacher: str,
              report: DistillReport) -> list[Example]:
    out = []
    for task, prompt in reply.prompts:
        reason = None
        if not prompt or not prompt.strip():
            reason = f"empty {task} prompt"
        else:
            try:
                out.append(Example.make(spec.query, task, prompt, teacher, reply.intent))
            except ValidationError as e:
                reason = f"{task} prompt invalid: {validation_reason(e)}"
        if reason:
            report.examples_rejected += 1
            if len(report.rejections) < _MAX_FAILURES_KEPT:
                report.rejections.append((spec.query, reason))
            log.warning("rejected a prompt for %r: %s", spec.query, reason)
    return out


async def distill(queries: list[QuerySpec], teacher: Teacher, out_path: str | os.PathLike[str],
                  cfg: DistillConfig | None = None, progress: bool = True) -> DistillReport:
    """Distil prompts for ``queries`` from ``teacher`` into the JSONL file ``out_path``.

    Args:
        queries: the queries; repeats (case-insensitive) are asked once.
        teacher: any :class:`~rewriters.teachers.Teacher`; its ``name`` goes into each example.
        out_path: JSONL file, appended to; queries it already holds for this teacher are skipped.
        cfg: what to ask for; defaults to ``DistillConfig()``.
        progress: show a tqdm bar.

    Returns:
        Counts of what was done. Raises TeacherError if every attempted query failed, or
        after ``cfg.abort_after_failures`` consecutive failures (work so far stays written).
    """
    cfg = cfg or DistillConfig()
    out_path = Path(out_path)
    report = DistillReport()

    unique: dict[str, QuerySpec] = {}
    for spec in queries:
        unique.setdefault(" ".join(spec.query.split()).lower(), spec)
    if len(unique) < len(queries):
        log.warning("%d repeated queries will be asked once", len(queries) - len(unique))
    specs = list(unique.values())
    report.queries_total = len(specs)
    lengths = plan_lengths(len(specs), cfg)  # planned over all queries: resuming keeps the plan

    done_before: set[str] = set()
    if out_path.exists():
        existing = read_examples(out_path)  # logs each invalid line with its number
        report.existing_rejects = len(existing.rejects)
        done_before = {e.query.lower() for e in existing.examples if e.teacher == teacher.name}
        _ensure_newline(out_path)
    todo = [(i, s) for i, s in enumerate(specs)
            if " ".join(s.query.split()).lower() not in done_before]
    report.queries_skipped_existing = len(specs) - len(todo)
    if report.queries_skipped_existing:
        log.info("skipping %d queries already in %s for %s",
                 report.queries_skipped_existing, out_path, teacher.name)

    sem = asyncio.Semaphore(cfg.concurrency)

    async def ask(i: int, spec: QuerySpec) -> tuple[QuerySpec, TeacherReply | TeacherError]:
        requests = [(t, n) for t in cfg.tasks for n in lengths[t][i]]
        async with sem:
            try:
                return spec, await teacher.generate(spec.query, spec.intent, requests)
            except TeacherError as e:
                return spec, e

    tasks = [asyncio.create_task(ask(i, s)) for i, s in todo]
    streak = 0
    bar = tqdm(total=len(tasks), disable=not progress, unit="query", desc="distill")
    try:
        for fut in asyncio.as_completed(tasks):
            spec, result = await fut
            bar.update(1)
            if isinstance(result, TeacherError):
                report.queries_failed += 1
                streak += 1
                if len(report.failures) < _MAX_FAILURES_KEPT:
                    report.failures.append((spec.query, str(result)))
                log.warning("teacher failed for %r: %s", spec.query, result)
                if cfg.abort_after_failures and streak >= cfg.abort_after_failures:
                    raise TeacherError(
                        f"stopped after {streak} consecutive teacher failures; last: {result}. "
                        f"{report.examples_written} examples were written to {out_path}; "
                        "fix the teacher and re-run to resume") from result
                continue
            streak = 0
            report.queries_done += 1
            # One writer: appends happen here, in the event loop, one query at a time.
            report.examples_written += append_examples(
                out_path, _examples(spec, result, teacher.name, report))
            bar.set_postfix(written=report.examples_written, failed=report.queries_failed,
                            refresh=False)
    finally:
        bar.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if report.queries_failed and not report.queries_done:
        first_q, first_reason = report.failures[0]
        raise TeacherError(
            f"all {report.queries_failed} queries failed; first {first_q!r}: {first_reason}")
    return report


def run_distill(queries: list[QuerySpec], teacher: Teacher, out_path: str | os.PathLike[str],
                cfg: DistillConfig | None = None, progress: bool = True) -> DistillReport:
    """Synchronous :func:`distill`; closes the teacher (``aclose``) when it has one.

    Args:
        queries, teacher, out_path, cfg, progress: as for :func:`distill`.

    Returns:
        The run's DistillReport.
    """
    async def main() -> DistillReport:
        try:
            return await distill(queries, teacher, out_path, cfg, progress)
        finally:
            if (close := getattr(teacher, "aclose", None)) is not None:
                await close()

    return asyncio.run(main())
