"""The vector side of the Elasticsearch double (``es_double``): what a real cluster of the
double's version accepts and answers for dense_vector mappings and documents, kNN options and
the ``retriever`` syntax.

Version gates (as in Elasticsearch; ``EsDouble.version`` sets them)::

    bbq_hnsw / bbq_flat index options   8.16, and at least 64 dimensions
    knn.rescore_vector                  8.18
    retriever (standard, knn, rrf)      8.14
    base64 dense_vector values          9.3 (big-endian float32)

The ``rrf`` retriever answers 403 (security_exception, licence) when ``EsDouble.rrf_licensed``
is False, as a self-managed cluster without an Enterprise licence does.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["at_least", "check_index_options", "check_knn_options", "check_unit_length",
           "decode_vector", "retrieve"]

_HNSW = {"type", "m", "ef_construction"}
_INDEX_OPTIONS = {  # type -> accepted parameters
    "hnsw": _HNSW,
    "int8_hnsw": _HNSW | {"confidence_interval"},
    "int4_hnsw": _HNSW | {"confidence_interval"},
    "bbq_hnsw": _HNSW,
    "flat": {"type"},
    "int8_flat": {"type", "confidence_interval"},
    "int4_flat": {"type", "confidence_interval"},
    "bbq_flat": {"type"},
}
_STANDARD_KEYS = {"query", "filter", "min_score"}
_RRF_KEYS = {"retrievers", "rank_constant", "rank_window_size", "filter"}


def at_least(version: str, major: int, minor: int) -> bool:
    parts = [int(x) for x in version.split(".")[:2]]
    return (parts[0], parts[1]) >= (major, minor)


def _error(status: int, etype: str, reason: str) -> Exception:
    from .es_double import _Error  # the double's error type (circular at import time)

    return _Error(status, etype, reason)


def check_index_options(version: str, field: str, spec: dict[str, Any]) -> None:
    """Raise what index creation answers for a dense_vector's ``index_options``."""
    opts = spec.get("index_options")
    if opts is None:
        return
    kind = opts.get("type")
    bbq = isinstance(kind, str) and kind.startswith("bbq_")
    if kind not in _INDEX_OPTIONS or (bbq and not at_least(version, 8, 16)):
        raise _error(400, "mapper_parsing_exception",
                     f"Unknown vector index options type [{kind}] for field [{field}]")
    for param in opts:
        if param not in _INDEX_OPTIONS[kind]:
            raise _error(400, "mapper_parsing_exception",
                         f"Mapping definition for [{field}] has unsupported parameters: "
                         f"[{param} : {opts[param]}]")
    if bbq and spec.get("dims", 0) < 64:
        raise _error(400, "mapper_parsing_exception",
                     f"The [dense_vector] field [{field}] of type [{kind}] does not support "
                     f"dimensions fewer than 64; provided={spec.get('dims')}")
    if opts.get("m", 16) < 1 or opts.get("ef_construction", 100) < opts.get("m", 16):
        raise _error(400, "mapper_parsing_exception",
                     f"[ef_construction] must be >= [m] on field [{field}]")


def decode_vector(version: str, field: str, value: Any, dims: int) -> list[float]:
    """The floats of a dense_vector value: a list, or (9.3+) base64 of big-endian float32."""
    if isinstance(value, str) and at_least(version, 9, 3):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _error(400, "document_parsing_exception",
                         f"failed to parse field [{field}] of type [dense_vector]") from e
        if len(raw) != 4 * dims:
            raise _error(400, "document_parsing_exception",
                         f"The [dense_vector] field [{field}] has a different number of "
                         f"dimensions [{len(raw) // 4}] than defined in the mapping [{dims}]")
        return list(struct.unpack(f">{dims}f", raw))
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) for x in value):
        raise _error(400, "document_parsing_exception",
                     f"failed to parse field [{field}] of type [dense_vector]")
    return [float(x) for x in value]


def check_unit_length(field: str, vector: list[float]) -> None:
    """dot_product refuses float vectors that are not unit length (as Elasticsearch does)."""
    if abs(sum(x * x for x in vector) - 1.0) > 1e-4:
        raise _error(400, "document_parsing_exception",
                     "The [dot_product] similarity can only be used with unit-length vectors. "
                     f"Preview of invalid vector: {vector[:5]} (field [{field}])")


def check_knn_options(version: str, knn: dict[str, Any]) -> None:
    """``rescore_vector`` exists from 8.18 on, and takes oversample 1-10 or 0."""
    if "rescore_vector" not in knn:
        return
    if not at_least(version, 8, 18):
        raise _error(400, "x_content_parse_exception", "[knn] unknown field [rescore_vector]")
    over = knn["rescore_vector"].get("oversample")
    if not (over == 0 or (isinstance(over, (int, float)) and 1.0 <= over <= 10.0)):
        raise _error(400, "illegal_argument_exception",
                     f"[oversample] must be between [1.0] and [10.0], or 0; got [{over}]")


Ranked = list[tuple[tuple[str, str], float]]  # ((index, id), score), best first


def retrieve(double, names: list[str], spec: dict[str, Any], size: int,
             query: Callable[[dict[str, Any]], dict[tuple[str, str], float]]) -> Ranked:
    """The ranked documents of one retriever (``standard``, ``knn`` or ``rrf``).

    Args:
        query: scores of every matching document for a query clause (the double's matcher).
    """
    if not at_least(double.version, 8, 14):
        raise _error(400, "parsing_exception", "Unknown key for a START_OBJECT in [retriever].")
    ((kind, body),) = spec.items()
    if kind == "standard":
        unknown = sorted(set(body) - _STANDARD_KEYS)
        if unknown:
            raise _error(400, "x_content_parse_exception",
                         f"[standard] unknown field [{unknown[0]}]")
        clause = body.get("query", {"match_all": {}})
        if body.get("filter"):
            clause = {"bool": {"must": [clause], "filter": body["filter"]}}
        scores = query(clause)
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0][1]))
    if kind == "knn":
        check_knn_options(double.version, body)
        found = double._knn(names, body)
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0][1]))
    if kind == "rrf":
        if not double.rrf_licensed:
            raise _error(403, "security_exception",
                         "current license is non-compliant for [Reciprocal Rank Fusion (RRF)]")
        unknown = sorted(set(body) - _RRF_KEYS)
        if unknown:
            raise _error(400, "x_content_parse_exception", f"[rrf] unknown field [{unknown[0]}]")
        window = body.get("rank_window_size", size)
        constant = body.get("rank_constant", 60)
        if window < size:
            raise _error(400, "illegal_argument_exception",
                         f"[rank_window_size] must be greater than or equal to [size]; "
                         f"got [{window}] < [{size}]")
        children = body.get("retrievers", [])
        if len(children) < 2:
            raise _error(400, "illegal_argument_exception",
                         "[rrf] requires at least 2 child retrievers")
        score: dict[tuple[str, str], float] = {}
        best: dict[tuple[str, str], int] = {}
        for child in children:
            for rank, (key, _) in enumerate(retrieve(double, names, child, window, query)[:window],
                                            start=1):
                score[key] = score.get(key, 0.0) + 1.0 / (constant + rank)
                best[key] = min(best.get(key, rank), rank)
        order = sorted(score, key=lambda key: (-score[key], best[key], key[1]))
        return [(key, score[key]) for key in order]
    raise _error(400, "x_content_parse_exception", f"unknown retriever [{kind}]")
