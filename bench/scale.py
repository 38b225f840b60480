"""Benchmark moving up: FAISS HNSW over 1M vectors, and the Ray encoder against the local one.

HNSW: ``ImageIndex.build`` (``index_type="hnsw"``, the shipped M = 32, efSearch = 128) over
N = 1,000,000 synthetic 512-d float32 unit vectors (``quick``: 100,000), clustered like
embeddings (1,000 directions plus noise, as ``bench.index_images``). Reports the build time,
the build's resident-memory growth (FAISS graph + the normalised copy the index keeps + ids),
the FAISS file size per vector, the resident memory a fresh process needs to open the saved
index for serving, queries/s through ``ImageIndex.search`` at batch 1 and 64, and recall@10
against exact inner-product search (``faiss.knn``) on a sample of queries, also for efSearch
64 to 512 (``ef_search_sweep``).

Ray encoding: the same catalogue of generated 320x240 JPEGs built by ``build_image_index``
with the local runner (twice: before and after, averaged) and with ``image_ray.RayRunner`` on
a local Ray (one actor holding every core, as the default plan gives on one node), for a
random-weight ViT-B-32. ``images_per_s`` is the build's encode loop (the Ray one includes
starting the actor and loading its model; ``ray.init`` is reported apart); ``steady`` leaves
out the first batch of each. overhead = local rate / Ray rate - 1 (target <= 0.15).

Run: ``python -m bench.scale [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np

from bench.index_images import _qps  # the same timing loop, k = 10
from indexers.images import ImageIndex, ImageIndexConfig

__all__ = ["bench_hnsw", "bench_ray_encoding", "run"]

D, K = 512, 10
OVERHEAD_TARGET = 0.15


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) base and (n_queries, D) query unit vectors, made in blocks (no n x D temporaries)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, D), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, D), np.float32)
        for i in range(0, m, 100_000):
            j = min(m, i + 100_000)
            block = centres[rng.integers(0, 1000, j - i)]
            block += rng.standard_normal((j - i, D), dtype=np.float32) / np.sqrt(D)
            out[i:j] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


_OPEN = """
import json, sys, time
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from indexers.images import ImageIndex
import numpy as np
before = rss(); t0 = time.perf_counter()
ix = ImageIndex.open(sys.argv[1])
opened = time.perf_counter() - t0
ix.search(np.ones((1, ix.dim), np.float32), 10)
print(json.dumps({"open_s": opened, "rss_delta": rss() - before}))
"""


def _serving_rss(directory: Path) -> dict:
    """Open the saved index in a fresh process: seconds to open, resident memory it adds."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _OPEN, str(directory)], cwd=root, check=True,
                         capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_hnsw(n: int, n_queries: int, n_exact: int, work: Path) -> dict:
    """Build HNSW over ``n`` clustered unit vectors; time, memory, queries/s and recall@10."""
    x, q = _clustered(n, n_queries)
    ids = [str(i) for i in range(n)]
    meta = [{} for _ in range(n)]
    before = _rss()
    t0 = time.perf_counter()
    ix = ImageIndex.build(x, ids, meta, "bench/random", ImageIndexConfig(index_type="hnsw"))
    build_s = time.perf_counter() - t0
    build_rss = _rss() - before
    del x  # the index keeps its own normalised copy (ix.vectors()): the exact search uses it
    qps1, _ = _qps(ix, q[:n_exact], 1)
    qps64, got = _qps(ix, q, 64)
    _, exact = faiss.knn(q[:n_exact], ix.vectors(), K, metric=faiss.METRIC_INNER_PRODUCT)

    def recall_of(found: list[list[str]]) -> float:
        return float(np.mean([len(set(map(int, g)) & set(e.tolist())) / K
                              for g, e in zip(found[:n_exact], exact, strict=True)]))

    recall, params = recall_of(got), dict(ix.meta["params"])
    sweep = {}  # efSearch -> recall and speed (ImageIndex.search reads it from meta per query)
    for ef in (64, 128, 256, 512):
        ix.meta["params"]["ef_search"] = ef
        qps, found = _qps(ix, q[:n_exact], 64)
        sweep[str(ef)] = {"qps_batch64": round(qps, 1), "recall_at_10": round(recall_of(found), 4)}
    ix.meta["params"] = params
    ix.save(work / "hnsw")
    faiss_bytes = (work / "hnsw" / "index.faiss").stat().st_size
    del ix
    serving = _serving_rss(work / "hnsw")
    m = params["hnsw_m"]
    return {
        "n": n, "dim": D, "k": K, "params": params,
        "build_s": round(build_s, 1),
        "build_rss_delta_gib": round(build_rss / 2**30, 2),
        "faiss_index_gib": round(faiss_bytes / 2**30, 2),
        "faiss_bytes_per_vector": round(faiss_bytes / n, 1),
        "formula_bytes_per_vector": 4 * D + 2 * 4 * m,  # FAISS wiki: 4*d + 8*M (IndexHNSWFlat)
        "serving_rss_gib": round(serving["rss_delta"] / 2**30, 2),
        "serving_bytes_per_vector": round(serving["rss_delta"] / n, 1),
        "open_s": round(serving["open_s"], 1),
        "qps_batch1": round(qps1, 1),
        "qps_batch64": round(qps64, 1),
        "recall_at_10": round(recall, 4),
        "ef_search_sweep": sweep,
        "queries": {"batch1": n_exact, "batch64": n_queries, "recall_sample": n_exact},
    }


