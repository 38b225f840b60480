"""The HTTP API's request and response bodies and its error body (``plugin.service`` wires them).

Request bodies are checked once here, at the edge; the pipeline gets checked values.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rewriters.commands import LENGTH_MAX, LENGTH_MIN

from .pipeline import MAX_QUERY_CHARS

__all__ = ["Task", "RewriteRequest", "SearchRequest", "PromptOut", "RewriteResponse",
           "ResultOut", "ModalityOut", "SearchResponse", "error_response"]

Task = Literal["image", "template"]


class RewriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS, description="Search query.")
    task: Task | None = Field(None, description="Rewrite for this task only (default: intent).")
    length: int | None = Field(None, ge=LENGTH_MIN, le=LENGTH_MAX, description="Target words.")
    relevance: int | None = Field(None, ge=0, le=4, description="Relevance bucket, 4 = best.")
    n: int = Field(1, ge=1, le=8, description="Prompts per task.")
    deadline_ms: float | None = Field(None, gt=0, description="Lower the model deadline.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS)
    k: int | None = Field(None, ge=1, le=1000, description="Results per modality.")
    filters: dict[Task, dict[str, Any]] | None = Field(
        None, description='Per modality, e.g. {"template": {"category": "invitation"}}.')
    task: Task | None = None
    length: int | None = Field(None, ge=LENGTH_MIN, le=LENGTH_MAX)
    relevance: int | None = Field(None, ge=0, le=4)
    fusion: bool | None = Field(None, description="Override RRF fusion of raw and rewrite.")
    deadline_ms: float | None = Field(None, gt=0)
    lists: bool = Field(False, description="Also return each channel's own top k per modality "
                        "(raw, dense, rewrite), as the search page at / shows them.")


class PromptOut(BaseModel):
    task: str
    command: dict[str, Any]
    prompt: str
    words: int
    path: Literal["rewrite", "retry", "raw"]
    source: str
    attempts: int
    rejected: list[str]
    reason: str | None
    alternatives: list[str]


class RewriteResponse(BaseModel):
    query: str
    intent: str
    probs: dict[str, float]
    tasks: list[str]
    prompts: list[PromptOut]
    path: Literal["rewrite", "retry", "raw"]
    model_version: str
    timings_ms: dict[str, float]


class ResultOut(BaseModel):
    id: str
    score: float
    ranks: dict[str, int]
    fields: dict[str, Any]


class ModalityOut(BaseModel):
    task: str
    prompt: str
    path: str
    fused: bool
    index_version: str | None
    results: list[ResultOut]
    error: str | None
    channels: dict[str, float] = {}  # channel (raw, dense, rewrite) -> fusion weight; 0: dropped
    lists: dict[str, list[ResultOut]] = {}  # channel -> its own top k (request lists=true)


class SearchResponse(BaseModel):
    query: str
    rewrite: RewriteResponse
    modalities: list[ModalityOut]
    timings_ms: dict[str, float]


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)
