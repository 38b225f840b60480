"""The HTTP API's request bodies and its error and readiness bodies (``plugin.service`` wires
them). The answers of ``/v1/rewrite`` and ``/v1/search`` are the pipeline's own result types
(``plugin.pipeline.RewriteResult``, ``SearchResult``), returned as they are.

Request bodies are checked once here, at the edge, in pydantic's strict mode: ``"length": "12"``
or ``"fusion": "yes"`` is a 422, not a silent conversion. The pipeline gets checked values: the
query arrives as a ``plugin.query.Query``.

Every error the service answers has one body, :class:`ErrorResponse`::

    {"error": {"code": "invalid_request", "message": "length: Input should be a valid integer"}}

and :func:`error_responses` documents it in OpenAPI for the statuses a route really returns.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from rewriters.commands import LENGTH_MAX, LENGTH_MIN

from .query import MAX_QUERY_CHARS, Query
from .reload import ReloadStatus

__all__ = [
    "ComponentOut",
    "ErrorDetail",
    "ErrorResponse",
    "Filters",
    "QueryText",
    "ReadyResponse",
    "RewriteRequest",
    "SearchRequest",
    "Task",
    "TemplateFilters",
    "error_response",
    "error_responses",
]

Task = Literal["image", "template"]


def _integral(value: Any) -> Any:
    # JSON Schema's integer includes 12.0; strict mode alone would refuse it
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int(low: int, high: int) -> Any:
    """An integer in [low, high] that also accepts 12.0 (but never "12" or true)."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


Length, Relevance = _int(LENGTH_MIN, LENGTH_MAX), _int(0, 4)
# A word: a character that str.split() keeps. Python's \S is exactly that; the schema states it
# so that the JSON Schema (ECMA-262) regex agrees on every code point, as ECMA's \s lacks
# \x1c-\x1f and \x85, which Python splits on, and has \ufeff, which Python keeps (a plain \S
# in the schema promised "\x85" a 200).
WORD: dict[str, Any] = {"pattern": r"\S", "json_schema_extra": {
    "pattern": r"[^\s\u001c-\u001f\u0085\ufeff]|\ufeff"}}
# The query as the schema states it (a word, at most MAX_QUERY_CHARS characters), handed on as
# the checked Query it then always makes.
QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, **WORD,
                                 description="Search query."), AfterValidator(Query)]
CACHE_FIELD = ("false: ask the model even when the rewrite cache or the precomputed rewrites "
               "hold a prompt (its answer still refreshes the cache).")


class RewriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    query: QueryText
    task: Task | None = Field(None, description="Rewrite for this task only (default: intent).")
    length: Length | None = Field(None, description="Target words.")
    relevance: Relevance | None = Field(None, description="Relevance bucket, 4 = best.")
    n: _int(1, 8) = Field(1, description="Prompts per task.")
    deadline_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                      description="Lower the deadline (milliseconds).")
    cache: bool = Field(True, description=CACHE_FIELD)


Word = Annotated[str, Field(**WORD)]  # a string with something besides spaces


class TemplateFilters(BaseModel):
    """The template index's filters (``indexers.templates.FILTER_KEYS``); other keys are a 422."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    category: Word | None = Field(None, description="Only this category (case-insensitive).")
    tags: list[Word] | None = Field(None, description="Only items carrying all these tags "
                                    "(case-insensitive).")


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: dict[str, Any] | None = Field(None, description="Metadata constraints: every key "
                                         "must match the item's metadata.")
    template: TemplateFilters | None = None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{task: filters}`` as the pipeline takes them."""
        out: dict[str, dict[str, Any]] = {}
        if self.image is not None:
            out["image"] = self.image
        if self.template is not None:
            out["template"] = self.template.model_dump(exclude_none=True)
        return out


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    query: QueryText
    k: _int(1, 1000) | None = Field(None, description="Results per modality.")
    filters: Filters | None = Field(
        None, description='Per modality, e.g. {"template": {"category": "invitation"}}.')
    task: Task | None = None
    length: Length | None = None
    relevance: Relevance | None = None
    fusion: bool | None = Field(None, description="Override RRF fusion of raw and rewrite.")
    deadline_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                      description="Lower the deadline (milliseconds).")
    cache: bool = Field(True, description=CACHE_FIELD)
    lists: bool = Field(False, description="Also return each channel's own top k per modality "
                        "(raw, dense, rewrite), as the search page at / shows them.")


def error_response(status: int, code: str, message: str,
                   headers: dict | None = None) -> JSONResponse:
    """The ``ErrorResponse`` body with ``status``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Machine-readable: bad_request, query_too_long, "
                      "unauthorized, body_too_large, invalid_request, not_found, "
                      "method_not_allowed, unavailable, index_unavailable, queue_full, "
                      "not_ready, reload_in_progress, reload_failed.")
    message: str = Field(..., description="What was wrong, naming the value and the fix.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ComponentOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    loaded: bool
    version: str | None = None
    error: str | None = Field(None, description="Why it is not loaded (e.g. the index backend "
                              "cannot be reached, or no index was built).")


class ReadyResponse(BaseModel):
    ready: bool = Field(..., description="The rewriter, the intent model and every index in "
                        "service.require_indexes are loaded.")
    components: dict[str, ComponentOut]
    reload: ReloadStatus | None = Field(None, description="Hot reload: the watch's interval "
                                        "and the last reload (POST /admin/reload or the watch).")


_ERRORS = {
    400: "A value the pipeline refuses, e.g. a query with no words (bad_request), or a query "
         "too long for the model's window (query_too_long).",
    401: "Missing or wrong X-API-Key header (when the service has a key).",
    413: "The request body is over service.max_body_bytes (by Content-Length, or as soon as "
         "more bytes arrive).",
    409: "Another reload is running (reload_in_progress).",
    422: "Malformed body: not JSON, a wrong type, an unknown field or a value out of range.",
    500: "A component failed to load (reload_failed); the old one keeps serving.",
    503: "Not ready: the pipeline is still loading, or an index backend is unavailable; or "
         "the rewrite queue is full (queue_full, when service.queue_full is \"503\").",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route returns, all with ``ErrorResponse``.

    Args:
        statuses: any of 400, 401, 409, 413, 422, 500, 503.
    """
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]}
            for status in statuses}


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document say what every route really answers on error.

    FastAPI documents its own ``{detail: [...]}`` 422 body and knows nothing of the key check or
    the body limit, which live in dependencies and middleware. This rewrites, for every route
    (also those added beside the API, such as the search page's): 422 and any other error status
    without a body get ``ErrorResponse``; a route behind the API key gets 401; a POST gets 413.
    HEAD routes answer without a body and are left as they are.
    """
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for ops in spec.get("paths", {}).values():
        for method, op in ops.items():
            if method == "head":
                continue
            responses = op.setdefault("responses", {})
            if any("ApiKey" in sec for sec in op.get("security", [])):
                responses.setdefault("401", {"description": _ERRORS[401]})
            if method == "post":
                responses.setdefault("413", {"description": _ERRORS[413]})
            for status, resp in responses.items():
                if status.isdigit() and int(status) >= 400 and (
                        not resp.get("content") or status == "422"):
                    resp["content"] = ref
                    if status == "422":
                        resp["description"] = _ERRORS[422]
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if "ErrorResponse" not in schemas:
        from pydantic.json_schema import models_json_schema

        _, defs = models_json_schema([(ErrorResponse, "serialization")],
                                     ref_template="#/components/schemas/{model}")
        schemas.update(defs["$defs"])
    return spec
