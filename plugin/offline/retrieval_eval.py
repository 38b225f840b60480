"""Offline retrieval evaluation (``udrl eval``): every mode over every query, scored with ranx.

A *mode* is one way of searching — ``raw``, ``rewrite``, ``fused``, or one rewrite command each —
and the caller supplies it as ``search(query, mode) -> [(doc_id, score), ...]``. The kernels
(:func:`per_query_scores`, :func:`score_modes`) are thin, pure wrappers over ranx's ``evaluate``
and paired tests; :func:`evaluate_modes` adds the search loop, TREC runs, the report and plots
(``plugin.offline.eval_report``, ``plugin.offline.report_html``).

Query bookkeeping (each case is counted in the report, none stops the run):

* no qrels for the qid, or judgements but none with grade > 0: searched and written to the run
  file, excluded from metrics (nDCG and recall are undefined with nothing relevant);
* no hits, or a search that raised or returned malformed hits: kept in the metrics with score 0
  (the error message is kept in the report).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewriters.errors import ConfigError, DataError

from .eval_report import markdown_report, plot_deltas, plot_metrics
from .report_html import write_html_report
from .trec import EvalQuery, run_tag, write_trec_run

__all__ = [
    "SearchFn", "EvalConfig", "METRIC_NAMES", "STAT_TESTS", "judged_qrels", "per_query_scores",
    "score_modes", "evaluate_modes",
]

log = logging.getLogger(__name__)

SearchFn = Callable[[EvalQuery, str], Sequence[tuple[str, float]]]
Hits = list[tuple[str, float]]

METRIC_NAMES = ("ndcg", "ndcg_burges", "recall", "precision", "f1", "hits", "hit_rate",
                "r-precision", "mrr", "map")  # ranx metrics defined for every judged query
STAT_TESTS = ("student", "fisher")  # ranx's paired tests (Tukey HSD is not paired)
_METRIC = re.compile(rf"^({'|'.join(map(re.escape, METRIC_NAMES))})(@[1-9][0-9]*)?$")
_MODE = re.compile(r"^[A-Za-z0-9._+=@-]+$")  # usable as a file name and a TREC tag


@dataclass(frozen=True)
class EvalConfig:
    """How to score the runs."""

    k: int = 100  # run depth: hits kept per query and written to the TREC run, 1..10000
    metrics: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr", "map")  # ranx names, optional @k;
    # the first is the primary metric (per-query deltas, deltas.png)
    stat_test: str = "student"  # paired test between modes: "student" (t-test) or "fisher"
    alpha: float = 0.05  # p-value at or below which a difference is significant, (0, 1)
    n_permutations: int = 1000  # fisher only: random permutations, 100..100000
    seed: int = 42  # fisher only: permutation seed

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= 10000:
            raise ConfigError(f"k {self.k!r} is out of range 1-10000")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"metrics {list(self.metrics)} must be non-empty and distinct")
        for m in self.metrics:
            if not _METRIC.match(m):
                raise ConfigError(f"unknown metric {m!r}; allowed: {', '.join(METRIC_NAMES)}, "
                                  "each optionally with a cutoff such as @10")
        if self.stat_test not in STAT_TESTS:
            raise ConfigError(f"unknown stat_test {self.stat_test!r}; allowed: "
                              f"{', '.join(STAT_TESTS)}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha {self.alpha} is out of range (0, 1)")
        if not 100 <= self.n_permutations <= 100_000:
            raise ConfigError(f"n_permutations {self.n_permutations} is out of range 100-100000")


def judged_qrels(qrels: Mapping[str, Mapping[str, int]],
                 qids: Sequence[str]) -> tuple[dict[str, dict[str, int]], list[str], list[str]]:
    """Split ``qids`` by what the qrels say about them.

    Returns:
        (qrels of the qids with at least one grade > 0, qids absent from the qrels,
        qids judged but with nothing relevant), each in ``qids`` order.
    """
    judged, no_qrels, no_relevant = {}, [], []
    for q in qids:
        if q not in qrels:
            no_qrels.append(q)
        elif not any(g > 0 for g in qrels[q].values()):
            no_relevant.append(q)
        else:
            judged[q] = dict(qrels[q])
    return judged, no_qrels, no_relevant


def per_query_scores(qrels: Mapping[str, Mapping[str, int]],
                     hits: Mapping[str, Sequence[tuple[str, float]]],
                     metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Score one run on every query of ``qrels`` with ranx (pure).

    Args:
        qrels: qid → {doc_id: grade} of the queries to score.
        hits: qid → hits best first; a qid missing or without hits scores 0 on every metric.
        metrics: ranx metric names.

    Returns:
        metric → qid → score, qids in ``qrels`` order.
    """
    from numba.core.errors import NumbaTypeSafetyWarning
    from ranx import evaluate

    # ranx ranks by score and breaks ties arbitrarily: rank-derived scores (n, n-1, …, 1) make it
    # rank in list order. Plain dicts, not Qrels/Run: ranx cannot build a Run whose result lists
    # are all empty (AmenRa/ranx#67) nor evaluate an empty list, its Run.make_comparable costs
    # seconds of uncached numba compilation per process, and the dict path is cached on disk.
    ranked = {q: {doc: float(len(hits[q]) - i) for i, (doc, _) in enumerate(hits[q])}
              for q in qrels if hits.get(q)}
    out = {k: {q: 0.0 for q in qrels} for k in metrics}  # no hits scores 0 on every metric
    if ranked:
        with warnings.catch_warnings():
            # uint64 doc-id hashes cast to int64 inside ranx: harmless, noisy on every call
            warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
            got = evaluate({q: dict(qrels[q]) for q in ranked}, ranked, list(metrics),
                           return_mean=False)  # keys in the same order: scores align with them
        got = got if len(metrics) > 1 else {metrics[0]: got}
        for k in metrics:
            out[k].update(zip(ranked, map(float, got[k])))
    return out


