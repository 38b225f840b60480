"""Precomputed rewrites for head queries (``udrl rewrite-batch``).

:func:`read_head_queries` reads the queries file; :func:`precompute_rewrites` rewrites them
through a loaded Pipeline and writes the JSONL file that the service loads into its cache
(``plugin.rewrite.write_precomputed``; ``pipeline.precomputed`` in the settings).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewriters.errors import DataError, QueryTooLongError

from ..pipeline import Pipeline, RewriteResult

__all__ = ["precompute_rewrites", "read_head_queries"]


def read_head_queries(path: Path) -> list[str]:
    """The distinct queries of a head-queries file, in order: one per line (a TSV line's first
    column); DataError when the file cannot be read or holds none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read queries file {path}: {e}") from e
    head = list(dict.fromkeys(q.split("\t")[0].strip() for q in lines if q.strip()))
    if not head:
        raise DataError(f"queries file {path} has no queries")
    return head


def precompute_rewrites(pipeline: Pipeline, queries: Sequence[str], target,
                        task: str | None = None, n: int = 1, workers: int = 16,
                        progress: bool = True) -> dict[str, Any]:
    """Rewrite head queries (concurrently, so the micro-batcher fills its batches) and write the
    accepted prompts as JSONL to ``target`` for the service's cache (`udrl rewrite-batch`)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from ..rewrite import write_precomputed

    t0 = time.perf_counter()

    def one(q: str) -> RewriteResult | None:
        try:
            return pipeline.rewrite(q, task, n=n, deadline_ms=3_600_000)
        except QueryTooLongError:  # the model's window cannot take it: nothing to precompute
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(one, queries), total=len(queries), desc="rewriting",
                            unit="query", disable=not progress))
    rows, raw = [], 0
    for res in results:
        if res is None:
            raw += 1
            continue
        for o in res.prompts:
            if o.path == "raw":
                raw += 1
                continue
            rows.append({"query": res.query, **o.command, "model_version": res.model_version,
                         "prompts": [o.prompt, *o.alternatives]})
    write_precomputed(target, rows)
    return {"queries": len(queries), "rows": len(rows), "fell_back_to_raw": raw,
            "model_version": pipeline.model_version, "file": str(target),
            "seconds": round(time.perf_counter() - t0, 2)}
