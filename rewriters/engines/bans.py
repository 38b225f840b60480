"""Decoding bans every engine applies the same way: the token classes never emitted, repeated
3-grams and the length-marker grammar.

Pure numpy over token ids (or over the logits columns of an engine whose output layer keeps
only the emittable tokens), so the PyTorch logits processor, the ONNX Runtime decoding loop
and the CTranslate2 after-the-fact check share one definition. The last two functions find
where a CTranslate2 row broke or overshot a ban PyTorch applies (its loop cannot express
them), so that engine redraws the row from that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..commands import LENGTH_MAX, MARKER_TOKENS
from ..errors import ModelError

if TYPE_CHECKING:
    from ..model import RewriterMeta

__all__ = ["NGRAM_BAN", "repeated_trigram_bans", "repeated_word_bans", "Countdown",
           "token_classes", "marker_token_ids", "restrict_output", "first_missed_ban",
           "first_extra_ban"]

NGRAM_BAN = 3  # a generated prompt never repeats one of its own n-grams of this size


def repeated_trigram_bans(gen: np.ndarray, skip: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ids): the next tokens that would repeat a generated 3-gram.

    Small models fall into loops ("holiday sale holiday sale ..."); HF's no_repeat_ngram_size
    would also look at the input and so forbid copying a 3-word query into the prompt. A token
    is banned when it repeats a 3-gram of the generated tokens, or, where ``skip`` flags
    tokens that are not text (length markers), a 3-gram of the text alone: a marker written
    inside the second copy of a phrase must not hide the repeat. Every engine with its own
    decoding loop calls this one function.

    Args:
        gen: (R, t) ids generated so far (the query is not part of it).
        skip: (V,) bool over ids, True for tokens that are not text; None: no such tokens.
    Returns:
        Two equally long int64 arrays: row index and banned id of each ban (may repeat).
    """
    rows_out = [np.zeros(0, np.int64)]
    ids_out = [np.zeros(0, np.int64)]
    if gen.shape[1] >= NGRAM_BAN:  # the pair/triple logic is written for NGRAM_BAN == 3
        match = (gen[:, :-2] == gen[:, -2:-1]) & (gen[:, 1:-1] == gen[:, -1:])  # (R, t-2)
        rows, cols = np.nonzero(match)
        rows_out.append(rows.astype(np.int64))
        ids_out.append(gen[:, 2:][rows, cols].astype(np.int64))
    if skip is not None and gen.size and skip[gen].any():
        for r, seq in enumerate(gen):
            text = seq[~skip[seq]]
            if text.size < NGRAM_BAN:
                continue
            hit = text[2:][(text[:-2] == text[-2]) & (text[1:-1] == text[-1])]
            rows_out.append(np.full(hit.size, r, np.int64))
            ids_out.append(hit.astype(np.int64))
    return np.concatenate(rows_out), np.concatenate(ids_out)