def score_modes(qrels: Mapping[str, Mapping[str, int]],
                runs: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]],
                cfg: EvalConfig) -> dict[str, Any]:
    """Score every mode's run on the qrels' queries and test every pair of modes (pure).

    Args:
        qrels: qid → {doc_id: grade} of the queries to score (see :func:`judged_qrels`).
        runs: mode → qid → hits in rank order; a qid missing from a run scores 0.

    Returns:
        ``{"means": {mode: {metric: float}}, "per_query": {mode: {metric: {qid: float}}},
        "significance": [{"a", "b", "metric", "p_value", "significant", "wins", "ties",
        "losses"}]}`` — wins/ties/losses count queries where ``a`` scores above/equal/below
        ``b``; ``p_value`` is None where the test is undefined (no paired difference at all, or
        a single query).
    """
    from ranx.statistical_tests import fisher_randomization_test, paired_student_t_test

    if not qrels:
        raise DataError("no query has a relevant judgement; nothing to score")
    per_query = {m: per_query_scores(qrels, hits, cfg.metrics) for m, hits in runs.items()}
    means = {m: {k: float(np.mean(list(v.values()))) for k, v in s.items()}
             for m, s in per_query.items()}
    modes = list(runs)
    significance = []
    for i, a in enumerate(modes):
        for b in modes[i + 1:]:
            for k in cfg.metrics:
                x = np.array(list(per_query[a][k].values()))
                y = np.array(list(per_query[b][k].values()))
                with warnings.catch_warnings():  # scipy: 0/0 when every difference is 0
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p = (paired_student_t_test(x, y, cfg.alpha)[0] if cfg.stat_test == "student"
                         else fisher_randomization_test(x, y, cfg.n_permutations, cfg.alpha,
                                                        cfg.seed)[0])
                p_value = None if math.isnan(p) else float(p)
                significance.append({
                    "a": a, "b": b, "metric": k, "p_value": p_value,
                    "significant": p_value is not None and p_value <= cfg.alpha,
                    "wins": int((x > y).sum()), "ties": int((x == y).sum()),
                    "losses": int((x < y).sum()),
                })
    return {"means": means, "per_query": per_query, "significance": significance}


