"""The HTML report of ``udrl eval``: one self-contained file beside ``report.md``.

It holds the metric table with significance against the baseline, the paired tests, both
plots (PNG, base64-embedded) and a per-query table: the query, its score in the baseline, the
change of the primary metric in every other mode, the prompt(s) each mode searched with, and
each mode's top hits with their relevance grades. The table sorts by any change column, and one
button per mode lists the 10 queries that mode hurt most. Style and script are inlined
(``plugin/static/report.css``, ``report.js``); the file loads nothing else.

:func:`query_rows` and :func:`html_report` are pure; :func:`write_html_report` reads the plots
and writes the file.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["HURT_TOP", "PromptFn", "TitleFn", "html_report", "query_rows", "write_html_report"]

HURT_TOP = 10  # queries listed by a "most hurt" button
STATIC = Path(__file__).parents[1] / "static"  # plugin/static, beside the web page

PromptFn = Callable[[str, str], "tuple[str, str] | None"]  # (mode, qid) -> (prompt, path)
TitleFn = Callable[[str], "str | None"]  # doc id -> title


def query_rows(queries: Sequence[Any], qrels: Mapping[str, Mapping[str, int]],
               runs: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]],
               per_query: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str,
               prompt_of: PromptFn | None = None, title_of: TitleFn | None = None,
               top: int = 5) -> list[dict[str, Any]]:
    """One row per evaluated query (those in ``qrels``), in query order.

    Args:
        queries: objects with ``qid`` and ``query``.
        qrels: qid -> {doc id: grade} of the evaluated queries.
        runs: mode -> qid -> hits best first; the first mode is the baseline.
        per_query: mode -> metric -> qid -> score.
        metric: the primary metric; ``delta`` is its change against the baseline.
        prompt_of: (mode, qid) -> (prompt, path) for modes that searched with a prompt.
        title_of: doc id -> title, shown beside the id.
        top: hits shown per mode.

    Returns:
        ``[{"qid", "query", "scores": {mode: float}, "delta": {mode: float},
        "prompts": {mode: (prompt, path)}, "hits": {mode: [(doc, grade or None, title)]}}]``;
        ``delta`` leaves out the baseline, a grade is None for an unjudged hit.
    """
    modes = list(runs)
    base = modes[0]
    rows = []
    for q in queries:
        if q.qid not in qrels:
            continue
        grades = qrels[q.qid]
        scores = {m: float(per_query[m][metric][q.qid]) for m in modes}
        prompts = {}
        for m in modes:
            got = prompt_of(m, q.qid) if prompt_of is not None else None
            if got is not None:
                prompts[m] = got
        rows.append({
            "qid": q.qid, "query": q.query, "scores": scores,
            "delta": {m: scores[m] - scores[base] for m in modes[1:]},
            "prompts": prompts,
            "hits": {m: [(doc, grades.get(doc), title_of(doc) if title_of else None)
                         for doc, _ in list(runs[m].get(q.qid, []))[:top]] for m in modes},
        })
    return rows


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return f"{x:+.4f}" if x else "0"


def _metrics_table(report: Mapping[str, Any]) -> str:
    base, metrics = report["baseline"], report["config"]["metrics"]
    better = {(s["b"], s["metric"]): s for s in report["significance"]
              if s["a"] == base and s["significant"]}
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    body = []
    for mode, r in report["results"].items():
        cells = []
        for k in metrics:
            s = better.get((mode, k))
            mark = (f' <span class="sig" title="paired test p={_num(s["p_value"], 4)}">†</span>'
                    if s else "")
            cells.append(f"<td>{_num(r['metrics'][k])}{mark}</td>")
        body.append(f"<tr><th>{escape(mode)}</th>{''.join(cells)}<td>{r['no_hits']}</td>"
                    f"<td>{r['errors']}</td></tr>")
    return (f'<table class="metrics"><thead><tr><th>mode</th>{head}<th>no hits</th>'
            f"<th>errors</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


def _tests_table(report: Mapping[str, Any]) -> str:
    if not report["significance"]:
        return ""
    rows = "".join(
        f"<tr><td>{escape(s['a'])}</td><td>{escape(s['b'])}</td><td>{escape(s['metric'])}</td>"
        f"<td>{_num(s['p_value'], 4)}</td><td>{'yes' if s['significant'] else 'no'}</td>"
        f"<td>{s['wins']} / {s['ties']} / {s['losses']}</td></tr>"
        for s in report["significance"])
    return ("<h2>Paired tests</h2><table class=\"tests\"><thead><tr><th>a</th><th>b</th>"
            "<th>metric</th><th>p-value</th><th>significant</th><th>a wins / ties / b wins</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _deltas_table(report: Mapping[str, Any]) -> str:
    if not report["deltas"]:
        return ""
    rows = "".join(
        f"<tr><th>{escape(m)}</th><td>{_signed(d['mean'])}</td><td>{d['improved']}</td>"
        f"<td>{d['unchanged']}</td><td>{d['worsened']}</td></tr>"
        for m, d in report["deltas"].items())
    metric = next(iter(report["deltas"].values()))["metric"]
    return (f"<h2>Change of {escape(metric)} against {escape(report['baseline'])}</h2>"
            '<table class="deltas"><thead><tr><th>mode</th><th>mean change</th>'
            "<th>improved</th><th>unchanged</th><th>worsened</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _grade(g: int | None) -> str:
    return "–" if g is None else str(g)


def _hits_cell(row: Mapping[str, Any], modes: Sequence[str]) -> str:
    lines = []
    for m in modes:
        chips = "".join(
            f'<span class="hit g{min(g, 3) if g is not None else "u"}" data-doc="{escape(doc)}"'
            f' title="{escape(title or doc)} · grade {_grade(g)}">{escape(doc)}'
            f"<b>{_grade(g)}</b></span>"
            for doc, g, title in row["hits"][m])
        lines.append(f'<div class="mode-hits" data-mode="{escape(m)}"><span class="mode">'
                     f"{escape(m)}</span> {chips or '<i>no hits</i>'}</div>")
    return "".join(lines)


def _prompts_cell(row: Mapping[str, Any]) -> str:
    grouped: dict[tuple[str, str], list[str]] = {}
    for m, (prompt, path) in row["prompts"].items():
        grouped.setdefault((prompt, path), []).append(m)
    return "".join(
        f'<div class="prompt"><span class="mode">{escape(", ".join(ms))}</span> '
        f"<q>{escape(prompt)}</q>"
        + (f' <span class="path path-{escape(path)}">{escape(path)}</span>'
           if path != "rewrite" else "") + "</div>"
        for (prompt, path), ms in grouped.items())


def _query_table(rows: Sequence[Mapping[str, Any]], modes: Sequence[str], metric: str) -> str:
    # columns are numbered: mode names may hold "=" and "@", which attribute names cannot
    base, others = modes[0], modes[1:]
    head = "".join(f'<th><button class="sort" data-key="d{j}" title="sort by the change of '
                   f'{escape(metric)} in {escape(m)}">Δ {escape(m)}</button></th>'
                   for j, m in enumerate(others))
    body = []
    for i, r in enumerate(rows):
        attrs = "".join(f' data-d{j}="{r["delta"][m]!r}"' for j, m in enumerate(others))
        deltas = "".join(
            f'<td class="num {"up" if r["delta"][m] > 0 else "down" if r["delta"][m] < 0 else ""}"'
            f">{_signed(r['delta'][m])}</td>" for m in others)
        body.append(
            f'<tr data-qid="{escape(r["qid"])}" data-order="{i}"{attrs}>'
            f'<td class="query"><span class="qid">{escape(r["qid"])}</span> '
            f"{escape(r['query'])}</td><td class=\"num\">{r['scores'][base]:.4f}</td>{deltas}"
            f"<td>{_prompts_cell(r)}</td><td>{_hits_cell(r, modes)}</td></tr>")
    return (f"<table id=\"queries\"><thead><tr><th><button class=\"sort\" "
            f"data-key=\"order\">query</button></th><th>{escape(metric)} {escape(base)}</th>"
            f"{head}<th>prompt(s)</th><th>top hits · grade</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _controls(modes: Sequence[str]) -> str:
    """The bar at the top: one click lists the queries a mode hurt most (and shows them)."""
    if len(modes) < 2:
        return ""
    buttons = "".join(f'<button class="hurt" data-key="d{j}" data-mode="{escape(m)}">'
                      f"{HURT_TOP} most hurt by {escape(m)}</button>"
                      for j, m in enumerate(modes[1:]))
    return (f'<nav class="controls" data-top="{HURT_TOP}">{buttons}<button class="all">'
            'all queries</button> <span id="shown"></span></nav>')


def html_report(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                plots: Mapping[str, bytes]) -> str:
    """The whole report as one HTML document.

    Args:
        report: the ``report.json`` contents of :func:`plugin.retrieval_eval.evaluate_modes`.
        rows: from :func:`query_rows`.
        plots: caption -> PNG bytes, embedded in this order.
    """
    c, cfg, base = report["counts"], report["config"], report["baseline"]
    metric = cfg["metrics"][0]
    figures = "".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{escape(name)}</figcaption></figure>'
        for name, data in plots.items())
    css = (STATIC / "report.css").read_text(encoding="utf-8")
    js = (STATIC / "report.js").read_text(encoding="utf-8")
    summary = (f"{c['queries']} queries: {c['evaluated']} evaluated, {c['no_qrels']} without "
               f"qrels and {c['no_relevant']} with nothing relevant (excluded). Depth "
               f"k={cfg['k']}; paired {escape(cfg['stat_test'])} test, α={cfg['alpha']}; † = "
               f"significantly different from <code>{escape(base)}</code>.")
    how_to_sort = (f"Δ = per-query {escape(metric)} minus <code>{escape(base)}</code>; click "
                   "a Δ heading to sort by it (again to reverse). "
                   if len(report["modes"]) > 1 else "")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Retrieval evaluation</title>"
        f"<style>{css}</style></head><body>{_controls(list(report['modes']))}"
        f"<h1>Retrieval evaluation</h1><p>{summary}</p>"
        f"{_metrics_table(report)}{_deltas_table(report)}{_tests_table(report)}"
        f"<div class=\"plots\">{figures}</div>"
        f"<h2>Per query</h2><p class=\"note\">{len(rows)} evaluated queries. {how_to_sort}"
        "Grades: – unjudged, 0 not relevant, higher is better.</p>"
        f"{_query_table(rows, list(report['modes']), metric)}"
        f"<script>{js}</script></body></html>\n")


def write_html_report(path: str | Path, report: Mapping[str, Any], queries: Sequence[Any],
                      qrels: Mapping[str, Mapping[str, int]],
                      runs: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]],
                      per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
                      prompt_of: PromptFn | None = None, title_of: TitleFn | None = None,
                      top: int = 5) -> Path:
    """Write :func:`html_report` to ``path`` with the plots named in ``report["files"]``."""
    files = report.get("files", {})
    plots = {name: Path(files[key]).read_bytes()
             for key, name in (("metrics_plot", "metrics per mode"),
                               ("deltas_plot", "per-query change"))
             if files.get(key) and Path(files[key]).is_file()}
    rows = query_rows(queries, qrels, runs, per_query, report["config"]["metrics"][0],
                      prompt_of, title_of, top)
    path = Path(path)
    path.write_text(html_report(report, rows, plots), encoding="utf-8")
    return path
