"""Service benchmark: latency and throughput of ``POST /v1/rewrite`` over real HTTP on localhost.

The app (FastAPI + uvicorn, the real Pipeline, micro-batcher and cache) serves a random-weight
rewriter of the demo shape (preset ``small``, 4 layers x 192) through the engine
``load_engine`` picks (ONNX Runtime int8, the first ``auto`` serves, when its export exists). Generation is free greedy decoding
with no retries, so every cache miss costs exactly one generation; a random model seldom picks
<|end|>, so its prompts run to the token budget (the worst case, reported as ``miss_tokens``).
Strict length is not used: it would run on the PyTorch fallback.

Bounded load: a fixed number of requests per client, 1 and 8 concurrent clients, each with its
own keep-alive connection. ``miss``: every request has a new query (one generation each; a
random model's prompts fail the checks and fall back to the raw query, which costs the same);
``hit``: one query whose rewrite is in the cache (loaded from a precomputed-rewrites file).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["run"]

HIT_QUERY = "summer sale poster"


def _model_dir(root: Path) -> Path:
    import torch

    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir
    from rewriters.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer()
    model = build_model("scratch", tok, MODEL_PRESETS["small"])
    meta = RewriterMeta(version="unsaved", base_model="scratch", model_config={},
                        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical")
    out = root / "rewriter"
    save_model_dir(out, model, tok, meta)
    try:  # serve through the fast engines when this installation has them
        from rewriters.fast import export_ctranslate2
        from rewriters.onnx_engine import export_onnx

        export_onnx(out)
        export_ctranslate2(out)
    except ImportError:
        pass
    return out


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    return server, thread


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, clients: int, per_client: int, query_for) -> dict[str, Any]:
    import httpx

    def client(c: int) -> list[float]:
        times = []
        with httpx.Client(timeout=60) as http:
            for i in range(per_client):
                body = {"query": query_for(c, i), "task": "image", "length": 12}
                t = time.perf_counter()
                r = http.post(url, json=body)
                times.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(client, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 2),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)}


def run(quick: bool = False) -> dict[str, Any]:
    from plugin.config import Settings
    from plugin.hook import load_engine
    from plugin.pipeline import Pipeline
    from plugin.service import create_app

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _model_dir(ws)
        settings = Settings.model_validate({
            "workspace": ws, "pipeline": {"retries": 0, "decoding": "greedy"},
            "generation": {"strict_length": False},
            "service": {"deadline_ms": 60_000, "max_batch": 16, "batch_wait_ms": 5},
        })
        engine = load_engine(settings)
        # A random model's prompts fail the prompt checks and are never cached, so the hit
        # query comes from a precomputed-rewrites file, as head queries do in production.
        from plugin.rewrite import write_precomputed

        write_precomputed(settings.precomputed_path, [{
            "query": HIT_QUERY, "task": "image", "length": 12, "relevance": 4,
            "model_version": engine.version,
            "prompts": ["bright summer sale poster with bold type palm leaves and sunny beach"]}])
        pipe = Pipeline(engine, None, settings)
        server, thread = _serve(create_app(pipe), _free_port())
        url = f"http://127.0.0.1:{server.config.port}/v1/rewrite"
        n_miss = 5 if quick else 25
        n_hit = 20 if quick else 200
        out: dict[str, Any] = {"engine": type(engine).__name__, "model": "GPT-2 4x192 random",
                               "generation": "greedy, free length, no retries"}
        try:
            _load(url, 1, 2, lambda c, i: f"warm up {i}")
            for clients in (1, 8):
                before = (pipe.batcher.stats.batches, pipe.batcher.stats.items)
                miss = _load(url, clients, n_miss,
                             lambda c, i, k=clients: f"cozy cabin {k} {c} {i}")
                batches = pipe.batcher.stats.batches - before[0]
                items = pipe.batcher.stats.items - before[1]
                miss["mean_batch"] = round(items / max(1, batches), 2)
                out[f"miss_c{clients}"] = miss
                out[f"hit_c{clients}"] = _load(url, clients, n_hit,
                                               lambda c, i: HIT_QUERY)
            out["ratio_rps_miss_c8_vs_c1"] = round(out["miss_c8"]["rps"] / out["miss_c1"]["rps"], 2)
            out["cache"] = pipe.cache.stats()
            probe = engine.rewrite_batch([("cozy cabin", pipe.command("image", 12))],
                                         decoding="greedy")[0][0]
            out["miss_words"] = probe.words
        finally:
            server.should_exit = True
            thread.join(10)
            pipe.close()
    return out
