"""The shared decoding bans kept up to date one token a step, for engines with their own loop.

``engines.bans`` defines the bans as pure functions of everything generated so far; a loop
that calls them every step re-reads the whole prefix (and allocates for it) each time, which
costs as much as the model step of a small rewriter. :class:`StepBans` holds what those
functions derive from the prefix, per row, in plain Python, and updates it from each new
token, so a step costs the same whatever the prefix length and bans with one numpy call:

* repeated 3-grams: per row, the tokens that followed each pair so far (over all tokens, and
  over the text tokens alone when some tokens are not text);
* repeated words (``unique_words`` models): per row, the word openers written;
* the length-marker grammar: per row, the last marker written and whether a word follows the
  latest ``<|r=1|>``; which markers each state bans is read from :class:`BanTables`, built
  once per engine.

The bans it applies are exactly those of ``repeated_trigram_bans``, ``repeated_word_bans`` and
``Countdown.bans`` over the same tokens (tests/rewriters/test_step_bans.py checks them step by
step on random sequences).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..commands import LENGTH_MAX
from .bans import Countdown

__all__ = ["BanTables", "StepBans"]


class BanTables:
    """What the bans read per token, as Python lists: built once per engine.

    Args:
        skip: (C,) bool over the scores' columns, True for columns that are not text (length
            markers); None: none are.
        opens: (C,) bool, True for columns that open a word, for models that never repeat a
            word (``RewriterMeta.unique_words``); None: no word ban.
        countdown: the marker grammar over the columns, or None.
        end_col: the column of ``<|end|>``.
    """

    def __init__(self, skip: np.ndarray | None, opens: np.ndarray | None,
                 countdown: Countdown | None, end_col: int):
        self.skip = skip.tolist() if skip is not None and skip.any() else None
        self.opens = opens.tolist() if opens is not None else None
        self.countdown = countdown
        self.end_col = end_col
        if countdown is not None:
            ids = countdown.ids
            self.value = countdown.value.tolist()  # (C,) words remaining a marker says, else 0
            # marker columns banned as the first marker of an L-word prompt, and after marker v
            self.banned_first = [ids[~countdown.first[n]].tolist()
                                 for n in range(LENGTH_MAX + 1)]
            self.banned_after = [ids[~countdown.allowed[v]].tolist() for v in range(LENGTH_MAX)]


class StepBans:
    """Per-row ban state of one decoding batch, over the scores' columns.

    Args:
        tables: the engine's :class:`BanTables`.
        lengths: words asked of each row (the marker grammar's first marker).
    """

    def __init__(self, tables: BanTables, lengths: Sequence[int]):
        rows = len(lengths)
        self.t = tables
        self._lengths = list(lengths)
        # per row: the tokens so far, the text tokens so far, pair -> tokens that followed,
        # the word openers written
        self._seq: list[list[int]] = [[] for _ in range(rows)]
        self._follow: list[dict[tuple[int, int], list[int]]] = [{} for _ in range(rows)]
        self._text: list[list[int]] = [[] for _ in range(rows)]
        self._text_follow: list[dict[tuple[int, int], list[int]]] = [{} for _ in range(rows)]
        self._words: list[list[int]] = [[] for _ in range(rows)]
        self._last = [0] * rows  # smallest marker value written, 0: none yet
        self._seen_one = [False] * rows  # <|r=1|> written
        self._word_after_one = [False] * rows  # a text token after the latest <|r=1|>

    def apply(self, scores: np.ndarray, last_step: Sequence[bool]) -> None:
        """Set to -inf, in place, every token banned after the tokens pushed so far.

        Args:
            scores: (R, C) this step's scores, one row per live row.
            last_step: per row, this step is the row's last budget step (<|end|> allowed).
        """
        t = self.t
        rows: list[int] = []
        cols: list[int] = []
        for r, seq in enumerate(self._seq):
            n = len(cols)
            if len(seq) >= 2:
                cols += self._follow[r].get((seq[-2], seq[-1]), ())
                text = self._text[r]
                if t.skip is not None and len(text) >= 2:
                    cols += self._text_follow[r].get((text[-2], text[-1]), ())
            cols += self._words[r]
            if t.countdown is not None:
                if not (self._word_after_one[r] or last_step[r]):
                    cols.append(t.end_col)
                last = self._last[r]
                cols += t.banned_after[last] if last else t.banned_first[self._lengths[r]]
            rows += [r] * (len(cols) - n)
        if cols:
            scores[rows, cols] = -np.inf

    def push(self, picked: Sequence[int]) -> None:
        """Append one token (column) to each row."""
        t = self.t
        for r, tok in enumerate(picked):
            _append(self._seq[r], self._follow[r], tok)
            if t.skip is not None and not t.skip[tok]:
                _append(self._text[r], self._text_follow[r], tok)
            if t.opens is not None and t.opens[tok]:
                self._words[r].append(tok)
            if t.countdown is not None:
                v = t.value[tok]
                if v == 0:
                    self._word_after_one[r] = self._seen_one[r]
                else:
                    if not self._last[r] or v < self._last[r]:
                        self._last[r] = v  # markers count down: the last is the smallest
                    if v == 1:
                        self._seen_one[r], self._word_after_one[r] = True, False

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only rows ``rows`` (indices, in that order), as the batch drops ended rows."""
        for name in ("_lengths", "_seq", "_follow", "_text", "_text_follow", "_words", "_last",
                     "_seen_one", "_word_after_one"):
            old = getattr(self, name)
            setattr(self, name, [old[i] for i in rows])


def _append(seq: list[int], follow: dict[tuple[int, int], list[int]], tok: int) -> None:
    """Add ``tok`` to ``seq`` and the 3-gram it closes to ``follow``."""
    seq.append(tok)
    if len(seq) >= 3:
        follow.setdefault((seq[-3], seq[-2]), []).append(tok)