def _check_hits(hits: Sequence[tuple[str, float]], k: int) -> Hits:
    """The first ``k`` hits as (doc_id, float score); ValueError names what is malformed."""
    out: Hits = []
    seen: set[str] = set()
    for i, hit in enumerate(list(hits)[:k], start=1):
        try:
            doc, score = hit
            score = float(score)
        except (TypeError, ValueError) as e:
            raise ValueError(f"hit {i} {hit!r} is not a (doc_id, score) pair") from e
        if not isinstance(doc, str) or not doc or re.search(r"\s", doc):
            raise ValueError(f"hit {i} doc id {doc!r} must be a non-empty string, no whitespace")
        if not math.isfinite(score):
            raise ValueError(f"hit {i} ({doc}) has score {score}")
        if doc in seen:
            raise ValueError(f"doc {doc!r} is returned twice")
        seen.add(doc)
        out.append((doc, score))
    return out


def _search_all(queries: Sequence[EvalQuery], search: SearchFn, modes: Sequence[str], k: int,
                progress: bool) -> tuple[dict[str, dict[str, Hits]], dict[str, dict[str, Any]]]:
    from tqdm import tqdm

    runs: dict[str, dict[str, Hits]] = {m: {} for m in modes}
    stats: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(modes) * len(queries), unit="query", desc="eval", disable=not progress)
    try:
        for mode in modes:
            bar.set_description(f"eval {mode}")
            errors: dict[str, str] = {}
            no_hits: list[str] = []
            took: list[float] = []
            for q in queries:
                t0 = time.perf_counter()
                try:
                    hits = _check_hits(search(q, mode), k)
                except Exception as e:  # noqa: BLE001 — one failing query must not end the run
                    hits, errors[q.qid] = [], f"{type(e).__name__}: {e}"
                    log.warning("mode %s query %s failed: %s", mode, q.qid, errors[q.qid])
                    bar.set_postfix(errors=len(errors))
                took.append((time.perf_counter() - t0) * 1000)
                if not hits and q.qid not in errors:
                    no_hits.append(q.qid)
                runs[mode][q.qid] = hits
                bar.update()
            if len(errors) == len(queries):
                log.error("mode %s failed on every query; is its back end up?", mode)
            stats[mode] = {"no_hits": len(no_hits), "errors": len(errors),
                           "latency_ms": {"mean": float(np.mean(took)),
                                          "p95": float(np.percentile(took, 95))},
                           "no_hits_qids": no_hits, "error_messages": errors}
    finally:
        bar.close()
    return runs, stats


