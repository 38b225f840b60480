"""Shared inputs and model builders of the engine tests (not a test module)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rewriters.commands import MARKER_TOKENS, Command
from rewriters.engines import export_engine

# Short and long queries in one batch (CTranslate2 feeds the tails of the longer inputs through
# its decoding loop, ONNX Runtime pads on the right), both tasks, and image prompts long enough
# to be cut to CLIP's window.
ITEMS = [("cozy cabin", Command("template", 7, 4)),
         ("a", Command("image", 12, 2)),
         ("holiday sale poster with bold red letters", Command("template", 20, 1)),
         ("snowy mountain at dawn", Command("image", 40, 0)),
         ("minimal", Command("template", 3, 3))]
ALLOWED_TEXT = " red blue green cabin, snow"  # 6 tokens; <|end|> is always allowed too
SERVING = ("onnx", "ctranslate2")  # the engines compared with PyTorch


def same(a, b) -> bool:
    """Two engines' rewrite_batch results agree: text, length, validity and problems."""
    def rows(outs):
        return [[(r.prompt, r.words, r.valid, r.problems) for r in g] for g in outs]

    return rows(a) == rows(b)


def export_copy(src: Path, dst: Path, quantization: str, output_vocab=None,
                engines=SERVING) -> Path:
    """Copy a model directory (optionally restricted to ``output_vocab``) and export it."""
    shutil.copytree(src, dst)
    if output_vocab is not None:
        (dst / "output_vocab.json").write_text(json.dumps(sorted(output_vocab)))
    for engine in engines:
        export_engine(engine, dst, quantization=quantization)
    return dst


def ranked_model(tokenizer, ranking: list[int], path: Path, output_vocab: list[int],
                 marker_every: int = 0, marker_tail: int = 0):
    """Save at ``path`` a model that ignores its input: fixed logits ranking the ids of
    ``ranking`` first to last, then <|end|> (unless ranked), so greedy prompts are known.

    Returns:
        (the torch model, its saved RewriterMeta)
    """
    import torch

    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir

    model = build_model("scratch", tokenizer, MODEL_PRESETS["tiny"])
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():  # final hidden state = e0, so logits = column 0 of the tied embedding
        ln_f = model.transformer.ln_f
        ln_f.weight.zero_()
        ln_f.bias.zero_()
        ln_f.bias[0] = 1.0
        column = model.transformer.wte.weight[:, 0]
        column.zero_()
        for rank, tok in enumerate([*ranking] + [end_id] * (end_id not in ranking)):
            column[tok] = 8.0 - rank
    meta = save_model_dir(path, model, tokenizer, RewriterMeta(
        version="unsaved", base_model="scratch", model_config={},
        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical", marker_every=marker_every,
        marker_tail=marker_tail), output_vocab=output_vocab)
    return model, meta


def marker_model(src: Path, dst: Path, tokenizer, allowed) -> list[int]:
    """Copy ``src`` to ``dst`` as a model with length markers (every 5, last 4) that may emit
    ``allowed`` and the markers; returns the markers' ids."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "udrl.json").read_text())
    meta["marker_every"], meta["marker_tail"] = 5, 4
    (dst / "udrl.json").write_text(json.dumps(meta))
    marks = tokenizer.convert_tokens_to_ids(list(MARKER_TOKENS))
    (dst / "output_vocab.json").write_text(json.dumps(sorted(set(allowed) | set(marks))))
    return marks
