"""Benchmark the embedded (tantivy) template index: build time and queries per second.

    python bench/index_templates.py            # 10k templates, 1000 queries
    python bench/index_templates.py --quick    # 2k templates, 200 queries (a smoke run)

Prints one JSON object. Single-threaded on purpose (one writer thread, one query at a time):
the numbers are per core and comparable across machines of the same kind.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tantivy

from indexers.template_backends import build_template_index, open_template_index
from tests.indexers.template_fixtures import TAGS, VOCAB, make_templates

__all__ = ["run"]


def _queries(n: int, distinctive: list[str], seed: int = 1) -> list[str]:
    """Mostly 2-4 vocabulary words (many hits each), every 5th with a rare title word."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(VOCAB, rng.randint(2, 4))
        if i % 5 == 0:
            words.append(rng.choice(distinctive))
        out.append(" ".join(words))
    return out


def run(quick: bool = False) -> dict:
    """Build a synthetic index, then time single and batched search.

    Args:
        quick: 2,000 templates and 200 queries instead of 10,000 and 1,000.

    Returns:
        Sizes, build seconds and docs/s, single-query qps with p50/p95 latency (ms), batch qps,
        filtered single-query qps, and the environment.
    """
    n_docs, n_queries, k = (2_000, 200, 10) if quick else (10_000, 1_000, 10)
    catalog = make_templates(n_docs, seed=0)
    queries = _queries(n_queries, list(catalog.distinctive))
    rng = random.Random(2)
    filters = [{"tags": [rng.choice(TAGS)]} for _ in queries]
    with tempfile.TemporaryDirectory(prefix="bench-templates-") as root:
        t0 = time.perf_counter()
        report = build_template_index("tantivy", catalog.records, root=root)
        build_s = time.perf_counter() - t0
        with open_template_index("tantivy", root=root) as ix:
            for q in queries[:20]:  # warm the page cache and the searcher
                ix.search(q, k)
            lat = []
            t0 = time.perf_counter()
            for q in queries:
                s = time.perf_counter()
                ix.search(q, k)
                lat.append(time.perf_counter() - s)
            single_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for q, f in zip(queries, filters):
                ix.search(q, k, f)
            filtered_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            batch = ix.search_batch(queries, k)
            batch_s = time.perf_counter() - t0
            assert len(batch) == len(queries)
    lat_ms = sorted(x * 1000 for x in lat)
    return {
        "backend": "tantivy",
        "quick": quick,
        "docs": n_docs,
        "queries": n_queries,
        "k": k,
        "build_s": round(build_s, 3),
        "build_docs_per_s": round(n_docs / build_s),
        "single_qps": round(n_queries / single_s, 1),
        "single_p50_ms": round(statistics.median(lat_ms), 3),
        "single_p95_ms": round(lat_ms[int(0.95 * (len(lat_ms) - 1))], 3),
        "filtered_qps": round(n_queries / filtered_s, 1),
        "batch_qps": round(n_queries / batch_s, 1),
        "version": report.version,
        "env": {
            "tantivy": getattr(tantivy, "__version__", "?"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
