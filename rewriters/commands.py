"""UDRL commands: the outcome a caller asks the rewriter for, serialised as special tokens.

A training example is ``<|task=image|><|len=12|><|rel=4|> cozy cabin<|prompt|> a cozy ...<|end|>``:
the command tokens state the return the prompt *achieved* (upside-down RL relabelling), so at
inference the caller states the return it *wants* and the model produces it.

Models trained with length markers also write, between words, how many words are still to come:
``<|r=k|>`` whenever k is a multiple of ``every``, and before each of the last ``tail`` words
(every = tail = 3, 12 words: ``a b c<|r=9|> d e f<|r=6|> g h i<|r=3|> j<|r=2|> k<|r=1|> l<|end|>``).
The model then reads the distance to the end from its own last marker instead of counting up to
40 words against the command, and ends after the word that follows ``<|r=1|>``. Markers are
bookkeeping: decoding strips them, and word counts never include them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "TASKS",
    "INTENTS",
    "LENGTH_MIN",
    "LENGTH_MAX",
    "RELEVANCE_BUCKETS",
    "PROMPT_TOKEN",
    "END_TOKEN",
    "CONTEXT_TOKEN",
    "MARKER_TOKENS",
    "marker_token",
    "marker_positions",
    "Command",
    "command_tokens",
    "count_words",
    "IMAGE_LEAD",
    "query_words",
    "restore_query_slot",
    "starts_with_query",
]

TASKS: tuple[str, ...] = ("image", "template")
INTENTS: tuple[str, ...] = ("image", "template", "both")
LENGTH_MIN, LENGTH_MAX = 3, 40  # target length in words a caller may ask for
RELEVANCE_BUCKETS = 5  # buckets 0..4, 4 = most relevant
PROMPT_TOKEN = "<|prompt|>"  # separates the query from the generated prompt
END_TOKEN = "<|end|>"  # ends a generated prompt
# separates the query from its grounding context (catalogue neighbours' titles) in the input of
# models trained with context: ``<command> query <|ctx|> title; title; ...<|prompt|>``
CONTEXT_TOKEN = "<|ctx|>"


def marker_token(remaining: int) -> str:
    """The length marker saying ``remaining`` words are still to come (1..LENGTH_MAX-1)."""
    return f"<|r={remaining}|>"


MARKER_TOKENS: tuple[str, ...] = tuple(marker_token(k) for k in range(1, LENGTH_MAX))


def marker_positions(length: int, every: int, tail: int) -> dict[int, int]:
    """Words written -> words remaining, for every place a ``length``-word prompt has a marker.

    A marker follows word ``i`` (1 <= i < length) when ``length - i`` is a multiple of ``every``
    or at most ``tail``; ``every`` = ``tail`` = 0 means no markers.
    """
    out = {}
    for i in range(1, length):
        r = length - i
        if (every and r % every == 0) or r <= tail:
            out[i] = r
    return out


def count_words(text: str) -> int:
    """Length of a prompt as the project measures it: whitespace-separated words."""
    return len(text.split())


def check_task(task: str) -> str:
    """Return ``task`` if known, else raise ConfigError listing the allowed values."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    return task


@dataclass(frozen=True)
class Command:
    """What the caller wants the rewriter to produce."""

    task: str  # "image" (a CLIP text prompt) or "template" (a template search prompt)
    length: int  # target length in words, LENGTH_MIN..LENGTH_MAX
    relevance: int = RELEVANCE_BUCKETS - 1  # relevance bucket 0..4, 4 = highest

    def __post_init__(self) -> None:
        check_task(self.task)
        if isinstance(self.length, bool) or not isinstance(self.length, int):
            raise ConfigError(f"length {self.length!r} must be a whole number of words")
        if not LENGTH_MIN <= self.length <= LENGTH_MAX:
            raise ConfigError(
                f"length {self.length} is out of range {LENGTH_MIN}-{LENGTH_MAX} words"
            )
        if isinstance(self.relevance, bool) or not isinstance(self.relevance, int):
            raise ConfigError(f"relevance {self.relevance!r} must be a bucket number")
        if not 0 <= self.relevance < RELEVANCE_BUCKETS:
            raise ConfigError(
                f"relevance {self.relevance} is out of range 0-{RELEVANCE_BUCKETS - 1}"
            )

    def tokens(self) -> list[str]:
        """The three command tokens, in model order."""
        return [
            f"<|task={self.task}|>",
            f"<|len={self.length}|>",
            f"<|rel={self.relevance}|>",
        ]

    def prefix(self) -> str:
        """The command tokens as one string."""
        return "".join(self.tokens())


def command_tokens() -> list[str]:
    """Every special token the rewriter adds to the GPT-2 tokenizer, in a fixed order."""
    toks = [f"<|task={t}|>" for t in TASKS]
    toks += [f"<|len={n}|>" for n in range(LENGTH_MIN, LENGTH_MAX + 1)]
    toks += [f"<|rel={b}|>" for b in range(RELEVANCE_BUCKETS)]
    return toks + [PROMPT_TOKEN, END_TOKEN, *MARKER_TOKENS, CONTEXT_TOKEN]


# Image prompts of the catalogue teacher open like a CLIP caption when there is room for it.
IMAGE_LEAD: tuple[str, ...] = ("a", "photo", "of")


def query_words(query: str) -> list[str]:
    """The query's whitespace words, casefolded, edge punctuation stripped, first copy kept."""
    words = (w.strip(string.punctuation) for w in query.casefold().split())
    return list(dict.fromkeys(w for w in words if w))


def _lead(words: list[str]) -> int:
    return len(IMAGE_LEAD) if tuple(w.casefold() for w in words[:3]) == IMAGE_LEAD else 0


def starts_with_query(query: str, prompt: str) -> bool:
    """True when ``prompt`` opens with the query's words (after an image lead), as the
    catalogue teacher writes every prompt."""
    words = prompt.split()
    lead = _lead(words)
    q = query_words(query)[: len(words) - lead]
    got = [w.strip(string.punctuation).casefold() for w in words[lead:lead + len(q)]]
    return bool(q) and got == q


def restore_query_slot(query: str, prompt: str) -> str:
    """Put the query's own words in the slot where a query-first model writes them.

    A model distilled from query-first prompts writes its copy of the query first, then its
    expansion. A query word whose tokens it never saw in training cannot be copied ("puppy"
    came out as "able"), so the copy is replaced by the query's words; the expansion and the
    word count stay as generated.
    """
    words = prompt.split()
    lead = _lead(words)
    q = query_words(query)[: max(0, len(words) - lead)]
    return " ".join(words[:lead] + q + words[lead + len(q):])
