"""Benchmark generation: the ONNX Runtime and CTranslate2 int8 engines against transformers.

A random-weight rewriter of the GPT-2 small shape (12 layers, width 768, 124M parameters, the
project's tokenizer) is saved to a temporary directory and exported to CTranslate2 int8 and to
ONNX int8 (the export times are reported). Each engine then runs in its own child process, so
the memory it reports is its own:

* ``onnxruntime``: ``load_onnx_rewriter`` (dynamic QInt8 weights, never imports torch), then a
  plain greedy loop over its ONNX session (``KVDecoder``: right padding, the KV cache written
  in place) and the served ``OnnxRewriter.rewrite_batch``;
* ``ctranslate2``: ``load_ctranslate2_rewriter`` (int8 weights, int8 x float32 compute, never
  imports torch), then the raw ``Generator.generate_batch`` and the served
  ``CTranslate2Rewriter.rewrite_batch``;
* ``transformers``: ``load_rewriter`` (float32), then plain ``model.generate`` and the PyTorch
  ``Rewriter.rewrite_batch``.

Per batch size (1, 8, 32 inputs: command tokens, a query of 1-9 words, ``<|prompt|>``):

* ``engine``: greedy, exactly ``new_tokens`` new tokens per input (``<|end|>`` held off with
  ``min_length`` / ``min_new_tokens``); tokens/s = inputs x new tokens / wall seconds, median
  of ``timed_runs`` runs after one warm-up run;
* ``rewriter``: the served path (bans, 3-gram ban, cleanup), greedy template prompts, one timed
  run (not at batch 32 for transformers and CTranslate2, nor for the vocabulary variants below);
  random weights rarely pick ``<|end|>``, so prompts run to the 128-token budget; generated
  tokens are counted up to ``<|end|>``;
* ``memory``: peak resident MB (``VmHWM``) after loading, then per batch size (the peak is
  reset before each size; batch 32 x ~140 positions holds a ~340 MB float32 KV cache).

``ratio`` = ctranslate2 / transformers, ``ratio_onnxruntime`` = onnxruntime / transformers
(tokens/s, per batch size). Targets (2-core CPU): >= 200 tokens/s at batch 1,
>= 1,000 tokens/s under batching, <= 500 MB resident for the rewriter.

``onnxruntime_rewriter_vocab``: the same weights as a trained rewriter is served. ``udrl train``
keeps the output layer to the tokens its training prompts use (``output_vocab.json``; 1,893 for
the demo model) and the ONNX export cuts the output layer to them; here the vocabulary is every
token of the builtin teacher's phrases, their markers and ``<|end|>`` (``output_vocab`` in the
result, about 3,000). The model still has 124M parameters: the input embedding keeps all rows.
``onnxruntime_rewriter_vocab_int4``: that model exported with int4 weights (``MatMulNBits``,
blocks of 32, int8 embeddings), the batch-1 choice; engine only, batches 1 and 8 (it is slower
than int8 under batching).

``int8_ceiling`` (``bench/ceilings.py``): the tokens/s no engine can pass on this machine, the
baselines the targets can be judged by. At batch 1, memory read bandwidth (a 512 MiB float32
sum, median of 7) over the bytes every new token reads (int8; int8 and int4 with the output
layer cut). Under batching (``int8_matmul``, 32 and 256 rows), ONNX Runtime's int8 matrix
products alone: one layer's four matrices and the output layer, timed.

Run: ``python -m bench.generation [--quick]`` prints the result as JSON (``--quick``: the tiny
test model, batches 1 and 8, 16 new tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ("cabin", "holiday sale", "cozy cabin in the snow", "minimal poster for a jazz night",
           "watercolor fox", "birthday party invitation with balloons and confetti",
           "neon city street at night in the rain", "menu", "bold modern flyer for a summer "
           "sale")  # 1-9 words: inputs of different lengths in one batch


def _items(batch: int):
    from rewriters.commands import Command

    return [(QUERIES[i % len(QUERIES)], Command("template", 10 + i % 20, 4)) for i in range(batch)]


def _peak_mb() -> float:
    """Peak resident memory of this process in MB (since the last ``_reset_peak``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reset_peak() -> None:
    """Restart the peak at the current resident size (Linux: clear_refs 5); else a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _timed(fn, reps: int) -> float:
    """Median wall seconds of ``reps`` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _count_generated(rw, counts: list[int]) -> None:
    """Record how many tokens each prompt generated (up to and with <|end|>): bench only."""
    finish = rw._finish

    def counting(ids, command):
        ids = list(ids)
        counts.append(ids.index(rw.end_id) + 1 if rw.end_id in ids else len(ids))
        return finish(ids, command)

    rw._finish = counting


def _onnx_greedy(rw, items, new: int) -> int:
    """Greedy over the ONNX session, exactly ``new`` tokens per input; returns tokens made.

    The engine alone, as ``generate_batch`` is for CTranslate2: right padding and the in-place
    KV cache as ``OnnxRewriter`` uses them (its ``KVDecoder``), <|end|> held off, no bans, no
    cleanup.
    """
    import numpy as np

    dec = rw.decoder()
    logits = dec.prefill([rw.encode_input(q, c) for q, c in items], rw.end_id, new)
    made = 0
    for step in range(new):
        logits[:, rw._end_col] = -np.inf  # as min_length: never stop early
        choice = logits.argmax(1)
        made += len(choice)
        if step + 1 < new:
            logits = dec.step(rw.columns[choice])
    return made


def _child(engine: str, model_dir: str, batches: list[int], new: int, reps: int,
           threads: int, served: list[int]) -> dict[str, Any]:
    """Load one engine, time raw and served generation, report memory. Runs in a subprocess."""
    from rewriters.commands import END_TOKEN

    t0 = time.perf_counter()
    if engine == "onnxruntime":
        from rewriters.engines.onnx_engine import load_onnx_rewriter

        rw = load_onnx_rewriter(model_dir, intra_threads=threads, fallback=False)
        info = {"quantization": rw.export["quantization"], "intra_threads": threads}

        def raw(items):
            return _onnx_greedy(rw, items, new)
    elif engine == "ctranslate2":
        from rewriters.engines.ctranslate2_engine import load_ctranslate2_rewriter

        rw = load_ctranslate2_rewriter(model_dir, intra_threads=threads, inter_threads=1,
                                       fallback=False)
        info = {"compute_type": rw.generator.compute_type, "intra_threads": threads}

        def raw(items):
            starts = [rw.tokenizer.convert_ids_to_tokens(rw.encode_input(q, c)) for q, c in items]
            res = rw.generator.generate_batch(starts, max_length=new, min_length=new,
                                              sampling_topk=1, end_token=END_TOKEN,
                                              include_prompt_in_result=False)
            return sum(len(r.sequences_ids[0]) for r in res)
    else:
        import torch

        from rewriters.engines.torch_engine import load_rewriter

        torch.set_num_threads(threads)
        rw = load_rewriter(model_dir)
        info = {"dtype": str(rw.model.dtype).replace("torch.", ""), "torch_threads": threads}

        def raw(items):
            enc = [rw.encode_input(q, c) for q, c in items]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), rw.end_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(enc):  # left padding, as the Rewriter does
                ids[i, width - len(e):] = torch.tensor(e)
                mask[i, width - len(e):] = 1
            with torch.inference_mode():
                out = rw.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                        max_new_tokens=new, min_new_tokens=new,
                                        eos_token_id=rw.end_id, pad_token_id=rw.end_id)
            return (out.shape[1] - width) * len(enc)
    info["load_s"] = round(time.perf_counter() - t0, 2)
    memory = {"after_load_mb": _peak_mb()}

    engine_rows, rewriter_rows = {}, {}
    counts: list[int] = []
    _count_generated(rw, counts)
    for b in batches:
        _reset_peak()
        items = _items(b)
        tokens = raw(items)  # also the warm-up of the served path below
        assert tokens == b * new, (tokens, b * new)  # exactly `new` tokens per input
        sec = _timed(lambda: raw(items), reps)
        engine_rows[f"batch{b}"] = {"tokens_per_s": round(tokens / sec, 1),
                                    "seconds": round(sec, 3)}
        if b in served:
            counts.clear()
            t0 = time.perf_counter()
            outs = rw.rewrite_batch(items, decoding="greedy")
            sec = time.perf_counter() - t0
            assert len(outs) == b and len(counts) == b
            rewriter_rows[f"batch{b}"] = {"tokens_per_s": round(sum(counts) / sec, 1),
                                          "prompts_per_s": round(b / sec, 2),
                                          "mean_new_tokens": round(sum(counts) / b, 1)}
        memory[f"peak_mb_batch{b}"] = _peak_mb()
    return {"engine": engine_rows, "rewriter": rewriter_rows, "settings": info,
            "memory": memory, "torch_imported": "torch" in sys.modules}


