"""The rewriter's GPT-2 as an ONNX graph whose KV cache is written in place, and its driver.

The graph, per call::

    inputs   input_ids (B, S) int64, position_ids (B, S) int64,
             seqlens_k (B,) int32: each row's token count after this call, minus 1,
             total_sequence_length () int32: the largest token count after this call,
             last_index (B,) int64: the flat position (b * S + s) whose logits are returned,
             past_key_<i>, past_value_<i> (B, H, M, D) float32 for every layer i: the cache
    outputs  logits (B, C) float32 over the C emittable tokens only,
             present_key_<i>, present_value_<i> (B, H, M, D): the same cache, updated

Attention is ONNX Runtime's ``GroupQueryAttention`` (com.microsoft) on GPT-2's packed
q/k/v projection. It writes a call's keys and values into the cache at each row's own length
and attends to each row's first ``seqlens_k + 1`` positions, so a batch is right-padded and its
rows may have different lengths. ``KVDecoder`` binds each present output to its past input's
memory, so a step copies no cache (the first export format concatenated the whole cache onto
a new array every step). ``M`` is the capacity: prompt width plus the token budget.

Only the output rows of tokens that may be emitted are kept (``columns``, increasing token
ids): banned tokens then cost nothing per step and can never be chosen, as with the -inf
output bias of the CTranslate2 export.

The graph is written from the model's weights with ``onnx.helper`` (no tracing) and checked
against transformers' forward pass before it is kept (``check_graph``). Serving needs
onnxruntime and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["KVDecoder", "write_graph", "check_graph"]

_MAX_DIFF = 1e-3  # largest |ONNX - torch| logit accepted for the float32 graph
_GELU = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu": "BiasGelu"}


def _graph(weights: dict[str, np.ndarray], cfg: Any, columns: np.ndarray):
    """The ONNX model (float32) of a GPT-2 with ``weights`` (a state dict as numpy arrays)."""
    from onnx import TensorProto, helper, numpy_helper

    width, heads, n_layer = cfg.n_embd, cfg.n_head, cfg.n_layer
    head_dim = width // heads
    gelu = _GELU.get(cfg.activation_function)
    if (gelu is None or getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            or getattr(cfg, "add_cross_attention", False)):
        raise ModelError(f"the ONNX export supports plain GPT-2 only (activation one of "
                         f"{', '.join(_GELU)}; no per-layer attention scaling, no "
                         f"cross-attention), not activation {cfg.activation_function!r}")
    inits, nodes = [], []

    def init(name: str, array: np.ndarray, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, outputs, domain=domain, **attrs))
        return outputs[0]

    def norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, init(prefix + ".g", weights[prefix + ".weight"]),
                                           init(prefix + ".b", weights[prefix + ".bias"])],
                    [out], axis=-1, epsilon=float(cfg.layer_norm_epsilon))

    def matmul(x: str, prefix: str, out: str) -> str:  # GPT-2's Conv1D: x @ W, W is (in, out)
        return node("MatMul", [x, init(prefix + ".w", weights[prefix + ".weight"])], [out])

    def linear(x: str, prefix: str, out: str) -> str:
        return node("Add", [matmul(x, prefix, out + ".mm"),
                            init(prefix + ".bias", weights[prefix + ".bias"])], [out])

    wte = weights["transformer.wte.weight"]
    h = node("Add", [node("Gather", [init("wte", wte), "input_ids"], ["tok"]),
                     node("Gather", [init("wpe", weights["transformer.wpe.weight"]),
                                     "position_ids"], ["pos"])], ["h"])
    scale = {} if cfg.scale_attn_weights else {"scale": 1.0}  # default: 1 / sqrt(head_dim)
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        qkv = linear(norm(h, p + ".ln_1", f"ln1.{i}"), p + ".attn.c_attn", f"qkv.{i}")
        node("GroupQueryAttention",
             [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k",
              "total_sequence_length"],
             [f"attn.{i}", f"present_key_{i}", f"present_value_{i}"], domain="com.microsoft",
             num_heads=heads, kv_num_heads=heads, **scale)
        h = node("Add", [h, linear(f"attn.{i}", p + ".attn.c_proj", f"proj.{i}")], [f"ha.{i}"])
        up = matmul(norm(h, p + ".ln_2", f"ln2.{i}"), p + ".mlp.c_fc", f"fc.{i}")
        act = node(gelu, [up, init(p + ".mlp.c_fc.bias", weights[p + ".mlp.c_fc.bias"])],
                   [f"act.{i}"], domain="com.microsoft")
        h = node("Add", [h, linear(act, p + ".mlp.c_proj", f"mlp.{i}")], [f"hm.{i}"])
    flat = node("Reshape", [h, init("flat", np.array([-1, width]), np.int64)], ["h_flat"])
    last = node("Gather", [flat, "last_index"], ["h_last"], axis=0)  # (B, E)
    final = norm(last, "transformer.ln_f", "h_final")
    head = weights.get("lm_head.weight", wte)  # the token embedding when tied (GPT-2's way)
    node("MatMul", [final, init("out_w", head[columns].T)], ["logits"])  # (B, C)

    def value(name: str, elem: int, shape: list) -> Any:
        return helper.make_tensor_value_info(name, elem, shape)

    cache = ["batch", heads, "capacity", head_dim]
    inputs = [value("input_ids", TensorProto.INT64, ["batch", "seq"]),
              value("position_ids", TensorProto.INT64, ["batch", "seq"]),
              value("seqlens_k", TensorProto.INT32, ["batch"]),
              value("total_sequence_length", TensorProto.INT32, []),
              value("last_index", TensorProto.INT64, ["batch"])]
    outputs = [value("logits", TensorProto.FLOAT, ["batch", len(columns)])]
    for i in range(n_layer):
        inputs += [value(f"past_{kv}_{i}", TensorProto.FLOAT, cache) for kv in ("key", "value")]
        outputs += [value(f"present_{kv}_{i}", TensorProto.FLOAT, cache)
                    for kv in ("key", "value")]
    graph = helper.make_graph(nodes, "udrl_gpt2", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)  # ORT reads IR <= 13


def write_graph(model, columns: np.ndarray, path: Path) -> None:
    """Write ``model`` (a float32 ``GPT2LMHeadModel``) as the float32 graph to ``path``."""
    import onnx

    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    onnx.save(_graph(weights, model.config, columns), str(path))


class KVDecoder:
    """Runs the graph over one batch: a right-padded prefill, then one token per row a step.

    The cache is one numpy buffer per layer and kind, (B, H, M, D), allocated zeroed (pages
    become resident only where positions are written) and bound as both the past input and
    the present output, so ONNX Runtime writes each step's keys and values into it in place.
    A step's inputs and its logits are buffers bound once per batch shape and refilled in
    place, so a step binds nothing and allocates nothing; ``select`` that only drops rows
    moves the kept rows up inside the same buffers.

    Args:
        session: an ``onnxruntime.InferenceSession`` over a graph written by ``write_graph``.
    """

    def __init__(self, session):
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        past = [i for i in session.get_inputs() if i.name.startswith("past_")]
        self._past = [i.name for i in past]
        _, self.heads, _, self.head_dim = past[0].shape  # (batch, H, M, D)
        self.n_columns = int(session.get_outputs()[0].shape[-1])  # logits per row
        self.cache: list[np.ndarray] = []
        self.lengths = np.zeros(0, np.int64)  # tokens each row holds in the cache
        self._longest = 0  # the largest of lengths
        self._step_io: tuple[np.ndarray, ...] | None = None  # bound step inputs and logits

    def prefill(self, encoded: Sequence[Sequence[int]], pad_id: int, budget: int) -> np.ndarray:
        """Logits (B, C) after each input; the cache gets room for ``budget`` more tokens."""
        lengths = np.array([len(e) for e in encoded], np.int64)
        width = int(lengths.max())
        ids = np.full((len(encoded), width), pad_id, np.int64)
        for i, e in enumerate(encoded):  # right padding: each row continues at its own length
            ids[i, :len(e)] = e
        pos = np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape)
        shape = (len(encoded), int(self.heads), width + budget, int(self.head_dim))
        self._bind([np.zeros(shape, np.float32) for _ in self._past])
        self.lengths = lengths
        self._longest = width  # the longest row's token count
        self._check_room(width)
        io = self._io
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("position_ids", np.ascontiguousarray(pos))
        io.bind_cpu_input("seqlens_k", (lengths - 1).astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(width, np.int32))
        io.bind_cpu_input("last_index", np.arange(len(encoded)) * width + lengths - 1)
        logits = np.empty((len(encoded), self.n_columns), np.float32)
        io.bind_ortvalue_output("logits", self._ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(io)
        self._step_io = None  # the step inputs are bound at the first step
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Logits (B, C) after appending ``tokens`` (B,) token ids, one to each row.

        The array returned is the decoder's own buffer: the next ``step`` overwrites it
        (copy it to keep it).
        """
        if self._step_io is None:
            self._bind_step()
        ids, pos, seqlens, total, logits = self._step_io
        self._check_room(self._longest + 1)
        ids[:, 0] = tokens
        pos[:, 0] = self.lengths
        seqlens[:] = self.lengths
        total[()] = self._longest + 1
        self.session.run_with_iobinding(self._io)
        self.lengths += 1
        self._longest += 1
        return logits

    def select(self, rows: np.ndarray) -> None:
        """Keep only cache rows ``rows`` (indices, repeats allowed), in that order."""
        rows = np.asarray(rows, np.int64)
        used = int(self.lengths.max())  # copy the filled positions only: the rest stays unpaged
        if len(rows) and (np.diff(rows) > 0).all():  # rows dropped only: move up in place
            for i, r in enumerate(rows.tolist()):
                if r != i:
                    for buf in self.cache:
                        buf[i, :, :used] = buf[r, :, :used]
            new = [buf[:len(rows)] for buf in self.cache]  # contiguous: the leading rows
        else:
            new = []
            for buf in self.cache:
                out = np.zeros((len(rows), *buf.shape[1:]), np.float32)
                out[:, :, :used] = buf[rows, :, :used]
                new.append(out)
        self._bind(new)
        self.lengths = self.lengths[rows]
        self._longest = int(self.lengths.max(initial=0))
        self._step_io = None

    def _bind(self, cache: list[np.ndarray]) -> None:
        self.cache = cache
        self._io = io = self.session.io_binding()
        for name, buf in zip(self._past, cache):
            value = self._ort.OrtValue.ortvalue_from_numpy(buf)  # shares buf's memory
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output(name.replace("past_", "present_", 1), value)

    def _bind_step(self) -> None:
        """Bind the one-token step's inputs and logits as buffers refilled in place."""
        rows = len(self.lengths)
        ids = np.zeros((rows, 1), np.int64)
        pos = np.zeros((rows, 1), np.int64)
        seqlens = np.zeros(rows, np.int32)
        total = np.zeros((), np.int32)
        logits = np.empty((rows, self.n_columns), np.float32)
        value = self._ort.OrtValue.ortvalue_from_numpy
        for name, buf in (("input_ids", ids), ("position_ids", pos), ("seqlens_k", seqlens),
                          ("total_sequence_length", total),
                          ("last_index", np.arange(rows, dtype=np.int64))):
            self._io.bind_ortvalue_input(name, value(buf))  # shares buf's memory
        self._io.bind_ortvalue_output("logits", value(logits))
        self._step_io = (ids, pos, seqlens, total, logits)

    def _check_room(self, total: int) -> None:
        if total > self.cache[0].shape[2]:
            raise ModelError(f"the KV cache holds {self.cache[0].shape[2]} positions, "
                             f"a row needs {total}")


