"""The ONNX Runtime engine: the rewriter as an int8 or int4 ONNX graph, same API and commands.

A model directory may hold its export next to the weights::

    <model_dir>/onnx/   model.onnx        GPT-2, its KV cache written in place (see ``onnx_graph``)
                        udrl_export.json  model version, quantization, banned-token digest

The decoding loop is this module's own, in numpy, so it enforces the commands exactly as the
PyTorch ``Rewriter``'s logits processor does:

* banned tokens and the output vocabulary: the graph's output layer keeps only the rows of
  tokens that may be emitted (``restrict_output``), so a banned token has no logit at all
  (the export records a digest of the banned set; a model directory whose bans changed
  refuses the export);
* the repeated-3-gram ban: ``bans.repeated_trigram_bans`` over the generated tokens only
  (and over their text, length markers left out);
* the length-marker grammar: ``bans.Countdown`` over the logits columns;
* the repeated-word ban of ``unique_words`` models: ``bans.repeated_word_bans``;
* these three are kept up to date token by token (``step_bans.StepBans``, the same bans
  without re-reading the prefix every step);
* sampling: bans, then temperature, then transformers' nucleus rule, drawn from a numpy
  ``Generator`` that ``seed`` resets, so seeded sampling is reproducible on this engine (its
  random stream is not torch's: the same seed gives other prompts than ``Rewriter``);
* ``strict_length`` and beam search run on the PyTorch ``Rewriter`` (``TorchFallback``): the
  word-count rules and beam bookkeeping are not worth a second implementation.

Greedy output equals the PyTorch engine's for a float32 export (up to float rounding on exact
near-ties); int8 weights (``quantize_dynamic``, QInt8) change the logits slightly, int4 ones
(``MatMulNBits``) a little more. Rows that end are dropped from the batch and its cache. torch
is never imported on the serving path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..model import RewriterMeta
from .bans import restrict_output
from .base import Decoding, RewriterBase
from .export import ExportFormat
from .fallback import TorchFallback, torch_fallback
from .step_bans import BanTables, StepBans

__all__ = [
    "ONNX_DIR",
    "ONNX_QUANTIZATIONS",
    "OnnxRewriter",
    "sample_nucleus",
    "export_onnx",
    "load_onnx_rewriter",
    "onnx_export_problem",
]

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"  # the export's folder inside the model directory
# int8: dynamic QInt8 weights (~4x smaller than float32, fastest under batching);
# int4: 4-bit matrix weights (MatMulNBits), int8 embeddings: fastest at batch 1
ONNX_QUANTIZATIONS = ("int8", "int4", "float32")
INT4_BLOCK = 32  # int4 weights: one float32 scale per 32 input rows of each output column
ONNX_FORMAT = 2  # 2: GroupQueryAttention, cache written in place (1 concatenated it)
MODEL_FILE = "model.onnx"
ONNX_EXPORT = ExportFormat("ONNX", ONNX_DIR, ONNX_FORMAT, (MODEL_FILE,), ONNX_QUANTIZATIONS,
                           "ONNX export")


def onnx_export_problem(model_dir: str | Path, onnx_dir: str | Path | None = None) -> str | None:
    """Why the ONNX export of ``model_dir`` cannot serve it, or None when it can.

    Cheap (reads two JSON files): the export must exist, be complete and have been made from
    the model version in ``udrl.json``. The banned-token digest is checked on load.
    """
    return ONNX_EXPORT.problem(model_dir, onnx_dir)


def export_onnx(model_dir: str | Path, out_dir: str | Path | None = None,
                quantization: str = "int8", force: bool = False) -> Path:
    """Export a rewriter model directory to ONNX for serving on ONNX Runtime.

    The float32 graph is checked against torch (ModelError beyond 1e-3) before it is
    quantized; everything is written to a temporary folder and renamed into place, so a failed
    run never leaves a half export. Needs torch, transformers and onnx (it reads the weights).

    Args:
        model_dir: a directory written by ``save_model_dir``.
        out_dir: where to write; default ``<model_dir>/onnx`` (what ``auto`` looks for).
        quantization: "int8" (dynamic QInt8 weights, the fastest under batching), "int4"
            (4-bit matrix weights in blocks of 32 with int8 compute, int8 embeddings: the
            fastest at batch 1, slower under batching, logits a little further from float32)
            or "float32" (the PyTorch weights as they are).
        force: replace an existing export. Without it an export that is already current (same
            model version, quantization and bans) is kept and returned; any other raises.
    Returns:
        The export folder.
    """
    def write(tmp: Path, p: Path, tokenizer, banned: np.ndarray, info) -> dict[str, Any]:
        diff = _write_model(p, np.flatnonzero(~banned), info["vocab_rows"], tmp, quantization)
        return {"float32_max_diff": diff}

    return ONNX_EXPORT.export(model_dir, out_dir, quantization, force,
                              {"onnxruntime": _ort_version()}, write)


def _write_model(model_dir: Path, columns: np.ndarray, n_rows: int, tmp: Path,
                 quantization: str) -> float:
    """Write ``tmp/model.onnx``; returns the float32 graph's largest logit difference to torch."""
    import torch
    from transformers import GPT2LMHeadModel

    from .onnx_graph import check_graph, write_graph

    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = model.lm_head.weight.shape[0]
    if rows != n_rows:
        raise ModelError(f"output layer has {rows} rows, config.json says {n_rows}")
    fp32 = tmp / (MODEL_FILE if quantization == "float32" else "model.fp32.onnx")
    write_graph(model, columns, fp32)
    diff = check_graph(model, columns, fp32)
    if quantization == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # DefaultTensorType: shape inference cannot type the contrib ops' outputs
        quantize_dynamic(fp32, tmp / MODEL_FILE, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": 1})  # TensorProto.FLOAT
    elif quantization == "int4":
        _quantize_int4(fp32, tmp / MODEL_FILE)
    if quantization != "float32":
        fp32.unlink()
    return diff


def _quantize_int4(src: Path, dst: Path) -> None:
    """4-bit matrix weights (symmetric, blocks of ``INT4_BLOCK``, int8 compute), int8 embeddings."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=INT4_BLOCK, is_symmetric=True,
                             accuracy_level=4)  # 4: activations quantized to int8 per block
    q.process()
    mid = dst.with_name("model.int4.onnx")
    q.model.save_model_to_file(str(mid), use_external_data_format=False)
    quantize_dynamic(mid, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                     extra_options={"DefaultTensorType": 1})  # the embedding tables
    mid.unlink()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def sample_nucleus(scores: np.ndarray, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from softmax(scores) cut to transformers' nucleus (``TopPLogitsWarper``).

    A token is kept when the tokens more probable than it hold less than ``top_p``; the most
    probable one always is. Args: scores (R, V) (already divided by the temperature).
    Returns: (R,) chosen indices.
    """
    z = scores.astype(np.float64)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    rows, v = probs.shape
    if top_p >= 1:
        top, kept = np.broadcast_to(np.arange(v), (rows, v)), probs
    else:
        k = min(v, 64)
        while True:  # the k most probable first: a sort of the whole vocabulary is rarely needed
            top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < v else np.argsort(-probs, 1)
            kept = np.take_along_axis(probs, top, 1)
            order = np.argsort(-kept, axis=1, kind="stable")
            top, kept = np.take_along_axis(top, order, 1), np.take_along_axis(kept, order, 1)
            if k == v or (kept.sum(1) >= top_p).all():
                break
            k = min(v, k * 8)
        before = np.cumsum(kept, 1) - kept  # (R, k) probability of the more probable tokens
        kept = np.where((before < top_p) | (np.arange(kept.shape[1]) == 0), kept, 0.0)
    cum = np.cumsum(kept, 1)
    u = rng.random(rows) * cum[:, -1]
    pick = np.minimum((cum <= u[:, None]).sum(1), kept.shape[1] - 1)  # first cum > u
    return top[np.arange(rows), pick]


class OnnxRewriter(TorchFallback, RewriterBase):
    """Generates prompts on ONNX Runtime with the same API, commands and cleanup as ``Rewriter``.

    Rows of one batch may have different budgets: each stops at its own.

    Args:
        session: an ``onnxruntime.InferenceSession`` over an export made by ``export_onnx``.
        tokenizer, meta, output_vocab: the model directory's (see ``load_model_dir``).
        export: the export's ``udrl_export.json``; its model version and banned-token digest
            must match ``meta`` and the bans computed here.
        batch_size: inputs per ``rewrite_batch`` batch.
        fallback: builds the PyTorch ``Rewriter`` for ``strict_length`` and beam search; None
            refuses them with a ConfigError.
    """

    _loader = "load_onnx_rewriter"
    budget_rule = "per_row"  # right padding: each row has its own positions and cache length

    def __init__(self, session, tokenizer, meta: RewriterMeta,
                 output_vocab: Sequence[int] | None = None, *, export: dict[str, Any],
                 batch_size: int = 32, fallback: Callable[[], RewriterBase] | None = None):
        super().__init__(tokenizer, meta, n_rows=int(export["vocab_rows"]),
                         n_positions=int(export["n_positions"]), batch_size=batch_size)
        self.session = session
        self.export = export
        self.banned = restrict_output(self._always_banned, output_vocab, self.end_id)
        self.columns = np.flatnonzero(~self.banned)  # (C,) token id of each logits column
        self._end_col = int(np.searchsorted(self.columns, self.end_id))
        # length markers among the columns: left out of the repeated-3-gram ban
        self._marker_cols = (np.isin(self.columns, list(self.marker_ids.values()))
                             if self.marker_ids else None)
        self.countdown = self._countdown(self.banned, self.columns)  # over logits columns
        # columns that open a word, for models that never repeat one (meta.unique_words)
        self._opens = (self._word_start[self.columns] if getattr(meta, "unique_words", False)
                       else None)
        self._ban_tables = BanTables(self._marker_cols, self._opens, self.countdown,
                                     self._end_col)
        ONNX_EXPORT.check_loaded(export, meta, self.banned,
                                 session.get_outputs()[0].shape[-1] == len(self.columns))
        self._rng = np.random.default_rng()
        self._init_fallback(fallback)

    @staticmethod
    def fallback_reason(opts: Decoding) -> str | None:
        """Why a request runs on the PyTorch engine, or None when ONNX Runtime serves it."""
        if opts.strict_length:
            return "strict_length's word counting runs in the PyTorch logits processor"
        if opts.decoding == "beam":
            return "beam search runs on transformers"
        return None

    def _seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def decoder(self):
        """A ``KVDecoder`` over this engine's session: one per batch (it holds the cache)."""
        from .onnx_graph import KVDecoder

        return KVDecoder(self.session)

    def _release(self) -> None:
        self.session = None  # ONNX Runtime frees the session with its last reference
        self._release_fallback()

    def _generate(self, plan, opts: Decoding):
        assert not opts.strict_length and opts.decoding != "beam"  # routed to the fallback
        n, decoding = opts.n, opts.decoding
        chunk, encoded, budget = plan.chunk, plan.encoded, plan.budget
        dec = self.decoder()
        # room for each row's own budget after its own input (right padding)
        logits = dec.prefill(encoded, self.end_id,
                             max(len(e) + int(b) for e, b in zip(encoded, plan.budgets))
                             - plan.width)
        if n > 1:  # n draws per item share one prefill
            logits = np.repeat(logits, n, axis=0)
            dec.select(np.repeat(np.arange(len(encoded)), n))
        rows = logits.shape[0]
        # per-row bookkeeping in plain lists: a step's numpy work is the bans' one assignment,
        # the argmax and the decoder's step (step_bans)
        lengths = [c.length for _, c in chunk for _ in range(n)]  # words asked, per row
        left = np.repeat(plan.budgets, n).tolist()  # per live row: steps left in its budget
        alive = list(range(rows))  # which row each live row is
        gen: list[list[int]] = [[] for _ in range(rows)]  # chosen logits columns per row
        bans = StepBans(self._ban_tables, lengths)
        end_col, yields = self._end_col, self.countdown is not None
        for _ in range(budget):
            scores = logits
            bans.apply(scores, [k == 1 for k in left])
            if decoding == "greedy":
                picked = scores.argmax(1).tolist()
                if yields:  # every token banned: the grammar yields to <|end|>
                    for r, col in enumerate(picked):
                        if scores[r, col] == -np.inf:
                            picked[r] = end_col
            else:
                if yields:
                    stuck = np.isneginf(scores).all(1)
                    scores[stuck, end_col] = 0.0
                picked = sample_nucleus(scores / np.float32(opts.temperature), opts.top_p,
                                        self._rng).tolist()
            keep = []
            for r, col in enumerate(picked):
                gen[alive[r]].append(col)
                if col != end_col and left[r] > 1:  # else it ended, or its budget is spent
                    keep.append(r)
            if not keep:
                break
            bans.push(picked)
            if len(keep) < len(picked):  # finished rows leave the batch and its cache
                alive = [alive[r] for r in keep]
                picked = [picked[r] for r in keep]
                left = [left[r] for r in keep]
                dec.select(np.array(keep))
                bans.keep(keep)
            left = [k - 1 for k in left]
            logits = dec.step(self.columns[picked])
        seqs = [self.columns[g].tolist() for g in gen]
        return [[self._finish(seqs[i * n + j], c) for j in range(n)]
                for i, (_, c) in enumerate(chunk)]


def load_onnx_rewriter(path: str | Path, intra_threads: int = 0, batch_size: int = 32,
                       fallback: bool = True) -> OnnxRewriter:
    """Load the ONNX export of a rewriter directory on ONNX Runtime (CPU).

    Args:
        path: the model directory (its export lives in ``<path>/onnx``).
        intra_threads: threads per batch (0: ONNX Runtime's default, one per core).
        batch_size: inputs per batch.
        fallback: load the PyTorch engine on first need (strict_length, beam search).
    """
    import onnxruntime as ort

    if intra_threads < 0:
        raise ConfigError(f"intra_threads {intra_threads} must be >= 0")
    p, meta, tokenizer, output_vocab, out, export = ONNX_EXPORT.open(
        path, "rewriters.engines.onnx_engine.export_onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(out / MODEL_FILE), opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load the ONNX model in {out}: {e}") from e
    return OnnxRewriter(session, tokenizer, meta, output_vocab, export=export,
                        batch_size=batch_size, fallback=torch_fallback(p, fallback,
                                                                       batch_size=batch_size))
