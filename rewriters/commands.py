"""UDRL commands: the outcome a caller asks the rewriter for, serialised as special tokens.

A training example is ``<|task=image|><|len=12|><|rel=4|> cozy cabin<|prompt|> a cozy ...<|end|>``:
the command tokens state the return the prompt *achieved* (upside-down RL relabelling), so at
inference the caller states the return it *wants* and the model produces it.

Models trained with progress tokens also write ``<|w=5|>``, ``<|w=10|>`` … after every fifth word
of the prompt (``... cozy cabin in the snow<|w=5|> warm ...``): the model then only has to count
the few words since its last progress token, instead of up to 40, to stop at the asked length.
They are bookkeeping: decoding strips them, and word counts never include them.
"""

from __future__ import annotations

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
    "PROGRESS_EVERY",
    "PROGRESS_TOKENS",
    "progress_token",
    "Command",
    "command_tokens",
    "count_words",
]

TASKS: tuple[str, ...] = ("image", "template")
INTENTS: tuple[str, ...] = ("image", "template", "both")
LENGTH_MIN, LENGTH_MAX = 3, 40  # target length in words a caller may ask for
RELEVANCE_BUCKETS = 5  # buckets 0..4, 4 = most relevant
PROMPT_TOKEN = "<|prompt|>"  # separates the query from the generated prompt
END_TOKEN = "<|end|>"  # ends a generated prompt
PROGRESS_EVERY = 5  # a progress token follows every 5th word of a prompt (models that use them)


def progress_token(words: int) -> str:
    """The token a prompt carries after its ``words``-th word (a multiple of PROGRESS_EVERY)."""
    return f"<|w={words}|>"


PROGRESS_TOKENS: tuple[str, ...] = tuple(
    progress_token(k) for k in range(PROGRESS_EVERY, LENGTH_MAX, PROGRESS_EVERY))


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
    return toks + [PROMPT_TOKEN, END_TOKEN, *PROGRESS_TOKENS]
