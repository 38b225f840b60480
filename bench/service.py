"""Service benchmark: ``POST /v1/rewrite`` over real HTTP on localhost, against a ceiling and
against the model's own compute, all measured in the same run.

The model: a random-weight rewriter of the demo's shape, as ``udrl train`` leaves a scratch
model (preset ``small``, 4 layers x 192; length markers every 3 words and before the last 3;
its output layer restricted to the tokens of the builtin vocabularies, ~2,000), served by the
engine ``load_engine`` picks (ONNX Runtime int8, the first ``auto`` serves). Generation is free
greedy decoding with no retries. A random model never writes the countdown's ``<|r=1|>``, so
<|end|> stays banned and every miss decodes its whole token budget (69 tokens for an 18-word
prompt: the worst case for that length; a trained model stops at its prompt's end).

Measured, per round (``ROUNDS``, medians reported), every server in a process of its own and
the load from this process (``bench.http_load``: raw keep-alive sockets, one per client):

* ``ceiling_c1`` / ``ceiling_c8``: a bare ASGI app on the same uvicorn answering a constant
  JSON: what this machine's Python HTTP stack serves at most;
* ``hit_c1`` / ``hit_c8``: one query whose rewrite is in the cache (a precomputed rewrite);
* ``miss_c1``: a new query every request, 18 words asked (one generation each);
* ``miss_c8``: the same at 8 clients, with the micro-batches formed (from ``/metrics``).

``miss_step_ms``: the engine in this process, on the same model and 18-word requests:
``model`` is ONNX Runtime's own time per decoding step (``run_with_iobinding``), ``overhead``
the decoding loop's time per step between two model calls (bans, argmax, bookkeeping).
``targets`` compares the medians with the service's targets.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .http_load import get, load, request_bytes, start_server, stop_server

__all__ = ["TARGETS", "run", "step_profile"]

HIT_QUERY = "summer sale poster"
MISS_WORDS = 18  # words asked of a miss
ROUNDS = 3  # load rounds; each reports its own numbers, the result their medians
# target: (metric, comparison, bound)
TARGETS = {"hit_c1.p50_ms": ("<=", 2.0), "hit_c8.rps": (">=", 1000.0),
           "miss_c1.p50_ms": ("<=", 60.0)}


def _output_vocab(tokenizer) -> list[int]:
    """The tokens of the builtin vocabularies' phrases and <|end|>: a scratch model's output
    layer keeps the tokens its training prompts use, of this order (~2,000)."""
    from rewriters.commands import END_TOKEN
    from rewriters.queries import load_vocab

    def phrases(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from phrases(v)
        elif isinstance(x, list):
            for v in x:
                yield from phrases(v)

    ids = {t for p in phrases(load_vocab()) for t in tokenizer.encode(" " + p)}
    return sorted(ids | {tokenizer.convert_tokens_to_ids(END_TOKEN)})


def _model_dir(root: Path) -> Path:
    """A random demo-shaped model and its ONNX export under ``root/rewriter``."""
    import torch

    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir
    from rewriters.engines.onnx_engine import export_onnx
    from rewriters.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer()
    model = build_model("scratch", tok, MODEL_PRESETS["small"])
    meta = RewriterMeta(version="unsaved", base_model="scratch", model_config={},
                        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical",
                        marker_every=3, marker_tail=3)
    out = root / "rewriter"
    save_model_dir(out, model, tok, meta, _output_vocab(tok))
    export_onnx(out)
    return out


def _queries(tag: str, clients: int, per_client: int) -> list[list[str]]:
    """New queries per client, none seen before in the run (each one misses the cache)."""
    return [[f"cozy cabin {tag} {c} {i}" for i in range(per_client)] for c in range(clients)]


def _miss_load(port: int, clients: int, per_client: int, tag: str) -> dict[str, Any]:
    qs = _queries(tag, clients, per_client)
    return load(port, clients, per_client, lambda c, i: request_bytes(
        "/v1/rewrite", {"query": qs[c][i], "task": "image", "length": MISS_WORDS}, port))


def _metric(text: str, name: str, label: str) -> float:
    """One sample of a Prometheus text exposition (``name{...label...} value``)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} {label} not in /metrics")


def _batches(port: int) -> tuple[float, float]:
    text = get(port, "/metrics")[1].decode()
    return (_metric(text, "udrl_batch_items_total", 'what="batches"'),
            _metric(text, "udrl_batch_items_total", 'what="items"'))