def repeated_word_bans(gen: np.ndarray, word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, ids): tokens that would open a word a row has already opened.

    For models whose training prompts never repeat a word (``RewriterMeta.unique_words``, the
    catalogue teacher's): a small student otherwise loops on the catalogue words it copies
    ("sofa sofa sofa"). A word is known by its opening token, so two words sharing their first
    piece count as one.

    Args:
        gen: (R, t) ids generated so far, in the id space of ``word_start``.
        word_start: (V,) bool, True for tokens that open a word.
    """
    if not gen.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.nonzero(word_start[gen])
    return rows.astype(np.int64), gen[rows, cols].astype(np.int64)


class Countdown:
    """The output grammar of a model trained with length markers: how its countdown may go.

    Every training prompt of L words counts down: its first marker is the scheme's largest
    below L, the others follow in the scheme's order (for every 3, tail 3 and L = 12:
    <|r=9|> <|r=6|> <|r=3|> <|r=2|> <|r=1|>), and it ends ``<|r=1|> last-word <|end|>``.
    Decoding keeps to that grammar: the first marker is the one the command's length implies,
    each later one the scheme's next, and <|end|> comes only once <|r=1|> and a token after it
    are written (or at the last step of the token budget, or when every other token is banned;
    ``strict_length`` places <|end|> by its own rules). Nothing here counts words: where the
    markers go is the model's choice, so a model that miscounts between them still ends off
    target; what the rules stop is a countdown that starts at the wrong number, jumps ahead,
    or ends while it says words remain.

    Args:
        marker_ids: words remaining -> id of its marker, in the id space of the scores.
        n_ids: width of the scores.
        every, tail: the model's marker scheme (``RewriterMeta.marker_every``/``marker_tail``).
    """

    def __init__(self, marker_ids: dict[int, int], n_ids: int, every: int, tail: int):
        self.value = np.zeros(n_ids, dtype=np.int64)  # (V,) words remaining, 0 for non-markers
        for k, i in marker_ids.items():
            self.value[i] = k
        self.ids = np.flatnonzero(self.value)  # (M,) marker ids, ascending
        self.values = self.value[self.ids]  # (M,)
        scheme = [k for k in range(1, LENGTH_MAX) if (every and k % every == 0) or k <= tail]
        # allowed[v]: markers that may follow the marker v (v = 0: no marker written yet)
        self.allowed = np.zeros((LENGTH_MAX, len(self.ids)), dtype=bool)
        self.allowed[0] = np.isin(self.values, scheme)
        for prev, nxt in zip(scheme[1:], scheme):
            self.allowed[prev] = self.values == nxt
        # first[L]: the markers a prompt of L words may start with (its scheme's largest below L)
        self.first = np.repeat(self.allowed[:1], LENGTH_MAX + 1, axis=0)
        for length in range(2, LENGTH_MAX + 1):
            start = self.values == max(k for k in scheme if k < length)
            if start.any():  # else (not emittable) any marker of the scheme, as without a length
                self.first[length] = start

    @classmethod
    def for_model(cls, meta: RewriterMeta, marker_ids: dict[int, int], n_ids: int
                  ) -> Countdown | None:
        """The grammar of a model whose every prompt ends with <|r=1|>, else None.

        ``marker_ids`` holds the markers the model may emit; without <|r=1|> among them no
        prompt could end by the grammar, so there is none.
        """
        if 1 in marker_ids and (meta.marker_tail >= 1 or meta.marker_every == 1):
            return cls(marker_ids, n_ids, meta.marker_every, meta.marker_tail)
        return None

    def allowed_markers(self, last: int, length: int) -> np.ndarray:
        """(M,) bool: the markers that may follow marker ``last`` (0: none yet) at ``length``."""
        return self.first[length] if last == 0 else self.allowed[last]

    def bans(self, gen: np.ndarray, last_step: bool | np.ndarray, lengths: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """(end banned (R,), marker banned (R, M) over ``self.ids``) after ``gen`` (R, t) for
        prompts of ``lengths`` (R,) words; ``last_step``: this is the row's last budget step
        (one flag, or (R,) when rows have budgets of their own)."""
        t = gen.shape[1]
        vals = self.value[gen]  # (R, t)
        idx = np.broadcast_to(np.arange(t), gen.shape)
        is_marker = vals > 0
        # the last marker written is the smallest, markers only counting down (0: none yet)
        last = np.where(is_marker, vals, LENGTH_MAX).min(1, initial=LENGTH_MAX) % LENGTH_MAX
        one_pos = np.where(vals == 1, idx, -1).max(1, initial=-1)
        text_pos = np.where(~is_marker, idx, -1).max(1, initial=-1)
        may_end = ((one_pos >= 0) & (text_pos > one_pos)) | last_step
        allowed = np.where((last == 0)[:, None], self.first[np.asarray(lengths)],
                           self.allowed[last])
        return ~may_end, ~allowed


# -- which tokens a model may emit ----------------------------------------------------------------

def token_classes(tokenizer, command_tokens: Sequence[str], end_id: int,
                  n_rows: int, allowed: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Classify every output row once: which tokens may never be emitted, which open a word.

    Args:
        tokenizer: the model's tokenizer.
        command_tokens: the model's command vocabulary (``RewriterMeta.command_tokens``).
        end_id: id of ``<|end|>``, the one special token that may be emitted.
        n_rows: rows of the output embedding (>= ``len(tokenizer)``; extra rows are padding).
        allowed: special tokens the model may emit besides <|end|> (its length markers).
    Returns:
        (banned, word_start): two (n_rows,) bool arrays.
    """
    # a model saved before a special token was added to the project has fewer rows than the
    # tokenizer that loads it: those tokens do not exist for it
    vocab = min(len(tokenizer), n_rows)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    word_start = np.zeros(n_rows, dtype=bool)
    banned = np.zeros(n_rows, dtype=bool)
    special = set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids(command_tokens))
    for i, text in enumerate(texts):
        if i in special:
            banned[i] = i != end_id and i not in allowed
        elif not text.strip() or any(c.isspace() for c in text.strip()) or "\n" in text:
            banned[i] = True  # whitespace runs and newlines: prompts are one line
        else:
            word_start[i] = text[0].isspace()
    banned[vocab:] = True  # padding rows of the embedding
    return banned, word_start