class _Timed:
    """Wraps a runner and notes when each batch was committed (for the steady-state rate)."""

    def __init__(self, inner):
        self.inner, self.name, self.t0, self.marks = inner, inner.name, 0.0, []

    def run(self, todo, encoder, batch_size, commit):
        def timed(ids, vecs, bad, handled):
            commit(ids, vecs, bad, handled)
            self.marks.append((time.perf_counter(), len(ids)))

        self.t0 = time.perf_counter()
        self.inner.run(todo, encoder, batch_size, timed)

    def first_batch_s(self) -> float:
        return self.marks[0][0] - self.t0

    def steady(self) -> float:
        """Images/s after the first batch committed."""
        (t_first, _), rest = self.marks[0], self.marks[1:]
        return sum(n for _, n in rest) / (rest[-1][0] - t_first) if rest else 0.0


def _build(images: Path, store: Path, encoder, cfg, runner):
    from indexers.image_build import build_image_index

    timed = _Timed(runner)
    rep = build_image_index(images, store, encoder, cfg, progress=False, policy=None,
                            runner=timed)
    return rep, timed


def bench_ray_encoding(n_images: int, batch_size: int, work: Path,
                       model: str = "ViT-B-32") -> dict:
    """Local runner vs Ray runner on the same images and model; images/s and overhead."""
    import ray

    from bench.index_images import _make_images
    from indexers.encoders import ClipEncoder
    from indexers.image_encode import LocalRunner
    from indexers.image_ray import RayEncodeConfig, RayRunner
    from indexers.images import load_image_index

    images = work / "imgs"
    _make_images(images, n_images)
    encoder = ClipEncoder(model, pretrained=None)
    cfg = ImageIndexConfig(model_name=model, pretrained=None, index_type="flat",
                           batch_size=batch_size)
    local1, t_local1 = _build(images, work / "local1", encoder, cfg, LocalRunner())

    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=512 * 2**20,
             log_to_driver=False)
    init_s = time.perf_counter() - t0
    try:
        runner = RayRunner(RayEncodeConfig(), partial(ClipEncoder, model, None))
        on_ray, t_ray = _build(images, work / "ray", encoder, cfg, runner)
    finally:
        ray.shutdown()
    local2, t_local2 = _build(images, work / "local2", encoder, cfg, LocalRunner())

    local = (local1.images_per_s + local2.images_per_s) / 2
    local_steady = (t_local1.steady() + t_local2.steady()) / 2
    diff = np.abs(load_image_index(work / "ray").vectors()
                  - load_image_index(work / "local1").vectors()).max()
    return {
        "encoder": encoder.name, "images": on_ray.encoded, "batch_size": batch_size,
        "cores": cores,
        "local_images_per_s": round(local, 2),
        "local_runs_images_per_s": [round(local1.images_per_s, 2), round(local2.images_per_s, 2)],
        "ray_images_per_s": round(on_ray.images_per_s, 2),
        "ray_over_local": round(on_ray.images_per_s / local, 3),
        "overhead": round(local / on_ray.images_per_s - 1, 3),
        "local_steady_images_per_s": round(local_steady, 2),
        "ray_steady_images_per_s": round(t_ray.steady(), 2),
        "overhead_steady": round(local_steady / t_ray.steady() - 1, 3),
        "overhead_target": OVERHEAD_TARGET,
        "ray_actors": runner.actors, "ray_device": runner.device,
        "ray_init_s": round(init_s, 1),
        "ray_first_batch_s": round(t_ray.first_batch_s(), 1),  # actor start + model load + batch
        "local_first_batch_s": round((t_local1.first_batch_s() + t_local2.first_batch_s()) / 2, 1),
        "max_abs_vector_diff": float(diff),
    }


def run(quick: bool = False) -> dict:
    """HNSW at 1M (100k with ``quick``) and the Ray-vs-local encoding comparison."""
    t0 = time.perf_counter()
    n, n_q, n_exact = (100_000, 1000, 500) if quick else (1_000_000, 2000, 1000)
    n_images = 96 if quick else 320
    # other processes on the machine change every number here: note how busy it was
    out: dict = {"quick": quick, "faiss_threads": faiss.omp_get_max_threads(),
                 "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out["hnsw"] = bench_hnsw(n, n_q, n_exact, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        out["ray_encoding"] = bench_ray_encoding(n_images, 32, Path(tmp))
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 vectors and 96 images")
    print(json.dumps(run(quick=ap.parse_args().quick), indent=2))
