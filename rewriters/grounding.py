"""Grounding: catalogue items that tell a teacher what a query finds in *this* catalogue.

A :class:`Grounder` answers a query with the catalogue items that ground it — items clicked for
the query in the search log, items clicked for similar logged queries, or the nearest catalogue
items — strongest first. Teachers use them to write prompts in the catalogue's own vocabulary.
``rewriters`` only defines the protocol; the implementation backed by the real search index and
log lives with the caller (``plugin``), and :class:`StaticGrounder` serves precomputed grounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .commands import check_task
from .errors import ConfigError, TeacherError

__all__ = ["SOURCES", "GroundItem", "Grounder", "StaticGrounder", "ground_query",
           "normalise_query"]

SOURCES: tuple[str, ...] = ("click", "similar-query", "neighbour")


@dataclass(frozen=True)
class GroundItem:
    """One catalogue item grounding a query."""

    id: str  # catalogue item id, non-empty
    title: str  # the item's title as the catalogue shows it
    tags: tuple[str, ...] = ()  # the item's tags (a list is accepted and stored as a tuple)
    category: str = ""  # the item's category, "" when the catalogue has none
    description: str = ""  # free text; for images, the caption
    weight: float = 1.0  # how strongly the item grounds the query, > 0 (higher = closer)
    # "click": clicked for this very query in the log; "similar-query": clicked for a similar
    # logged query; "neighbour": nearest catalogue item to the query
    source: str = "neighbour"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"item id {self.id!r} must be a non-empty string")
        if isinstance(self.tags, str):
            raise ConfigError(f"tags {self.tags!r} of item {self.id!r} must be a list of "
                              "strings, not one string")
        object.__setattr__(self, "tags", tuple(self.tags))
        texts = {"title": self.title, "category": self.category, "description": self.description}
        texts.update({f"tags[{i}]": t for i, t in enumerate(self.tags)})
        for name, value in texts.items():
            if not isinstance(value, str):
                raise ConfigError(f"{name} {value!r} of item {self.id!r} must be a string")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or w == float("inf"):
            raise ConfigError(f"weight {w!r} of item {self.id!r} must be a finite number > 0")
        if self.source not in SOURCES:
            raise ConfigError(f"unknown source {self.source!r} of item {self.id!r}; "
                              f"allowed: {', '.join(SOURCES)}")


class Grounder(Protocol):
    """Anything that finds the catalogue items grounding a query."""

    def ground(self, query: str, task: str, k: int = 20) -> list[GroundItem]:
        """Up to k catalogue items that ground `query` for `task` ("image"|"template"),
        strongest first."""
        ...


def normalise_query(query: str) -> str:
    """The form queries are matched in: whitespace collapsed, casefolded."""
    return " ".join(query.split()).casefold()


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k {k!r} must be a whole number of items >= 1")
    return k


class StaticGrounder:
    """Precomputed grounding: a query → items mapping (for tests, and for users who ground
    their queries offline).

    Queries are matched after whitespace-collapse and casefold; an unknown query grounds to
    nothing. The same items serve both tasks. Items are returned strongest (highest weight)
    first, keeping the given order among equal weights.
    """

    def __init__(self, mapping: Mapping[str, Sequence[GroundItem]]):
        """Args:
            mapping: query → its grounding items, in any order.
        """
        self._items: dict[str, list[GroundItem]] = {}
        for query, items in mapping.items():
            for it in items:
                if not isinstance(it, GroundItem):
                    raise ConfigError(f"grounding of {query!r} holds {type(it).__name__} "
                                      f"{it!r}; give GroundItem values")
            key = normalise_query(query)
            merged = self._items.get(key, []) + list(items)
            self._items[key] = sorted(merged, key=lambda it: -it.weight)

    def ground(self, query: str, task: str, k: int = 20) -> list[GroundItem]:
        """Up to ``k`` items for ``query`` (any task), strongest first; [] when unknown."""
        check_task(task)
        return list(self._items.get(normalise_query(query), [])[: _check_k(k)])


def ground_query(grounder: Grounder, query: str, task: str, k: int) -> list[GroundItem]:
    """Ask ``grounder`` for ``query``'s items on behalf of a teacher.

    A grounder that fails or answers with something other than GroundItems raises TeacherError,
    so one bad query counts as a failed query in a distillation run instead of ending the run.

    Returns:
        At most ``k`` items, in the grounder's order.
    """
    _check_k(k)
    try:
        items = list(grounder.ground(query, task, k))
    except Exception as e:  # any failure of the caller's index is one failed query
        raise TeacherError(f"grounding {task} items for query {query!r} failed: "
                           f"{type(e).__name__}: {e}") from e
    for it in items:
        if not isinstance(it, GroundItem):
            raise TeacherError(f"grounder {type(grounder).__name__} returned "
                               f"{type(it).__name__} {it!r} for query {query!r}; it must "
                               "return GroundItem values")
    return items[:k]
