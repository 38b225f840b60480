"""The template index interface: what every backend (tantivy embedded, Elasticsearch) serves.

Generated template prompts are searched here. This module holds the interface and the types the
backends share; ``indexers.template_backends`` looks the backends up by name::

    build_template_index("tantivy", records, root="indexes/templates")
    index = open_template_index("tantivy", root="indexes/templates")
    index.search("summer sale poster", k=5, filters={"category": "poster", "tags": ["sale"]})

Both backends score with BM25 over title, tags, category and description, boosted per field
by ``TemplateIndexConfig``; the Elasticsearch one can add a dense-vector (kNN) clause when a
``TextEncoder`` is configured. Filters are exact and case-insensitive: ``category`` must equal
the given value, and every tag listed under ``tags`` must be present.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from .errors import ConfigError

__all__ = [
    "BuildFailure",
    "BuildReport",
    "TemplateHit",
    "TemplateIndex",
    "TemplateIndexConfig",
    "TextEncoder",
    "check_query",
    "normalize_filters",
]

FILTER_KEYS = ("category", "tags")


@dataclass(frozen=True)
class TemplateIndexConfig:
    """Query-time scoring settings, saved with each build and rebuilt from it on open."""

    # Multiplier on the BM25 score of a match in the title; the title names the template, so
    # it dominates. Sane range 1-10.
    title_boost: float = 3.0
    # Multiplier for a match in the tags (curated labels, more precise than prose). Range 1-5.
    tags_boost: float = 2.0
    # Multiplier for a match in the category label. Range 0.5-5.
    category_boost: float = 1.5
    # Multiplier for a match in the free-text description; the baseline. Range 0.1-2.
    description_boost: float = 1.0
    # Multiplier for a match in the logged queries that clicked the template (``--log``):
    # real users' words for it, as precise as curated tags. Range 0.5-5.
    queries_boost: float = 2.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and 0.0 < float(value) <= 100.0):
                raise ConfigError(f"{name}={value!r} is out of range (0, 100]; use e.g. 1.0")

    def field_boosts(self) -> dict[str, float]:
        """Boost per searchable field name: title, tags, category, description."""
        return {
            "title": float(self.title_boost),
            "tags": float(self.tags_boost),
            "category": float(self.category_boost),
            "description": float(self.description_boost),
            "queries": float(self.queries_boost),
        }


@dataclass(frozen=True)
class TemplateHit:
    """One search result, best first in a result list."""

    id: str
    score: float  # backend relevance score; comparable only within one result list
    title: str
    category: str
    tags: tuple[str, ...]
    fields: dict[str, Any] = field(default_factory=dict)  # description, thumbnail, ...


@dataclass(frozen=True)
class BuildFailure:
    """A record the backend refused while loading, with why."""

    id: str
    reason: str
    status: int | None = None  # HTTP status for Elasticsearch, None for tantivy


@dataclass
class BuildReport:
    """What a build did: the version it published and every record it could not load."""

    backend: str
    version: str  # tantivy: version directory name; Elasticsearch: concrete index name
    doc_count: int  # documents searchable in the new version
    checksum: str  # records_checksum of the records that were given
    seconds: float  # wall time of the build including publish
    previous_version: str | None = None  # what was live before, None on a first build
    failures: list[BuildFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record given was loaded."""
        return not self.failures


@runtime_checkable
class TextEncoder(Protocol):
    """A text embedding model, as the Elasticsearch backend's hybrid search needs it."""

    name: str  # identifies the model and weights; stored in the index and checked on open
    dim: int  # embedding width

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts; returns float32 (len(texts), dim)."""
        ...


def check_query(query: str, k: int) -> None:
    """Reject an empty query or k < 1 with ConfigError (shared by both backends)."""
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"query {query!r} is empty; pass some words to search for")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k={k!r} is out of range; pass an integer >= 1")


def normalize_filters(filters: dict[str, Any] | None) -> tuple[str | None, tuple[str, ...]]:
    """Validate filters and return (category or None, tags), casefolded and stripped.

    Raises:
        ConfigError: an unknown filter key, or a value of the wrong type.
    """
    if not filters:
        return None, ()
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ConfigError(f"unknown filter(s) {unknown}; allowed: {', '.join(FILTER_KEYS)}")
    category = filters.get("category")
    if category is not None:
        if not isinstance(category, str) or not category.strip():
            raise ConfigError(f"filter category={category!r} must be a non-empty string")
        category = category.strip().casefold()
    tags = filters.get("tags") or ()
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, (list, tuple, set, frozenset)) or not all(
        isinstance(t, str) and t.strip() for t in tags
    ):
        raise ConfigError(f"filter tags={tags!r} must be a string or a list of non-empty strings")
    return category, tuple(sorted({t.strip().casefold() for t in tags}))


class TemplateIndex(abc.ABC):
    """A searchable, read-only view of one published template index version."""

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """The version being served (directory name or concrete index name)."""

    @abc.abstractmethod
    def search(self, query: str, k: int = 10, filters: dict | None = None) -> list[TemplateHit]:
        """Top-k templates for a free-text query, best first.

        Args:
            query: free text; query-syntax characters are treated as plain text.
            k: how many hits at most (>= 1).
            filters: ``{"category": str, "tags": [str, ...]}``, both optional.

        Raises:
            ConfigError: empty query, k < 1, or an unknown filter.
        """

    def search_batch(
        self, queries: Sequence[str], k: int = 10, filters: dict | None = None
    ) -> list[list[TemplateHit]]:
        """``search`` for many queries; one result list per query, in order."""
        return [self.search(q, k, filters) for q in queries]

    @property
    def has_dense(self) -> bool:
        """True when the version holds a dense (embedding) channel."""
        return False

    @property
    def fusion_params(self) -> dict[str, Any] | None:
        """Fusion weights fitted on the training log at build time, if any."""
        return None

    def logged_queries(self) -> set[str]:
        """Normalised logged queries the build expanded templates with (to warn on leaks)."""
        return set()

    def fetch(self, ids: Sequence[str]) -> dict[str, TemplateHit]:
        """The templates with these ids (unknown ids are left out); a backend that cannot
        look ids up returns {}."""
        return {}

    def documents(self) -> list[TemplateHit]:
        """Every template (for catalogue statistics); a backend that cannot list them
        returns []."""
        return []

    def search_dense_batch(self, queries: Sequence[str], k: int = 10,
                           filters: dict | None = None, vectors: Any = None
                           ) -> list[list[TemplateHit]]:
        """Top-k templates by embedding similarity for each query (``vectors``: precomputed
        query embeddings, optional).

        Raises:
            IndexStoreError: the version has no dense channel.
        """
        from .errors import IndexStoreError

        raise IndexStoreError(f"the {type(self).__name__} has no dense channel; rebuild the "
                              "index with an encoder")

    @abc.abstractmethod
    def count(self) -> int:
        """Number of searchable templates."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files or connections; the index must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

