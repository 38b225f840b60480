"""The Markdown report and the plots of ``udrl eval`` (``report.md``, ``metrics.png``,
``deltas.png``), drawn from the report that :func:`plugin.offline.retrieval_eval.evaluate_modes`
builds. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["markdown_report", "plot_deltas", "plot_metrics"]


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a metric table per mode and the pairwise tests."""
    c, cfg, base = report["counts"], report["config"], report["baseline"]
    metrics, alpha = cfg["metrics"], cfg["alpha"]
    vs_base = {(s["b"], s["metric"]) for s in report["significance"]
               if s["a"] == base and s["significant"]}
    lines = [
        "# Retrieval evaluation", "",
        (f"{c['queries']} queries: {c['evaluated']} evaluated, {c['no_qrels']} without qrels "
         f"and {c['no_relevant']} with nothing relevant (excluded). Depth k={cfg['k']}; paired "
         f"{cfg['stat_test']} test, α={alpha}; † = significantly different from `{base}`."), "",
        "| mode | " + " | ".join(metrics) + " | no hits | errors |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for m, r in report["results"].items():
        cells = [f"{r['metrics'][k]:.4f}{'†' if (m, k) in vs_base else ''}" for k in metrics]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['no_hits']} | {r['errors']} |")
    if report["significance"]:
        lines += ["", "## Paired tests", "",
                  "| a | b | metric | p-value | significant | a wins / ties / b wins |",
                  "|---|---|---|---|---|---|"]
        for s in report["significance"]:
            p = "n/a" if s["p_value"] is None else f"{s['p_value']:.4g}"
            lines.append(f"| {s['a']} | {s['b']} | {s['metric']} | {p} | "
                         f"{'yes' if s['significant'] else 'no'} | "
                         f"{s['wins']} / {s['ties']} / {s['losses']} |")
    return "\n".join(lines) + "\n"


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig, ax, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_metrics(means: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars: one group per metric, one bar per mode; saved as a PNG."""
    modes = list(means)
    metrics = list(next(iter(means.values())))
    x = np.arange(len(metrics))
    width = 0.8 / len(modes)
    fig, ax = _figure((max(6.0, len(metrics) * (0.6 + 0.35 * len(modes))), 4))
    for i, m in enumerate(modes):
        ax.bar(x + (i - (len(modes) - 1) / 2) * width, [means[m][k] for k in metrics], width,
               label=m)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("mean over evaluated queries")
    ax.set_title("Retrieval quality per mode")
    return _save(fig, ax, path)


def plot_deltas(deltas: Mapping[str, Mapping[str, float]], metric: str, baseline: str,
                path: str | Path) -> Path:
    """Histogram of per-query ``metric`` − baseline per mode; saved as a PNG."""
    values = [v for d in deltas.values() for v in d.values()]
    lim = max(1.0, max((abs(v) for v in values), default=1.0))
    w = lim / 10
    bins = np.arange(-lim - w / 2, lim + w, w)  # a bin centred on 0: "unchanged" stands alone
    fig, ax = _figure((7, 4))
    for m, d in deltas.items():
        ax.hist(list(d.values()), bins=bins, alpha=0.55, label=m)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"per-query {metric} − {baseline}")
    ax.set_ylabel("queries")
    ax.set_title(f"Per-query change against {baseline}")
    return _save(fig, ax, path)
