"""The PyTorch engine: generation on transformers, any device (training, evaluation, fallback).

The shared bans and strict-length decoding run in its logits processor
(``torch_logits._CommandLogits``); rows are left-padded, so every row's position grows until
the batch's last step (``budget_rule = "window"``). The serving engines that run without torch
(``onnx_engine``, ``ctranslate2_engine``) route ``strict_length`` and beam search here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..model import RewriterMeta, load_model_dir
from .bans import restrict_output
from .base import Decoding, Rewrite, RewriterBase
from .budget import Plan
from .torch_logits import _CommandLogits

__all__ = ["Rewriter", "load_rewriter"]


class Rewriter(RewriterBase):
    """Generates prompts that obey UDRL commands, on PyTorch (training, fallback, any device).

    Args:
        model, tokenizer, meta, output_vocab: as returned by ``load_model_dir``.
        batch_size: inputs per forward batch in ``rewrite_batch``.
    """

    # left padding: every row's position grows until the batch's last step
    budget_rule = "window"

    def __init__(self, model, tokenizer, meta: RewriterMeta,
                 output_vocab: Sequence[int] | None = None, batch_size: int = 32):
        import torch

        self.model = model.eval()
        super().__init__(tokenizer, meta, n_rows=model.get_output_embeddings().weight.shape[0],
                         n_positions=model.config.n_positions, batch_size=batch_size)
        self.word_start = torch.from_numpy(self._word_start)  # (V,) bool
        self.set_output_vocab(output_vocab)

    def set_output_vocab(self, output_vocab: Sequence[int] | None) -> None:
        """Allow only ``output_vocab`` tokens (and <|end|>) to be emitted; None lifts the limit."""
        import torch

        banned = restrict_output(self._always_banned, output_vocab, self.end_id)
        self.banned = torch.from_numpy(banned)  # (V,) bool
        self.countdown = self._countdown(banned)

    def _seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def _release(self) -> None:
        self.model = None  # the weights go with the last reference

    def _generate(self, plan: Plan, opts: Decoding) -> list[list[Rewrite]]:
        import torch
        from transformers import LogitsProcessorList

        chunk, encoded, width, n = plan.chunk, plan.encoded, plan.width, opts.n
        budgets = torch.from_numpy(plan.budgets)  # (B,) each row's own budget
        ids = torch.full((len(encoded), width), self.end_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # left padding: generation continues on the right
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
        targets = torch.tensor([c.length for _, c in chunk]) if opts.strict_length else None
        markers = None
        if self.marker_ids:
            markers = torch.zeros_like(self.word_start)
            markers[list(self.marker_ids.values())] = True
        proc = _CommandLogits(width, self.banned, self.word_start, self.end_id, targets, budgets,
                              markers, self.countdown, np.array([c.length for _, c in chunk]),
                              getattr(self.meta, "unique_words", False))
        gen_kw = dict(
            max_new_tokens=plan.budget, eos_token_id=self.end_id,
            pad_token_id=self.end_id, logits_processor=LogitsProcessorList([proc]),
            num_return_sequences=n,
        )
        if opts.decoding == "sample":
            gen_kw.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p,
                          top_k=0)
        elif opts.decoding == "beam":
            gen_kw.update(do_sample=False, num_beams=opts.num_beams, early_stopping=True)
        else:
            gen_kw.update(do_sample=False)
        with torch.inference_mode():
            seqs = self.model.generate(input_ids=ids, attention_mask=mask, **gen_kw)[:, width:]
        results = []
        for i, (_, command) in enumerate(chunk):  # a row past its budget was made to end there
            cut = int(plan.budgets[i])
            results.append([self._finish(seqs[i * n + j, :cut].tolist(), command)
                            for j in range(n)])
        return results


def load_rewriter(path: str | Path, device: str = "cpu", batch_size: int = 32) -> Rewriter:
    """Load a trained rewriter directory (see ``rewriters.model``) on PyTorch."""
    model, tokenizer, meta, output_vocab = load_model_dir(path, device=device)
    return Rewriter(model, tokenizer, meta, output_vocab, batch_size=batch_size)
