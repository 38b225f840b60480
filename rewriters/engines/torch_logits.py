"""The PyTorch engine's logits processor: the shared bans (``engines.bans``) applied to a
torch scores tensor, and strict-length decoding. Used by ``torch_engine.Rewriter``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .bans import Countdown, repeated_trigram_bans, repeated_word_bans

if TYPE_CHECKING:
    import torch

__all__ = ["_CommandLogits", "_ban_repeated_trigrams"]

_MAX_TAIL_PIECES = 6  # sub-word pieces one word may take before it is closed


def _ban_repeated_trigrams(gen: torch.Tensor, scores: torch.Tensor,
                           skip: np.ndarray | None = None) -> None:
    """:func:`repeated_trigram_bans` applied to a torch scores tensor, in place."""
    import torch

    rows, ids = repeated_trigram_bans(gen.cpu().numpy(), skip)
    if rows.size:
        scores[torch.from_numpy(rows), torch.from_numpy(ids)] = float("-inf")


class _CommandLogits:
    """Logits processor enforcing the bans and, optionally, the exact target length."""

    def __init__(self, prompt_len: int, banned: torch.Tensor, word_start: torch.Tensor,
                 end_id: int, targets: torch.Tensor | None, budgets: torch.Tensor | int,
                 markers: torch.Tensor | None = None, countdown: Countdown | None = None,
                 lengths: np.ndarray | None = None, unique_words: bool = False):
        import torch

        # no word twice (models whose training prompts never repeat one): word_start as numpy
        self._opens = word_start.cpu().numpy() if unique_words else None
        self.markers = markers  # (V,) bool: length markers, banned once the target is reached
        self._skip = None if markers is None else markers.cpu().numpy()  # not text: no n-grams
        self.countdown = countdown  # the marker grammar (Countdown), or None
        self.lengths = lengths  # (B,) words asked per input (where the countdown starts)
        self.prompt_len = prompt_len
        # (B,) max new tokens per input: the length must be reached within it; a row past its
        # own budget (the batch runs to the largest) can only end
        self.budgets = torch.as_tensor(budgets).reshape(-1)  # an int: one for every row
        self.banned = banned  # (V,) bool
        self.word_start = word_start  # (V,) bool
        self.end_id = end_id
        self.targets = targets  # (B,) target words per input, or None when not strict

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len
        budgets = self.budgets.repeat_interleave(scores.shape[0] // self.budgets.shape[0])  # (R,)
        scores = self._scores(input_ids, scores, budgets - t)
        spent = budgets <= t
        if spent.any():
            scores[spent] = float("-inf")
            scores[spent, self.end_id] = 0.0
        return scores

    def _scores(self, input_ids: torch.Tensor, scores: torch.Tensor,
                left: torch.Tensor) -> torch.Tensor:
        """The bans; ``left`` (R,): tokens each row may still generate, this one included."""
        import torch

        v = scores.shape[-1]
        scores = scores.masked_fill(self.banned[:v], float("-inf"))
        gen = input_ids[:, self.prompt_len :]  # (R, t) generated so far
        _ban_repeated_trigrams(gen, scores, self._skip)
        if self._opens is not None:
            rows, ids = repeated_word_bans(gen.cpu().numpy(), self._opens)
            if rows.size:
                scores[torch.from_numpy(rows), torch.from_numpy(ids)] = float("-inf")
        if self.countdown is not None:
            lengths = np.repeat(self.lengths, gen.shape[0] // len(self.lengths))  # (R,)
            no_end, no_marker = self.countdown.bans(gen.cpu().numpy(),
                                                    (left <= 1).cpu().numpy(), lengths)
            if self.targets is None:  # strict_length places <|end|> by its own rules
                scores[torch.from_numpy(no_end), self.end_id] = float("-inf")
            ids = torch.from_numpy(self.countdown.ids)
            scores[:, ids] = scores[:, ids].masked_fill(torch.from_numpy(no_marker),
                                                        float("-inf"))
        if self.targets is None:
            if self.countdown is not None:
                stuck = torch.isneginf(scores).all(1)  # every token banned: the grammar yields
                scores[stuck, self.end_id] = 0.0
            return scores
        rows = scores.shape[0]
        targets = self.targets.repeat_interleave(rows // self.targets.shape[0])  # (R,)
        if gen.shape[1] == 0:
            words = torch.zeros(rows, dtype=torch.long)
            since_start = torch.zeros(rows, dtype=torch.long)
        else:
            starts = self.word_start[gen]  # (R, t)
            # The first piece always opens a word; length markers never do (nor are text).
            text = ~self.markers[gen] if self.markers is not None else torch.ones_like(starts)
            first = text.int().argmax(1)  # (R,) first text piece (0 when there is none yet)
            starts[torch.arange(rows), first] |= text[torch.arange(rows), first]
            words = starts.sum(1)
            idx = torch.arange(gen.shape[1]).expand_as(gen)
            last = torch.where(starts, idx, torch.zeros_like(idx)).max(1).values
            since_start = gen.shape[1] - 1 - last
        neg = float("-inf")
        short = words < targets  # (R,)
        scores[short, self.end_id] = neg
        at = words >= targets
        ws = self.word_start[:v]
        scores[at.unsqueeze(1) & ws.unsqueeze(0)] = neg
        if self.markers is not None:
            scores[at.unsqueeze(1) & self.markers[:v].unsqueeze(0)] = neg
        # Start the next word when the current one has grown absurdly long, or when every
        # remaining token is needed for a word (plus one for <|end|>).
        hurry = short & ((since_start >= _MAX_TAIL_PIECES) | (left <= targets - words + 1))
        if hurry.any():
            scores[hurry.unsqueeze(1) & ~ws.unsqueeze(0)] = neg
        force = at & ((since_start >= _MAX_TAIL_PIECES) | (left <= 1))
        if force.any():
            keep = scores[force, self.end_id].clone()
            scores[force] = neg
            scores[force, self.end_id] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
        return scores
