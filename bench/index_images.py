"""Benchmark: FAISS search speed/recall per index type, and image-encoding pipeline overhead.

Search: ``ImageIndex.search`` (what callers get, Python wrapper included) over N unit vectors
(D = 512; N = 100,000, or 20,000 with ``quick``) at batch 1 and batch 64, k = 10, with
recall@10 against exact flat search, on two synthetic sets: "clustered" (a mixture of 1,000
directions with noise, cosine about 0.7 to their centre, queries drawn from the same mixture —
embedding-like structure) and "uniform" (random directions: no structure at all, the worst case
for approximate indexes).

Encoding: ``build_image_index`` over generated 320x240 JPEGs versus the bare
``model.encode_image`` on the same preprocessed tensors at the same batch size, for the tiny
test CLIP and a random-weight ViT-B-32. overhead = raw rate / pipeline rate - 1 (0.10 = the
pipeline takes 10% longer per image). Timings are wall-clock on whatever machine runs this.

Run: ``python -m bench.index_images [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image

from indexers.catalog_images import open_image
from indexers.encoders import TINY_CLIP_NAME, ClipEncoder
from indexers.image_build import build_image_index
from indexers.images import ImageIndex, ImageIndexConfig

__all__ = ["bench_encoding", "bench_search", "run"]

D, K = 512, 10


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # (n, d)


def _clustered(rng: np.random.Generator, n: int, d: int, centres: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)  # |noise| ~ 1
    x = centres[rng.integers(0, len(centres), n)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # (n, d)


def _data(kind: str, n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return _unit(rng, n, D), _unit(rng, n_queries, D)
    centres = _unit(rng, 1000, D)
    return _clustered(rng, n, D, centres), _clustered(rng, n_queries, D, centres)


def _qps(ix: ImageIndex, q: np.ndarray, batch: int) -> tuple[float, list[list[str]]]:
    ix.search(q[:batch], K)  # warm-up
    out: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(0, len(q), batch):
        out += [[h.id for h in hits] for hits in ix.search(q[i : i + batch], K)]
    return len(q) / (time.perf_counter() - t0), out


def bench_search(n: int, n_queries: int, data: str = "clustered", seed: int = 0) -> dict:
    """Build flat, hnsw and ivf over ``n`` unit vectors ("clustered" or "uniform"), time searches.

    Returns:
        {index_type: {build_s, qps_batch1, qps_batch64, recall_at_10, params}} plus sizes.
    """
    x, q = _data(data, n, n_queries, seed)  # (n, D), (Q, D)
    ids = [str(i) for i in range(n)]
    meta = [{} for _ in range(n)]
    out: dict = {"n": n, "dim": D, "queries": n_queries, "k": K}
    exact = None
    for kind in ("flat", "hnsw", "ivf"):
        t0 = time.perf_counter()
        ix = ImageIndex.build(x, ids, meta, "bench/random", ImageIndexConfig(index_type=kind))
        build_s = time.perf_counter() - t0
        qps1, res1 = _qps(ix, q, 1)
        qps64, res64 = _qps(ix, q, 64)
        if exact is None:
            exact = res64  # flat = exact search
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(res64, exact)]))
        out[kind] = {
            "build_s": round(build_s, 2),
            "qps_batch1": round(qps1, 1),
            "qps_batch64": round(qps64, 1),
            "recall_at_10": round(recall, 4),
            "batch1_equals_batch64": res1 == res64,
            "params": ix.meta["params"],
        }
    return out


def _make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((320, 240), Image.BILINEAR).save(
            folder / f"im{i:04d}.jpg", quality=90
        )


def _raw_rate(encoder: ClipEncoder, pixels: torch.Tensor, batch: int) -> float:
    """Images/s of the bare model on already preprocessed tensors (B, 3, H, W)."""
    with torch.inference_mode():
        encoder.model.encode_image(pixels[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(pixels), batch):
            encoder.model.encode_image(pixels[i : i + batch])
        return len(pixels) / (time.perf_counter() - t0)


def bench_encoding(model_name: str, n_images: int, batch_size: int, work: Path) -> dict:
    """Pipeline (decode + preprocess + encode + durable chunk writes) vs bare model rate."""
    encoder = ClipEncoder(model_name, pretrained=None)
    images = work / f"imgs-{n_images}"
    if not images.exists():
        _make_images(images, n_images)
    files = sorted(images.glob("*.jpg"))
    pixels = torch.stack([encoder.preprocess(open_image(p)) for p in files])  # (N, 3, H, W)
    raw_before = _raw_rate(encoder, pixels, batch_size)
    cfg = ImageIndexConfig(
        model_name=model_name, pretrained=None, index_type="flat", batch_size=batch_size
    )
    t0 = time.perf_counter()
    report = build_image_index(images, work / f"store-{model_name}", encoder, cfg, progress=False)
    total_s = time.perf_counter() - t0
    raw_after = _raw_rate(encoder, pixels, batch_size)
    raw = (raw_before + raw_after) / 2
    return {
        "encoder": encoder.name,
        "images": report.encoded,
        "batch_size": batch_size,
        "pipeline_images_per_s": round(report.images_per_s, 1),
        "raw_images_per_s": round(raw, 1),
        "raw_runs_images_per_s": [round(raw_before, 1), round(raw_after, 1)],
        "overhead": round(raw / report.images_per_s - 1, 3),
        "build_total_s": round(total_s, 2),  # + catalogue scan, FAISS build, meta, publish
    }


def run(quick: bool = False) -> dict:
    """Run both benchmarks; ``quick`` shrinks them to well under a minute on 2 cores.

    Returns:
        {"machine": ..., "search": ..., "encoding": {model: ...}, "seconds": total}
    """
    t0 = time.perf_counter()
    n, n_q = (20_000, 200) if quick else (100_000, 1000)
    n_images = 64 if quick else 200
    out = {
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
        },
        "search": {kind: bench_search(n, n_q, kind) for kind in ("clustered", "uniform")},
        "encoding": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        for model in (TINY_CLIP_NAME, "ViT-B-32"):
            out["encoding"][model] = bench_encoding(model, n_images, 32, Path(tmp))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="smaller sizes (about a minute on 2 cores)"
    )
    print(json.dumps(run(quick=ap.parse_args().quick), indent=2))