def step_profile(settings, requests: int) -> dict[str, Any]:
    """Per decoding step, ONNX Runtime's time and the loop's own, on 18-word misses.

    The engine is loaded here as the service loads it; every model call is timed. ``model``:
    mean time of the step calls (the prefill left out); ``overhead``: the time between two
    consecutive model calls, per step. Medians over ``requests`` new queries.
    """
    from plugin.hook import load_engine
    from rewriters.commands import Command

    engine = load_engine(settings)
    session = engine.session
    marks: list[tuple[int, int]] = []
    run_io = session.run_with_iobinding

    def timed(io, *args):
        t = time.perf_counter_ns()
        run_io(io, *args)
        marks.append((t, time.perf_counter_ns()))

    session.run_with_iobinding = timed  # instance attribute: this engine only
    command = Command("image", MISS_WORDS, settings.generation.relevance)
    model, loop, steps, total = [], [], [], []
    try:
        for i in range(requests + 2):  # the first two warm up
            marks.clear()
            t = time.perf_counter_ns()
            engine.rewrite_batch([(f"mountain lodge {i}", command)], decoding="greedy")
            t = time.perf_counter_ns() - t
            if i < 2:
                continue
            n = len(marks) - 1  # the first call is the prefill
            model.append(sum(e - s for s, e in marks[1:]) / n / 1e6)
            loop.append(sum(marks[k + 1][0] - marks[k][1] for k in range(n)) / n / 1e6)
            steps.append(n + 1)  # tokens generated: the prefill's and one per step
            total.append(t / 1e6)
    finally:
        del session.run_with_iobinding
    med = statistics.median
    return {"model": round(med(model), 4), "overhead": round(med(loop), 4),
            "overhead_per_model": round(med(o / m for o, m in zip(loop, model)), 3),
            "tokens": med(steps), "engine_request_ms": round(med(total), 2),
            "engine": type(engine).__name__}


def _check(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (op, bound) in TARGETS.items():
        section, key = name.split(".")
        value = result[section][key]
        ok = value <= bound if op == "<=" else value >= bound
        out[f"{name} {op} {bound:g}"] = f"{'pass' if ok else 'FAIL'} ({value:g})"
    return out


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        out[key] = (round(statistics.median(values), 2) if isinstance(values[0], (int, float))
                    else values[0])
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from plugin.config import Settings
    from plugin.rewrite import write_precomputed
    from rewriters.model import read_model_dir

    rounds = 1 if quick else ROUNDS
    n_hit1, n_hit8 = (200, 50) if quick else (1500, 400)  # per client
    n_miss1, n_miss8 = (5, 3) if quick else (30, 12)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        model_dir = _model_dir(ws)
        n_vocab = len(json.loads((model_dir / "output_vocab.json").read_text()))
        raw = {"workspace": str(ws), "pipeline": {"retries": 0, "decoding": "greedy"},
               "generation": {"strict_length": False},
               "service": {"deadline_ms": 60_000, "max_batch": 16, "batch_wait_ms": 5}}
        settings = Settings.model_validate(raw)
        # A random model's prompts fail the prompt checks and are never cached, so the hit
        # query comes from a precomputed-rewrites file, as head queries do in production.
        write_precomputed(settings.precomputed_path, [{
            "query": HIT_QUERY, "task": "image", "length": 12, "relevance": 4,
            "model_version": read_model_dir(model_dir)[1].version,
            "prompts": ["bright summer sale poster with bold type palm leaves and sunny beach"]}])
        out: dict[str, Any] = {
            "model": "GPT-2 4x192 random, markers 3/3, output vocabulary "
                     f"{n_vocab} tokens",
            "generation": f"greedy, free length, no retries; misses ask {MISS_WORDS} words",
            "server": "uvicorn " + _uvicorn_stack() + ", own process; load: raw keep-alive "
                      "sockets from the bench process",
            "miss_step_ms": step_profile(settings, 10 if quick else 40),
        }
        ceiling, cport = start_server("ceiling")
        service, sport = start_server("service", raw)
        try:
            hit_req = request_bytes("/v1/rewrite", {"query": HIT_QUERY, "task": "image",
                                                    "length": 12}, sport)
            top_req = request_bytes("/v1/rewrite", {"query": HIT_QUERY, "task": "image",
                                                    "length": 12}, cport)
            load(sport, 1, 50, lambda c, i: hit_req)  # warm up
            _miss_load(sport, 1, 5, "warm")  # the first generations grow ORT's buffers
            per_round = []
            for r in range(rounds):
                res: dict[str, Any] = {}
                res["ceiling_c1"] = load(cport, 1, n_hit1, lambda c, i: top_req)
                res["ceiling_c8"] = load(cport, 8, n_hit8, lambda c, i: top_req)
                res["hit_c1"] = load(sport, 1, n_hit1, lambda c, i: hit_req)
                res["hit_c8"] = load(sport, 8, n_hit8, lambda c, i: hit_req)
                res["miss_c1"] = _miss_load(sport, 1, n_miss1, f"r{r}c1")
                before = _batches(sport)
                res["miss_c8"] = _miss_load(sport, 8, n_miss8, f"r{r}c8")
                after = _batches(sport)
                res["miss_c8"]["mean_batch"] = round(
                    (after[1] - before[1]) / max(1.0, after[0] - before[0]), 2)
                per_round.append(res)
        finally:
            stop_server(service)
            stop_server(ceiling)
    for key in per_round[0]:
        out[key] = _median_of([r[key] for r in per_round])
    out["hit_rps_vs_ceiling_c1"] = round(statistics.median(
        r["hit_c1"]["rps"] / r["ceiling_c1"]["rps"] for r in per_round), 3)
    out["hit_rps_vs_ceiling_c8"] = round(statistics.median(
        r["hit_c8"]["rps"] / r["ceiling_c8"]["rps"] for r in per_round), 3)
    out["rounds"] = rounds
    out["targets"] = _check(out)
    return out


def _uvicorn_stack() -> str:
    """uvicorn's version and the HTTP parser and loop its ``auto`` settings pick here."""
    import importlib.util

    import uvicorn

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{uvicorn.__version__} ({http}, {loop})"
