"""The search query as the pipeline takes it: checked once, at the edge, and passed on.

The edges build a :class:`Query` (the HTTP request models in ``plugin.api_models``, the Python
hook, the CLI); ``Pipeline`` takes one as is, and checks a plain string once on the way in
(offline evaluation, tests). Nothing after that checks or re-normalises the query: the intent
model, the rewrite cache, the model and the indexes all read the same ``Query``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rewriters.errors import ConfigError

__all__ = ["MAX_QUERY_CHARS", "Query", "as_query"]

MAX_QUERY_CHARS = 512  # longer queries are refused (they are not search queries)


@dataclass(frozen=True, slots=True)
class Query:
    """A checked search query.

    ``Query(text)`` collapses runs of whitespace to single spaces and strips the ends, and
    refuses what is no search query.

    Attributes:
        text: the words, single-spaced, case kept: what the intent model, the rewriter and the
            indexes read, and what the results echo as ``query``.
        key: ``text`` in lower case: the rewrite cache's key.

    Raises:
        ConfigError: not a string, no words, or over ``MAX_QUERY_CHARS`` characters once
            single-spaced.
    """

    text: str
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.text
        if not isinstance(raw, str):
            raise ConfigError(f"query must be a string, got {type(raw).__name__}")
        text = " ".join(raw.split())
        if not text:
            raise ConfigError("query is empty; pass some search text")
        if len(text) > MAX_QUERY_CHARS:
            raise ConfigError(f"query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "key", text.lower())

    def __str__(self) -> str:
        return self.text


def as_query(query: Query | Any) -> Query:
    """``query`` itself when it is a :class:`Query` (checked already), else checked into one."""
    return query if isinstance(query, Query) else Query(query)