def evaluate_modes(queries: Sequence[EvalQuery], qrels: Mapping[str, Mapping[str, int]],
                   search: SearchFn, modes: Sequence[str], out_dir: str | Path,
                   cfg: EvalConfig | None = None, tag_for_mode: Callable[[str], str] | None = None,
                   progress: bool = True, prompt_of: Callable[[str, str], Any] | None = None,
                   title_of: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Search every query in every mode, write TREC runs, score with ranx and write the report.

    Args:
        queries: the queries (unique qids), e.g. from :func:`plugin.offline.trec.read_eval_queries`.
        qrels: qid → {doc_id: grade}, e.g. from :func:`plugin.offline.trec.read_qrels`.
        search: ``search(query, mode)`` → hits best first; may raise for a query.
        modes: mode names (letters, digits, ``._+=@-``); the first is the baseline.
        out_dir: folder for ``runs/<mode>.trec``, ``report.json``, ``report.md``,
            ``report.html``, ``per_query.jsonl``, ``metrics.png`` and (two modes or more)
            ``deltas.png``.
        cfg: depth, metrics and test; defaults to :class:`EvalConfig`.
        tag_for_mode: mode → TREC run tag (see :func:`plugin.offline.trec.run_tag`); default
            the mode.
        prompt_of, title_of: for the HTML report, (mode, qid) → (prompt, path) a mode searched
            with, and doc id → title (see :func:`plugin.offline.report_html.query_rows`).

    Returns:
        The report written to ``report.json`` (layout in the project docs and tests).

    Raises:
        ConfigError: bad modes or tags. DataError: repeated qids, or no query with a relevant
            judgement (checked before any search).
    """
    cfg = cfg or EvalConfig()
    modes, tags = _check_modes(modes, tag_for_mode or run_tag)
    qids = [q.qid for q in queries]
    if len(set(qids)) != len(qids):
        raise DataError("query ids repeat; every query needs its own qid")
    judged, no_qrels, no_relevant = judged_qrels(qrels, qids)
    if not judged:
        raise DataError(f"none of the {len(qids)} queries has a judgement with grade > 0 in the "
                        "qrels; check that the query file and qrels use the same qids")
    out = Path(out_dir)
    runs, stats = _search_all(queries, search, modes, cfg.k, progress)
    files: dict[str, Any] = {"runs": {m: str(write_trec_run(out / "runs" / f"{m}.trec", runs[m],
                                                            tags[m])) for m in modes}}
    scores = score_modes(judged, runs, cfg)
    primary, base, pq = cfg.metrics[0], modes[0], scores["per_query"]
    deltas = {m: {q: pq[m][primary][q] - pq[base][primary][q] for q in judged} for m in modes[1:]}
    report: dict[str, Any] = {
        "modes": modes, "baseline": base, "tags": tags,
        "config": {**asdict(cfg), "metrics": list(cfg.metrics)},
        "counts": {"queries": len(qids), "evaluated": len(judged), "no_qrels": len(no_qrels),
                   "no_relevant": len(no_relevant),
                   "qrels_without_query": len(set(qrels) - set(qids))},
        "excluded": {"no_qrels": no_qrels, "no_relevant": no_relevant},
        "results": {m: {"metrics": scores["means"][m], **stats[m]} for m in modes},
        "significance": scores["significance"],
        "deltas": {m: {"metric": primary, "mean": float(np.mean(list(d.values()))),
                       "improved": sum(v > 0 for v in d.values()),
                       "unchanged": sum(v == 0 for v in d.values()),
                       "worsened": sum(v < 0 for v in d.values())} for m, d in deltas.items()},
        "files": files,
    }
    files.update(
        per_query=str(_write_per_query(out / "per_query.jsonl", queries, judged, runs, stats, pq)),
        metrics_plot=str(plot_metrics(scores["means"], out / "metrics.png")),
        deltas_plot=str(plot_deltas(deltas, primary, base, out / "deltas.png")) if deltas else None,
        markdown=str(out / "report.md"), html=str(out / "report.html"),
        report=str(out / "report.json"))
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    write_html_report(out / "report.html", report, queries, judged, runs, pq, prompt_of, title_of)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _check_modes(modes: Sequence[str],
                 tag_for_mode: Callable[[str], str]) -> tuple[list[str], dict[str, str]]:
    modes = list(modes)
    bad = [m for m in modes if not isinstance(m, str) or not _MODE.match(m)]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ConfigError(f"modes {modes} must be distinct, non-empty names made of letters, "
                          f"digits and ._+=@- (bad: {bad})")
    tags = {m: tag_for_mode(m) for m in modes}
    for m, t in tags.items():
        if not isinstance(t, str) or not t or re.search(r"\s", t):
            raise ConfigError(f"run tag {t!r} for mode {m!r} is empty or has whitespace")
    return modes, tags


def _write_per_query(path: Path, queries: Sequence[EvalQuery], judged: Mapping[str, Any],
                     runs: Mapping[str, Mapping[str, Hits]], stats: Mapping[str, Any],
                     per_query: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for q in queries:
            row = {"qid": q.qid, "query": q.query, "evaluated": q.qid in judged, "modes": {
                m: {"hits": len(runs[m][q.qid]), "error": stats[m]["error_messages"].get(q.qid),
                    "scores": ({k: v[q.qid] for k, v in per_query[m].items()}
                               if q.qid in judged else None)} for m in runs}}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
