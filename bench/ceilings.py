"""What this machine allows the rewriter's GPT-2 at best, measured in the bench's own run.

* ``memory_read_gb_s`` and the batch-1 ceilings: at batch 1 every new token reads every weight
  once, so memory read bandwidth over the bytes a token reads is the tokens/s no engine with
  those weights can pass (int8 with the whole output layer, int8 and int4 with it cut to a
  rewriter's vocabulary).
* ``int8_matmul``: under batching the weights are read once per step for the whole batch and
  the integer matrix products set the pace. ONNX Runtime's own int8 kernel
  (``DynamicQuantizeMatMul``, what the int8 export runs) times one layer's four matrices and the
  output layer at a batch of rows; ``batch / (layers x layer time + output layer time)`` is the
  tokens/s no int8 engine on these kernels can pass at that batch, before attention, layer
  norms, sampling and the decoding loop take their share. One layer's weights stay in cache
  here, so the ceiling is if anything generous.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ceilings"]

MATMUL_BATCHES = (32, 256)  # rows per matrix product: the bench's largest batch, and far above


def _memory_read_gb_s(threads: int, mib: int = 512, reps: int = 7) -> float:
    """Memory read bandwidth: median time of a float32 sum over ``mib`` MiB on ``threads``."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4)
    for _ in range(2):
        x.sum()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times) / 1e9


def _int8_session(shapes: list[tuple[int, int]], threads: int):
    """An int8 ONNX Runtime session of one matrix product per (in, out) shape, inputs x<i>."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (k, n) in enumerate(shapes):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((k, n)) * 0.02).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["m", k]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["m", n]))
    model = helper.make_model(helper.make_graph(nodes, "matmuls", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(dst), opts, providers=["CPUExecutionProvider"])


def _seconds(sess, shapes: list[tuple[int, int]], rows: int, reps: int = 7) -> float:
    rng = np.random.default_rng(1)
    feeds = {f"x{i}": rng.standard_normal((rows, k)).astype(np.float32)
             for i, (k, _) in enumerate(shapes)}
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _int8_matmul(cfg: Any, vocab: int, output_rows: int, threads: int) -> dict[str, Any]:
    e = cfg.n_embd
    layer = [(e, 3 * e), (e, e), (e, 4 * e), (4 * e, e)]  # q/k/v, attention out, MLP up, down
    heads = {"whole_output_layer": [(e, vocab)], "rewriter_vocab": [(e, output_rows)]}
    macs = sum(k * n for k, n in layer)
    sessions = {"layer": _int8_session(layer, threads),
                **{name: _int8_session(shape, threads) for name, shape in heads.items()}}
    out: dict[str, Any] = {}
    for rows in MATMUL_BATCHES:
        t_layer = _seconds(sessions["layer"], layer, rows)
        row: dict[str, Any] = {"layer_gmac_per_s": round(rows * macs / t_layer / 1e9, 1)}
        for name, shape in heads.items():
            step = cfg.n_layer * t_layer + _seconds(sessions[name], shape, rows)
            row[f"{name}_tokens_per_s"] = round(rows / step, 1)
        out[f"batch{rows}"] = row
    return out


def ceilings(model: dict[str, Any], threads: int, output_rows: int, int4_block: int,
             ) -> dict[str, Any]:
    """Batch-1 (bandwidth) and batched (int8 matrix product) ceilings for ``model``.

    Args:
        model: the bench's model description (preset, parameters_m, vocab).
        output_rows: the rewriter vocabulary's size (the cut output layer's rows).
        int4_block: weights per float32 scale of the int4 export.
    Bytes per token at batch 1: one byte per parameter (int8) except the position embeddings,
    of which a step reads one row; the output layer is the tied token embedding, read whole,
    or, cut to a rewriter's vocabulary, its rows only; int4: half a byte a weight and a float32
    scale a block (cut output layer).
    """
    from rewriters.model import MODEL_PRESETS

    cfg = MODEL_PRESETS[model["preset"]]
    per_token = model["parameters_m"] * 1e6 - cfg.n_positions * cfg.n_embd
    cut = per_token - (model["vocab"] - output_rows) * cfg.n_embd
    int4 = cut * (0.5 + 4 / int4_block)
    gb_s = _memory_read_gb_s(threads)
    return {"memory_read_gb_s": round(gb_s, 1),
            "int8_mb_per_token": round(per_token / 1e6, 1),
            "batch1_tokens_per_s": round(gb_s * 1e9 / per_token, 1),
            "rewriter_vocab_int8_mb_per_token": round(cut / 1e6, 1),
            "rewriter_vocab_batch1_tokens_per_s": round(gb_s * 1e9 / cut, 1),
            "rewriter_vocab_int4_mb_per_token": round(int4 / 1e6, 1),
            "rewriter_vocab_int4_batch1_tokens_per_s": round(gb_s * 1e9 / int4, 1),
            "int8_matmul": _int8_matmul(cfg, model["vocab"], output_rows, threads)}