def marker_token_ids(tokenizer, meta: RewriterMeta) -> dict[int, int]:
    """Words remaining -> id of the length marker saying so; {} for models without markers."""
    if not (meta.marker_every or meta.marker_tail):
        return {}
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in enumerate(MARKER_TOKENS, start=1)}
    if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids.values()):
        raise ModelError("the model was trained with length markers but its tokenizer lacks "
                         "them; the model directory is damaged")
    return ids


def restrict_output(always_banned: np.ndarray, output_vocab: Sequence[int] | None,
                    end_id: int) -> np.ndarray:
    """``always_banned`` plus every token outside ``output_vocab`` (<|end|> stays allowed).

    None lifts the restriction. Returns a new (n_rows,) bool array.
    """
    banned = always_banned.copy()
    if output_vocab is not None:
        allowed = np.zeros_like(banned)
        allowed[np.asarray(list(output_vocab), dtype=np.int64)] = True
        allowed[end_id] = True
        banned |= ~allowed
    return banned


def first_missed_ban(seq: Sequence[int], skip: np.ndarray, countdown: Countdown | None,
                      end_id: int, budget: int, emittable: frozenset[int], length: int,
                      opens: np.ndarray | None = None) -> tuple[int, list[int] | None] | None:
    """First step of ``seq`` whose token ``Rewriter`` bans and CTranslate2 did not, with the ids
    ``Rewriter`` bans there that CTranslate2's own 3-gram ban does not (None: it bans every
    emittable token, so ``Rewriter`` ends the prompt there).

    Two bans of a model with length markers are beyond CTranslate2: the 3-gram ban on the text
    with the markers left out (its ban counts them, so "drop <|r=9|> shadows" after "drop
    shadows" passes), and the marker grammar (``Countdown``); with ``opens`` (models that
    never repeat a word) also a word opened twice (``repeated_word_bans``). One pass over
    ``seq``.
    """
    opened: set[int] = set()  # word-opening tokens written so far
    follows: dict[tuple[int, int], set[int]] = {}  # text pair -> what followed it
    raw_follows: dict[tuple[int, int], set[int]] = {}  # the same over every token
    text: list[int] = []
    last, one_at, may_end = 0, False, False  # last marker (0: none); <|r=1|> written; its word
    for t, tok in enumerate(seq):
        banned: set[int] = set(opened)
        if len(text) >= 2:
            banned |= follows.get((text[-2], text[-1]), set())
        if countdown is not None:
            if not may_end and t + 1 < budget:
                banned.add(end_id)
            banned.update(int(i) for i in countdown.ids[~countdown.allowed_markers(last, length)])
            raw = raw_follows.get(tuple(seq[t - 2:t]), set()) if t >= 2 else set()
            if emittable <= banned | raw:
                return (t, None) if tok != end_id else None
        if tok in banned:
            return t, sorted(banned)
        if opens is not None and opens[tok]:
            opened.add(tok)
        if countdown is not None and countdown.value[tok]:
            last = int(countdown.value[tok])
            one_at = one_at or last == 1
        elif tok != end_id:
            may_end = may_end or one_at
        if not skip[tok]:
            if len(text) >= 2:
                follows.setdefault((text[-2], text[-1]), set()).add(tok)
            text.append(tok)
        if t >= 2:
            raw_follows.setdefault((seq[t - 2], seq[t - 1]), set()).add(tok)
    return None


def first_extra_ban(tail: Sequence[int], seq: Sequence[int], banned: np.ndarray) -> int | None:
    """First step of ``seq`` where CTranslate2's 3-gram ban forbade a token PyTorch allows.

    ``tail`` is what the loop saw before the generated ``seq``: the input past the batch's
    shortest one, ending with <|prompt|>. At step t (choosing ``seq[t]``) the loop bans every
    token that followed the last two tokens anywhere before; only pairs inside the query tail
    differ from PyTorch's rule, and only when what followed is a query token that may be emitted.
    """
    follows = {(tail[j], tail[j + 1]) for j in range(len(tail) - 3) if not banned[tail[j + 2]]}
    if follows:
        for t in range(2, len(seq)):
            if (seq[t - 2], seq[t - 1]) in follows:
                return t
    return None