def _run_child(engine: str, model_dir: Path, batches: list[int], new: int, reps: int,
               threads: int, served: list[int] | None = None) -> dict[str, Any]:
    """Run ``_child`` in a subprocess; ``served`` (default: every batch size) picks the batch
    sizes whose served path is timed too."""
    served = batches if served is None else served
    cmd = [sys.executable, "-m", "bench.generation", "--child", engine, "--model", str(model_dir),
           "--batches", ",".join(map(str, batches)), "--new", str(new), "--reps", str(reps),
           "--threads", str(threads), "--served", ",".join(map(str, served))]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} child failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build(model_dir: Path, preset: str) -> dict[str, Any]:
    """Save a random-weight rewriter of ``preset`` shape; export it to CTranslate2 and ONNX int8."""
    import torch

    from rewriters.engines.ctranslate2_engine import export_ctranslate2
    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir
    from rewriters.engines.onnx_engine import export_onnx
    from rewriters.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    cfg = MODEL_PRESETS[preset]
    model = build_model("scratch", tokenizer, cfg)
    params = sum(p.numel() for p in model.parameters())
    meta = RewriterMeta(version="unsaved", base_model="scratch", model_config=vars(cfg),
                        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical")
    save_model_dir(model_dir, model, tokenizer, meta)
    del model
    t0 = time.perf_counter()
    out = export_ctranslate2(model_dir, quantization="int8")
    export_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.iterdir())
    t0 = time.perf_counter()
    onnx_out = export_onnx(model_dir, quantization="int8")  # trace, check vs torch, quantize
    onnx_s = time.perf_counter() - t0
    onnx_size = sum(f.stat().st_size for f in onnx_out.iterdir())
    return {"preset": preset, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
            "parameters_m": round(params / 1e6, 1), "vocab": len(tokenizer),
            "export_s": round(export_s, 1), "ctranslate2_dir_mb": round(size / 2**20, 1),
            "onnx_export_s": round(onnx_s, 1), "onnx_dir_mb": round(onnx_size / 2**20, 1),
            "float32_weights_mb": round((model_dir / "model.safetensors").stat().st_size
                                        / 2**20, 1)}


