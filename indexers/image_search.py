"""The image index interface: what every image backend serves, and the hit it returns.

Both backends (FAISS in ``images``, Elasticsearch in ``es_images``) return ``Hit(id, score =
cosine, metadata)`` lists best first for the same vectors, so the pipeline's channels use either
unchanged. The backends are looked up by name in ``image_backends``; this module imports none of
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Hit", "ImageSearchIndex"]


class Hit(NamedTuple):
    """One search result; ``score`` is the cosine similarity (inner product of unit vectors)."""

    id: str
    score: float
    metadata: dict[str, Any]


@runtime_checkable
class ImageSearchIndex(Protocol):
    """What the pipeline, the offline evaluation and grounding use of an image index."""

    meta: dict[str, Any]  # build facts: encoder, dim, count, source (the catalogue) ...
    has_dense: bool  # has the text (MiniLM) channel over titles (``image_text``)

    @property
    def version(self) -> str | None:
        """The version served: a store version directory or a concrete index name."""

    @property
    def ids(self) -> list[str]:
        """Every image id."""

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """Every image's metadata, in ``ids`` order."""

    def __len__(self) -> int: ...

    def search(self, query_vecs: np.ndarray, k: int = 10,
               filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Top-k ``Hit`` per (Q, D) query vector, best first (see ``images.ImageIndex``)."""

    def search_text(self, texts: Sequence[str], encoder: Any, k: int = 10,
                    filters: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Encode with the index's CLIP encoder, then ``search``."""

    def logged_queries(self) -> set[str]:
        """Normalised logged queries its text channel was expanded with."""
