"""What the Elasticsearch cluster can do, read from its version number (one ``GET /``).

Each optional feature the indexes use has the first release that has it::

    nested_knn       8.11   kNN over nested dense_vectors (the template dense channel)
    bbq              8.16   index_options bbq_hnsw (better binary quantization)
    retrievers       8.16   the ``retriever`` search syntax with ``rrf`` (GA; 8.14 previewed it)
    rescore_vector   8.18   ``knn.rescore_vector.oversample``: re-rank quantized hits with the
                            float vectors
    base64_vectors   9.3    dense_vector values sent as base64 of big-endian float32

A key that may not read the version (401/403) gets ``EsFeatures.unknown()``: every optional
feature off, so requests stay in the syntax every supported cluster (8.13+) accepts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from elasticsearch import ApiError, Elasticsearch

__all__ = ["MINIMUM", "EsFeatures", "read_features", "server_version"]

log = logging.getLogger(__name__)

MINIMUM = {
    "nested_knn": (8, 11),
    "bbq": (8, 16),
    "retrievers": (8, 16),
    "rescore_vector": (8, 18),
    "base64_vectors": (9, 3),
}


@dataclass(frozen=True)
class EsFeatures:
    """The optional features of one cluster (see the module table)."""

    version: str | None  # the cluster's version number; None when it could not be read
    nested_knn: bool = False
    bbq: bool = False
    retrievers: bool = False
    rescore_vector: bool = False
    base64_vectors: bool = False

    @classmethod
    def of(cls, number: str | None) -> EsFeatures:
        """The features of a cluster that reports version ``number`` (None: unknown)."""
        if number is None:
            return cls(None)
        found = tuple(int(x) for x in re.findall(r"\d+", number)[:2])
        return cls(number, **{name: found >= want for name, want in MINIMUM.items()})

    @classmethod
    def unknown(cls) -> EsFeatures:
        return cls(None)


def server_version(es: Elasticsearch) -> str | None:
    """The cluster's version number (e.g. "9.1.0"); None when the key may not read it.

    Raises:
        ApiError, TransportError: any other refusal, or the cluster cannot be reached.
    """
    try:
        return str(es.info()["version"]["number"])
    except ApiError as e:
        if e.meta.status not in (401, 403):
            raise
        log.warning("cannot read the Elasticsearch version (%s); optional features are off",
                    e.meta.status)
        return None


def read_features(es: Elasticsearch) -> EsFeatures:
    """``EsFeatures`` of the cluster behind ``es`` (one request)."""
    return EsFeatures.of(server_version(es))