def _rewriter_vocab(tokenizer) -> list[int]:
    """Token ids a rewriter trained on the builtin teacher's phrases may emit (see module doc)."""
    from rewriters.commands import END_TOKEN, MARKER_TOKENS
    from rewriters.queries import load_vocab

    def phrases(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from phrases(item)
        elif isinstance(node, dict):
            for key, item in node.items():
                if not key.startswith("_"):
                    yield from phrases(item)

    ids = set(tokenizer.convert_tokens_to_ids([END_TOKEN, *MARKER_TOKENS]))
    for phrase in phrases(load_vocab()):
        for text in (phrase, " " + phrase, " " + phrase + ","):
            ids.update(tokenizer.encode(text))
    return sorted(ids)


def _build_vocab_variant(model_dir: Path, out_dir: Path, quantization: str = "int8",
                         ) -> dict[str, Any]:
    """``model_dir``'s weights with a rewriter's output vocabulary, exported to ONNX.

    The model files are linked, not copied (the export only reads them); ``output_vocab.json``
    is the variant's own file.
    """
    from rewriters.engines.onnx_engine import export_onnx
    from rewriters.tokenizer import load_tokenizer

    out_dir.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "output_vocab.json":
            (out_dir / f.name).symlink_to(f.resolve())
    vocab = _rewriter_vocab(load_tokenizer())
    (out_dir / "output_vocab.json").write_text(json.dumps(vocab))
    t0 = time.perf_counter()
    out = export_onnx(out_dir, quantization=quantization)
    return {"output_vocab": len(vocab), "onnx_export_s": round(time.perf_counter() - t0, 1),
            "onnx_dir_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 1)}


def run(quick: bool = False) -> dict:
    """Build, export, then time the three engines in child processes.

    Args:
        quick: the tiny test model, batches 1 and 8, 16 new tokens (a smoke run).
    Returns:
        model, settings, per-engine tokens/s and memory, ratios and whether the targets hold.
    """
    import ctranslate2
    import onnxruntime
    import transformers

    from rewriters.engines.onnx_engine import INT4_BLOCK

    from bench.ceilings import ceilings

    preset, batches, new, reps = ("tiny", [1, 8], 16, 1) if quick else ("gpt2", [1, 8, 32], 48, 2)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        model_dir = Path(tmp) / "rewriter"
        model = _build(model_dir, preset)
        vocab_dir = Path(tmp) / "rewriter-vocab"
        model["rewriter_vocab"] = _build_vocab_variant(model_dir, vocab_dir)
        int4_dir = Path(tmp) / "rewriter-vocab-int4"
        model["rewriter_vocab_int4"] = _build_vocab_variant(model_dir, int4_dir, "int4")
        ceiling = ceilings(model, threads, model["rewriter_vocab"]["output_vocab"], INT4_BLOCK)
        # the served path at batch 32 of the float32 baseline (~40 s) and of CTranslate2
        # (~25 s), and the vocabulary variants' served paths, are left out to keep `make bench`
        # under 10 minutes on a slow day
        engines = {e: _run_child(e, model_dir, batches, new, reps, threads,
                                 None if e == "onnxruntime" else [b for b in batches if b <= 8])
                   for e in ("onnxruntime", "ctranslate2", "transformers")}
        ort_vocab = _run_child("onnxruntime", vocab_dir, batches, new, reps, threads, served=[])
        # int4 is the batch-1 choice (slower under batching): batches 1 and 8 only
        ort_int4 = _run_child("onnxruntime", int4_dir, batches[:2], new, reps, threads,
                              served=[])
    ort, ct2, hf = engines["onnxruntime"], engines["ctranslate2"], engines["transformers"]
    return {
        "quick": quick,
        "model": model,
        "new_tokens": new,
        "timed_runs": reps,
        "decoding": "greedy",
        "threads": threads,
        "versions": {"onnxruntime": onnxruntime.__version__,
                     "ctranslate2": ctranslate2.__version__,
                     "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "onnxruntime": ort,
        "onnxruntime_rewriter_vocab": ort_vocab,
        "onnxruntime_rewriter_vocab_int4": ort_int4,
        "ctranslate2": ct2,
        "transformers": hf,
        "ratio": _ratio(ct2, hf),
        "ratio_onnxruntime": _ratio(ort, hf),
        "ratio_onnxruntime_rewriter_vocab": _ratio(ort_vocab, hf),
        "ratio_onnxruntime_rewriter_vocab_int4": _ratio(ort_int4, hf),
        "int8_ceiling": ceiling,
        "targets_met": None if quick else {  # the targets are for the GPT-2 small shape
            "ctranslate2": _targets(ct2), "onnxruntime": _targets(ort),
            "onnxruntime_rewriter_vocab": _targets(ort_vocab),
            "onnxruntime_rewriter_vocab_int4": _targets(ort_int4)},
    }


def _ratio(fast: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
    """tokens/s of ``fast`` over transformers', per kind (engine, rewriter) and batch size."""
    return {kind: {b: round(fast[kind][b]["tokens_per_s"] / hf[kind][b]["tokens_per_s"], 2)
                   for b in fast[kind] if b in hf[kind]} for kind in ("engine", "rewriter")}


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    best_batched = max(v["tokens_per_s"] for b, v in result["engine"].items() if b != "batch1")
    peaks = {k.removeprefix("peak_mb_"): v for k, v in result["memory"].items()
             if k.startswith("peak_mb_")}
    return {"batch1_200_tokens_per_s": result["engine"]["batch1"]["tokens_per_s"] >= 200,
            "batched_1000_tokens_per_s": best_batched >= 1000,
            "rewriter_500_mb": {b: v <= 500 for b, v in peaks.items()}}


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, batches 1 and 8")
    ap.add_argument("--child", choices=("onnxruntime", "ctranslate2", "transformers"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batches", default="1", help=argparse.SUPPRESS)
    ap.add_argument("--new", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--served", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        batches = [int(b) for b in args.batches.split(",")]
        served = [int(b) for b in args.served.split(",") if b]
        result = _child(args.child, args.model, batches, args.new, args.reps, args.threads,
                        served)
        print(json.dumps(result))
    else:
        print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    _main()
