"""What every generation engine shares: the command handling around one decoding loop.

Decoding always bans command tokens other than ``<|end|>``, whitespace-only tokens, tokens that
would repeat a 3-gram of the prompt (or of its text, length markers left out), and (for models
trained over a restricted output vocabulary) tokens the model never learnt to emit. A model
trained with length markers also keeps to their grammar (``bans.Countdown``): markers count
down, and <|end|> comes only after the ``<|r=1|>`` marker and its word.
``strict_length`` adds a hard constraint: ``<|end|>`` is forbidden before the target word count
and forced once it is reached. Every output is cleaned and validated.

:class:`RewriterBase` holds the command handling that does not depend on the engine: input
encoding, the request checks (made once per call, in :meth:`RewriterBase.rewrite_batch`, into
a :class:`Decoding`), token classes, each input's token budget (``budget``), cleanup and
validation. Engines implement ``_generate`` over one :class:`budget.Plan`; the bans they share
live in ``bans``. This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..commands import (
    CONTEXT_TOKEN,
    END_TOKEN,
    LENGTH_MAX,
    PROMPT_TOKEN,
    Command,
    count_words,
    marker_positions,
    restore_query_slot,
)
from ..errors import ConfigError, ModelError
from ..model import RewriterMeta
from .bans import Countdown, marker_token_ids, token_classes
from .budget import Plan, check_fit, group_items, least_budget
from .clip_count import CLIP_CONTEXT, clip_token_count

__all__ = ["DECODINGS", "Decoding", "Rewrite", "RewriterBase"]

log = logging.getLogger(__name__)

DECODINGS = ("sample", "greedy", "beam")
_MARKER = re.compile(r"<\|r=\d+\|>")  # a length marker in decoded text


@dataclass(frozen=True)
class Decoding:
    """How one ``rewrite_batch`` call decodes, checked once when it is made (:meth:`check`)."""

    n: int = 1  # prompts per item (beam search: the n best beams), >= 1
    strict_length: bool = False  # forbid ending before the target word count, end at it
    decoding: str = "sample"  # one of DECODINGS
    temperature: float = 0.8  # sampling temperature, > 0
    top_p: float = 0.95  # nucleus mass kept when sampling, in (0, 1]
    num_beams: int = 4  # beam width for beam search (at least n)
    seed: int | None = None  # reseed the engine's generator first (reproducible sampling)

    def check(self) -> Decoding:
        """Raise ConfigError naming the bad option; return self with ``num_beams >= n``."""
        if self.decoding not in DECODINGS:
            raise ConfigError(f"unknown decoding {self.decoding!r}; allowed: "
                              f"{', '.join(DECODINGS)}")
        if self.n < 1:
            raise ConfigError(f"n {self.n} must be at least 1")
        if self.decoding == "greedy" and self.n > 1:
            raise ConfigError("greedy decoding gives one prompt per query; use n=1 or sampling")
        if self.decoding == "sample" and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ConfigError(f"temperature {self.temperature} must be > 0 and top_p "
                              f"{self.top_p} in (0, 1]")
        return dataclasses.replace(self, num_beams=max(self.num_beams, self.n))


@dataclass(frozen=True)
class Rewrite:
    """One generated prompt and what it achieved."""

    prompt: str  # cleaned prompt text
    words: int  # achieved length in words
    command: Command  # what was asked for
    valid: bool  # passed validation
    problems: tuple[str, ...] = field(default=())  # why not valid, or what cleaning changed


class RewriterBase:
    """Command handling every generation engine shares; engines implement ``_generate``.

    Encodes ``<command><query><|prompt|>``, checks requests, sizes the token budget, classifies
    tokens (``_always_banned``, ``_word_start``) and cleans and validates every output, so two
    engines given the same tokens return the same ``Rewrite``.

    Args:
        tokenizer, meta: as returned by ``load_model_dir``.
        n_rows: rows of the model's output embedding.
        n_positions: the model's context window in tokens.
        batch_size: inputs per generation batch in ``rewrite_batch``.

    Each input gets its own token budget (``rewriters.budget``); ``budget_rule`` says which
    inputs one batch of this engine may mix.
    """

    budget_rule = "equal"  # one of budget.BUDGET_RULES

    def __init__(self, tokenizer, meta: RewriterMeta, n_rows: int, n_positions: int,
                 batch_size: int = 32):
        self.tokenizer = tokenizer
        self.meta = meta
        self.batch_size = batch_size
        self.n_positions = n_positions
        self.end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
        self.prompt_id = tokenizer.convert_tokens_to_ids(PROMPT_TOKEN)
        # words remaining -> id of the length marker saying so (models trained with markers)
        self.marker_ids = marker_token_ids(tokenizer, meta)
        self._max_markers = len(marker_positions(LENGTH_MAX, meta.marker_every, meta.marker_tail))
        self._always_banned, self._word_start = token_classes(
            tokenizer, meta.command_tokens, self.end_id, n_rows,
            allowed=set(self.marker_ids.values()))
        # query -> grounding context text, for models trained with context (meta.context_items)
        self.context: Callable[[str], str] | None = None
        # the fast tokenizer's Rust tokenizer: the same ids as tokenizer.encode for a fifth of
        # the time (the check every request makes before the cache is read tokenizes its query)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._command_ids: dict[Command, list[int]] = {}
        self._closed = False

    def _encode(self, text: str) -> list[int]:
        """``tokenizer.encode(text)``, through the Rust tokenizer when there is one."""
        if self._backend is not None:
            return self._backend.encode(text).ids
        return self.tokenizer.encode(text)

    def _command_token_ids(self, command: Command) -> list[int]:
        """Token ids of ``command``'s tokens (kept per command: a few hundred at most)."""
        ids = self._command_ids.get(command)
        if ids is None:
            ids = self._command_ids[command] = self.tokenizer.convert_tokens_to_ids(
                command.tokens())
        return ids

    @property
    def version(self) -> str:
        return self.meta.version

    def encode_input(self, query: str, command: Command) -> list[int]:
        """Token ids of ``<command><query><|prompt|>``, the model's input; models trained with
        context read ``<command><query> <|ctx|> <context><|prompt|>``, the context cut at its
        end so that it leaves the prompt its least budget (``budget.least_budget``)."""
        ids = self._command_token_ids(command)
        plain = ids + self._encode(" " + query) + [self.prompt_id]
        if not (getattr(self.meta, "context_items", 0) and self.context is not None):
            return plain
        ctx = " ".join(self.context(query).split())
        if not ctx:
            return plain
        full = ids + self._encode(f" {query} {CONTEXT_TOKEN} {ctx}") + [self.prompt_id]
        # the fewest tokens the prompt is given room for: training kept whole contexts where
        # the example fit, so the context is cut only as far as a prompt needs
        over = len(full) + least_budget(command.length, self._marker_count(command.length)) \
            - self.n_positions
        if over <= 0:
            return full
        if len(full) - 1 - over < len(plain) + 1:  # not even <|ctx|> and one token fit
            return plain
        return full[: len(full) - 1 - over] + [self.prompt_id]

    def _marker_count(self, length: int) -> int:
        """Length markers a ``length``-word prompt of this model carries."""
        if not self.marker_ids:
            return 0
        return len(marker_positions(length, self.meta.marker_every, self.meta.marker_tail))

    def _fit(self, encoded: list[int], query: str, command: Command) -> int:
        """The input's token budget (``budget.check_fit``); raises QueryTooLongError."""
        n_query = len(self._encode(" " + query))
        return check_fit(self.n_positions, len(encoded), n_query, command,
                         self._marker_count(command.length))

    def check_query(self, query: str, command: Command) -> None:
        """Raise QueryTooLongError when ``query`` leaves too little of the model's window for
        a prompt of ``command``'s length (the check the service makes before queueing)."""
        q = " ".join(str(query).split())
        n_query = len(self._encode(" " + q))  # tokenized once: this runs on every request
        check_fit(self.n_positions, len(self._command_token_ids(command)) + n_query + 1, n_query,
                  command, self._marker_count(command.length))

    def rewrite(self, query: str, task: str, length: int, relevance: int = 4, n: int = 1,
                **kw) -> list[Rewrite]:
        """Generate ``n`` prompts for one query; see :meth:`rewrite_batch` for options."""
        return self.rewrite_batch([(query, Command(task, length, relevance))], n=n, **kw)[0]

    def rewrite_batch(
        self,
        items: Sequence[tuple[str, Command]],
        n: int = 1,
        strict_length: bool = False,
        decoding: str = "sample",
        temperature: float = 0.8,
        top_p: float = 0.95,
        num_beams: int = 4,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[list[Rewrite]]:
        """Generate ``n`` prompts per (query, command), batched.

        Args:
            items: (query, command) pairs.
            n: prompts per item (for beam search, the n best beams).
            strict_length: forbid ending before the target length and end at it.
            decoding: "sample", "greedy" or "beam".
            temperature, top_p: sampling settings.
            num_beams: beam width (>= n) for beam search.
            seed: seed the engine's generator for reproducible sampling.
            progress: show a progress bar over the batches.
        Returns:
            One list of ``n`` Rewrites per item, in input order.
        """
        if self._closed:
            raise ModelError("this rewriter engine is closed; load the model again")
        opts = Decoding(n, strict_length, decoding, temperature, top_p, num_beams, seed).check()
        return self.run_checked(self._clean_items(items), opts, progress)

    def run_checked(self, items: list[tuple[str, Command]], opts: Decoding,
                    progress: bool = False) -> list[list[Rewrite]]:
        """:meth:`rewrite_batch` over items and options already checked (no second check)."""
        if opts.seed is not None:
            self._seed(opts.seed)
        from tqdm import tqdm

        encoded = [self.encode_input(q, c) for q, c in items]
        budgets = [self._fit(e, q, c) for e, (q, c) in zip(encoded, items)]
        groups = group_items([self.n_positions - len(e) for e in encoded], budgets,
                             self.batch_size, self.budget_rule)
        out: list[list[Rewrite]] = [[] for _ in items]
        for group in tqdm(groups, desc="rewriting", unit="batch", disable=not progress):
            plan = Plan([items[i] for i in group], [encoded[i] for i in group],
                        np.array([budgets[i] for i in group]))
            for i, row in zip(group, self._generate(plan, opts)):
                out[i] = row
        if getattr(self.meta, "query_first", False):
            out = [[self._with_query(q, r) for r in rs] for (q, _), rs in zip(items, out)]
        return out

    def close(self) -> None:
        """Release the engine's model; later calls raise ModelError. Idempotent."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Drop what the engine holds (its session, generator or weights)."""
        raise NotImplementedError

    @staticmethod
    def _with_query(query: str, r: Rewrite) -> Rewrite:
        if not r.prompt:
            return r
        text = restore_query_slot(query, r.prompt)
        return dataclasses.replace(r, prompt=text, words=count_words(text))

    @staticmethod
    def _clean_items(items) -> list[tuple[str, Command]]:
        """The items with whitespace-normalised queries; ConfigError on an empty one."""
        clean_items = []
        for query, command in items:
            q = " ".join(str(query).split())
            if not q:
                raise ConfigError("query is empty; pass some search text")
            clean_items.append((q, command))
        return clean_items

    def _seed(self, seed: int) -> None:
        raise NotImplementedError

    def _generate(self, plan: Plan, opts: Decoding) -> list[list[Rewrite]]:
        """One list of ``opts.n`` Rewrites per (query, command) of ``plan.chunk``; row ``i``
        stops at its own budget ``plan.budgets[i]``."""
        raise NotImplementedError

    def _countdown(self, banned: np.ndarray, columns: np.ndarray | None = None
                   ) -> Countdown | None:
        """The marker grammar over the emittable markers (see :class:`Countdown`).

        Args:
            banned: (n_rows,) bool, the tokens this engine never emits.
            columns: token id of each scores column, when the scores are not over all ids.
        """
        ids = {k: i for k, i in self.marker_ids.items() if not banned[i]}
        if columns is None:
            return Countdown.for_model(self.meta, ids, len(banned))
        cols = {k: int(np.searchsorted(columns, i)) for k, i in ids.items()}
        return Countdown.for_model(self.meta, cols, len(columns))

    def _clip_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in CLIP's window (engines may swap in a lighter counter)."""
        return clip_token_count(text)

    def _finish(self, ids: Sequence[int], command: Command) -> Rewrite:
        """Cut at <|end|>, decode, clean and validate one generated token sequence."""
        ids = list(ids)
        ended = self.end_id in ids
        if ended:
            ids = ids[: ids.index(self.end_id)]
        raw = self.tokenizer.decode(ids, skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)  # keep " ," a word
        raw = _MARKER.sub("", raw)  # length markers: bookkeeping between words, never text
        problems: list[str] = []
        if any(t in raw for t in self.meta.command_tokens):
            problems.append("leaked command token")
            for t in self.meta.command_tokens:
                raw = raw.replace(t, " ")
        text = " ".join(raw.split())
        if not ended:
            problems.append("no end token within the token budget")
        if not text:
            problems.append("empty output")
        if command.task == "image" and text:
            while self._clip_tokens(text) > CLIP_CONTEXT and count_words(text) > 1:
                text = text.rsplit(" ", 1)[0]
                if "truncated to CLIP's 77-token window" not in problems:
                    problems.append("truncated to CLIP's 77-token window")
        fatal = [p for p in problems if not p.startswith("truncated")]
        return Rewrite(text, count_words(text), command, not fatal, tuple(problems))