def check_graph(model, columns: np.ndarray, path: Path) -> float:
    """Largest |ONNX - torch| logit over a right-padded prefill of two rows and two steps.

    The reference is transformers' own forward pass over each row alone. Raises ModelError
    above 1e-3: the exported graph does not compute the model.
    """
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    pick = torch.as_tensor(columns)[torch.randint(len(columns), (2, 7), generator=g)]
    rows = [pick[0, :5], pick[1, :3]]  # rows of different lengths, then 2 steps each
    steps = pick[:, 5:]
    dec = KVDecoder(sess)
    got = [dec.prefill([r.tolist() for r in rows], int(columns[0]), 2)]
    for s in range(steps.shape[1]):
        got.append(dec.step(steps[:, s].numpy()).copy())  # step reuses its buffer
    diff = 0.0
    cols = torch.as_tensor(columns)
    for b, row in enumerate(rows):
        full = torch.cat([row, steps[b]])[None]
        with torch.no_grad():
            ref = model(input_ids=full).logits[0, :, cols].numpy()  # (T, C)
        for s, logits in enumerate(got):
            diff = max(diff, float(np.abs(logits[b] - ref[len(row) - 1 + s]).max()))
    if not diff <= _MAX_DIFF:  # NaN fails too
        raise ModelError(f"the ONNX graph's logits differ from torch by {diff:.2e} (> "
                         f"{_MAX_DIFF}); the export is wrong, please report it")
    return diff
