"""Distilled examples: the JSONL schema, reading with line-numbered rejects, atomic writes."""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .commands import RELEVANCE_BUCKETS, count_words
from .errors import DataError
from .files import file_mode

__all__ = [
    "Example",
    "Reject",
    "LoadResult",
    "read_examples",
    "write_examples",
    "append_examples",
    "split_by_query",
    "validation_reason",
]

log = logging.getLogger(__name__)


class Example(BaseModel):
    """One distilled (query, prompt) pair with the return it achieved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1, description="the user's search query")
    task: Literal["image", "template"] = Field(description="which prompt kind this is")
    prompt: str = Field(min_length=1, description="the teacher's (or model's) prompt")
    teacher: str = Field(min_length=1, description="who made it: 'builtin', 'openai:<model>', 'udrl:round-N'")
    intent: Literal["image", "template", "both"] = Field(
        description="the query's intent label from the query source or the teacher"
    )
    words: int = Field(ge=1, description="achieved length: words in the prompt")
    relevance: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="cosine(query, prompt) from the scorer"
    )
    bucket: int | None = Field(
        default=None, ge=0, lt=RELEVANCE_BUCKETS, description="relevance bucket 0..4"
    )

    @field_validator("query", "prompt")
    @classmethod
    def _one_line(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _words_match_prompt(self) -> "Example":
        if self.words != count_words(self.prompt):
            raise ValueError(
                f"words={self.words} but the prompt has {count_words(self.prompt)} words"
            )
        return self

    @classmethod
    def make(cls, query: str, task: str, prompt: str, teacher: str, intent: str) -> "Example":
        """Build an example, measuring its achieved length."""
        return cls(
            query=query, task=task, prompt=prompt, teacher=teacher, intent=intent,
            words=count_words(prompt),
        )

    def key(self) -> tuple[str, str, str]:
        """Identity used for de-duplication: (normalised query, task, normalised prompt)."""
        return (self.query.lower(), self.task, self.prompt.lower())


@dataclass(frozen=True)
class Reject:
    """A line that could not be used, with where and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadResult:
    """Examples read from a file plus the lines that were rejected."""

    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def validation_reason(e: ValidationError) -> str:
    """``"<loc>: <msg>"`` of the first error (``"record: ..."`` for a whole-record one).

    The index package has the same formatter (``indexers.jsonl.first_error``); the two packages
    never import each other, so each keeps its own.
    """
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "record"
    return f"{where}: {first['msg']}"


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding="utf-8") as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError as e:
        raise DataError(f"data file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data file {path} cannot be read: {e}") from e


def read_examples(path: str | os.PathLike[str]) -> LoadResult:
    """Read and validate a JSONL file of examples.

    Invalid lines are logged with their line number and returned as rejects; they are never
    silently dropped. Blank lines are ignored.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; pass a .jsonl file")
    out = LoadResult()
    for n, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            out.examples.append(Example.model_validate(json.loads(line)))
        except json.JSONDecodeError as e:
            out.rejects.append(Reject(str(path), n, f"not JSON: {e.msg}"))
        except ValidationError as e:
            out.rejects.append(Reject(str(path), n, validation_reason(e)))
    for r in out.rejects:
        log.warning("skipped invalid line %s", r)
    return out


def _dump(ex: Example) -> str:
    return json.dumps(ex.model_dump(), ensure_ascii=False)


def write_examples(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    """Write examples atomically (temp file + rename): a crash never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    n = 0
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for ex in examples:
                fh.write(_dump(ex) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def append_examples(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    """Append examples and flush, so a stopped run keeps everything written so far."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(_dump(ex) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    return n


def split_by_query(
    examples: list[Example], held_out: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split so that no query appears on both sides (held-out queries are unseen)."""
    queries = sorted({e.query.lower() for e in examples})
    rng = random.Random(seed)
    rng.shuffle(queries)
    n_test = int(round(len(queries) * held_out))
    test_q = set(queries[:n_test])
    train = [e for e in examples if e.query.lower() not in test_q]
    test = [e for e in examples if e.query.lower() in test_q]
    return train, test
