"""The rewriter's GPT-2 as an ONNX graph with an explicit KV cache (export side; needs torch).

The graph, per call::

    inputs   input_ids (B, S) int64, position_ids (B, S) int64,
             attention_mask (B, P + S) int64 (0 on left padding),
             past_key_<i>, past_value_<i> (B, H, P, D) float32 for every layer i (P may be 0)
    outputs  logits (B, C) float32 of the last position, over the C emittable tokens only,
             present_key_<i>, present_value_<i> (B, H, P + S, D)

Only the output rows of tokens that may be emitted are kept (``columns``, increasing token
ids): banned tokens then cost nothing per step and can never be chosen, as with the -inf
output bias of the CTranslate2 export. Position ids follow the attention mask as
transformers' ``generate`` makes them (``cumsum(mask) - 1``, 0 on padding), so left-padded
batches give the same logits as unpadded inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = ["OPSET", "input_names", "output_names", "write_graph", "check_graph"]

OPSET = 17
_MAX_DIFF = 1e-3  # largest |ONNX - torch| logit accepted for the float32 graph


def input_names(n_layer: int) -> list[str]:
    past = [f"past_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "position_ids", "attention_mask", *past]


def output_names(n_layer: int) -> list[str]:
    return ["logits", *[f"present_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]]


def _graph_module(model, columns: np.ndarray):
    """A torch module computing the graph above from a ``GPT2LMHeadModel``'s own layers."""
    import torch

    cfg = model.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(
            cfg, "add_cross_attention", False):
        raise ModelError("the ONNX export supports plain GPT-2 attention only "
                         "(scale_attn_by_inverse_layer_idx and cross-attention are off)")

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = model.transformer
            self.n_head, self.width = cfg.n_head, cfg.n_embd
            self.head_dim = cfg.n_embd // cfg.n_head
            self.scale = self.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
            rows = model.lm_head.weight[torch.as_tensor(columns, dtype=torch.long)]  # (C, E)
            self.register_buffer("out_w", rows.detach().T.contiguous())  # (E, C)

        def _heads(self, x, b: int, s: int):
            return x.view(b, s, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)

        def forward(self, input_ids, position_ids, attention_mask, *past):
            b, s = input_ids.shape
            total = attention_mask.shape[1]  # P + S
            h = self.t.wte(input_ids) + self.t.wpe(position_ids)  # (B, S, E)
            q_pos = torch.arange(s) + (total - s)
            causal = torch.arange(total)[None, :] <= q_pos[:, None]  # (S, P+S)
            keep = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, S, P+S)
            presents = []
            for i, blk in enumerate(self.t.h):
                q, k, v = blk.attn.c_attn(blk.ln_1(h)).split(self.width, dim=2)
                k = torch.cat([past[2 * i], self._heads(k, b, s)], dim=2)  # (B, H, P+S, D)
                v = torch.cat([past[2 * i + 1], self._heads(v, b, s)], dim=2)
                presents += [k, v]
                scores = self._heads(q, b, s) @ k.transpose(-1, -2) * self.scale
                # finfo.min, not -inf: a padding query that sees no key gets a uniform row, not NaN
                scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
                a = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, self.width)
                h = h + blk.attn.c_proj(a)
                h = h + blk.mlp(blk.ln_2(h))
            last = self.t.ln_f(h[:, -1])  # (B, E)
            return (last @ self.out_w, *presents)

    return Graph().eval()


def _example(model, columns: np.ndarray, past: int):
    """A left-padded (2, 3) input after ``past`` cached positions, as torch tensors."""
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    pick = torch.as_tensor(columns)[torch.randint(len(columns), (2, 3 + past), generator=g)]
    mask = torch.ones_like(pick)
    mask[0, :2] = 0  # row 0 starts with two padding positions
    pos = (mask.cumsum(1) - 1).masked_fill(mask == 0, 0)
    empty = torch.zeros(2, cfg.n_head, 0, cfg.n_embd // cfg.n_head)
    return pick, pos, mask, empty


def write_graph(model, columns: np.ndarray, path: Path) -> None:
    """Export ``model`` (a float32 ``GPT2LMHeadModel``) as the float32 graph to ``path``."""
    import torch

    graph = _graph_module(model, columns)
    n_layer = model.config.n_layer
    ids, pos, mask, empty = _example(model, columns, past=2)
    with torch.no_grad():  # a prefill of 2 positions gives a non-empty cache to trace with
        _, *past = graph(ids[:, :2], pos[:, :2], mask[:, :2], *[empty] * (2 * n_layer))
    args = (ids[:, 2:], pos[:, 2:], mask, *past)
    names_in, names_out = input_names(n_layer), output_names(n_layer)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch"}}
    axes.update({n: {0: "batch", 2: "past"} for n in names_in[3:]})
    axes.update({n: {0: "batch", 2: "total"} for n in names_out[1:]})
    with torch.no_grad():
        torch.onnx.export(graph, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def check_graph(model, columns: np.ndarray, path: Path) -> float:
    """Largest |ONNX - torch| logit over a left-padded prefill and one cached step.

    Raises ModelError above 1e-3: the exported graph does not compute the model.
    """
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n_layer = model.config.n_layer
    ids, pos, mask, empty = _example(model, columns, past=0)
    nxt = torch.as_tensor(columns)[:2, None]  # (2, 1) one more token per row
    full_ids, full_mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    full_pos = (full_mask.cumsum(1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():  # the reference: transformers' own forward over the whole sequence
        ref = model(input_ids=full_ids, attention_mask=full_mask, position_ids=full_pos).logits
    ref = ref[:, :, torch.as_tensor(columns)].numpy()  # (2, 4, C)
    feeds = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy()}
    feeds.update({n: empty.numpy() for n in input_names(n_layer)[3:]})
    logits, *past = sess.run(None, feeds)
    diff = float(np.abs(logits - ref[:, 2]).max())
    feeds = {"input_ids": nxt.numpy(), "position_ids": full_pos[:, -1:].numpy(),
             "attention_mask": full_mask.numpy(), **dict(zip(input_names(n_layer)[3:], past))}
    logits = sess.run(None, feeds)[0]
    diff = max(diff, float(np.abs(logits - ref[:, 3]).max()))
    if not diff <= _MAX_DIFF:  # NaN fails too
        raise ModelError(f"the ONNX graph's logits differ from torch by {diff:.2e} (> "
                         f"{_MAX_DIFF}); the export is wrong, please report it")
    return diff
