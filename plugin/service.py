"""HTTP rewrite hook: FastAPI app over the ``Pipeline`` (wiring only; logic lives in pipeline).

Endpoints: ``POST /v1/rewrite``, ``POST /v1/search``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` (Prometheus), ``GET /openapi.json``. Errors are JSON
``{"error": {"code": ..., "message": ...}}`` with a 4xx status for bad requests (400 bad values,
401 missing/wrong API key, 413 body too large, 422 malformed body) and 503 when an index backend
is unavailable. A model that misses the deadline never errors: the prompt falls back to the raw
query and the response says ``path: "raw"``, ``reason: "deadline"``.
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexers.errors import IndexStoreError
from rewriters.errors import UdrlError

from .api_models import (RewriteRequest, RewriteResponse, SearchRequest, SearchResponse,
                         error_response)
from .config import Settings, get_settings
from .pipeline import Pipeline
from .web import install_web

__all__ = ["create_app"]

log = logging.getLogger(__name__)

class _Metrics:
    """Prometheus metrics of one app (its own registry, so apps in tests do not collide)."""

    def __init__(self, app: FastAPI):
        self.registry = CollectorRegistry()
        self.requests = Counter("udrl_requests_total", "HTTP requests.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("udrl_request_seconds", "Request latency.", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.stage = Histogram("udrl_stage_seconds", "Latency per pipeline stage.", ["stage"],
                               registry=self.registry,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                        2.5))
        app_ref = app

        class _PipelineCollector:
            def collect(self):
                pipe: Pipeline | None = getattr(app_ref.state, "pipeline", None)
                if pipe is None:
                    return
                cache = pipe.cache.stats()
                c = CounterMetricFamily("udrl_cache_lookups", "Rewrite cache lookups.",
                                        labels=["result"])
                c.add_metric(["hit"], cache["hits"])
                c.add_metric(["miss"], cache["misses"])
                yield c
                yield GaugeMetricFamily("udrl_cache_entries", "Rewrite cache entries.",
                                        value=cache["entries"])
                paths = CounterMetricFamily("udrl_rewrite_paths", "Prompts by path taken.",
                                            labels=["path"])
                falls = CounterMetricFamily("udrl_fallbacks", "Raw-query fallbacks by reason.",
                                            labels=["reason"])
                for key, value in sorted(pipe.counters.items()):
                    kind, _, label = key.partition(":")
                    (paths if kind == "path" else falls).add_metric([label], value)
                yield paths
                yield falls
                b = CounterMetricFamily("udrl_batch_items", "Items through the micro-batcher.",
                                        labels=["what"])
                b.add_metric(["batches"], pipe.batcher.stats.batches)
                b.add_metric(["items"], pipe.batcher.stats.items)
                yield b

        self.registry.register(_PipelineCollector())

    def observe(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage.labels(stage).observe(ms / 1000.0)


def create_app(pipeline: Pipeline | None = None) -> FastAPI:
    """The service app. Without ``pipeline`` it loads one from ``get_settings()`` at start-up.

    Once a pipeline is loaded, its settings are the ones every request uses (API key, body
    limit, deadline, batching), so there is one source of truth.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if getattr(app.state, "pipeline", None) is None:
            from .hook import load_pipeline

            settings = app.dependency_overrides.get(get_settings, get_settings)()
            app.state.pipeline = load_pipeline(settings)
            app.state.owned = True
        yield
        if getattr(app.state, "owned", False):
            app.state.pipeline.close()

    app = FastAPI(title="udrl-search rewrite hook", version="1", lifespan=lifespan,
                  description="UDRL query rewriting for multimodal search.")
    app.state.pipeline = pipeline
    app.state.metrics = metrics = _Metrics(app)

    def current(request: Request) -> Pipeline:
        pipe = request.app.state.pipeline
        if pipe is None:
            raise StarletteHTTPException(503, "the pipeline is not loaded yet")
        return pipe

    def settings_of(request: Request, configured: Settings = Depends(get_settings)) -> Settings:
        pipe = request.app.state.pipeline
        return pipe.settings if pipe is not None else configured

    def check_key(settings: Settings = Depends(settings_of),
                  x_api_key: str | None = Header(None)) -> None:
        want = settings.service.api_key
        if want is not None and not hmac.compare_digest(
                (x_api_key or "").encode(), want.get_secret_value().encode()):
            raise StarletteHTTPException(401, "missing or wrong X-API-Key header")

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next):
        t0 = time.perf_counter()
        endpoint = request.url.path
        pipe = app.state.pipeline
        settings = (pipe.settings if pipe is not None
                    else app.dependency_overrides.get(get_settings, get_settings)())
        limit = settings.service.max_body_bytes
        if request.method == "POST":
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                response = error_response(413, "body_too_large",
                                          f"request body is over the {limit}-byte limit")
            else:
                body = await request.body()  # cached by starlette for the endpoint
                response = (error_response(413, "body_too_large",
                                           f"request body is over the {limit}-byte limit")
                            if len(body) > limit else await call_next(request))
        else:
            response = await call_next(request)
        if endpoint in ("/v1/rewrite", "/v1/search", "/healthz", "/readyz"):
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg")
        return error_response(422, "invalid_request", msg or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 503: "unavailable"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                              str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(IndexStoreError)
    async def _index_down(request: Request, exc: IndexStoreError):
        return error_response(503, "index_unavailable", str(exc))

    @app.exception_handler(UdrlError)
    async def _bad_value(request: Request, exc: UdrlError):
        return error_response(400, "bad_request", str(exc))

    @app.post("/v1/rewrite", response_model=RewriteResponse, dependencies=[Depends(check_key)])
    def rewrite(req: RewriteRequest, pipe: Pipeline = Depends(current)) -> RewriteResponse:
        """Intent, rewritten prompts and the path taken for one query."""
        res = pipe.rewrite(req.query, req.task, req.length, req.relevance, req.n,
                           _deadline(pipe, req.deadline_ms))
        metrics.observe({f"rewrite.{k}": v for k, v in res.timings_ms.items()})
        return RewriteResponse.model_validate(res.to_dict())

    @app.post("/v1/search", response_model=SearchResponse, dependencies=[Depends(check_key)])
    def search(req: SearchRequest, pipe: Pipeline = Depends(current)) -> SearchResponse:
        """Fused raw + rewritten results per routed modality."""
        res = pipe.search(req.query, req.k, req.filters, req.task, req.length, req.relevance,
                          req.fusion, _deadline(pipe, req.deadline_ms), lists=req.lists)
        metrics.observe(res.timings_ms)
        return SearchResponse.model_validate(res.to_dict())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request):
        """Models and indexes are loaded (503 until they are)."""
        pipe = request.app.state.pipeline
        if pipe is None:
            return error_response(503, "not_ready", "the pipeline is not loaded yet")
        parts = pipe.components()
        need = ["rewriter", "intent"] + [f"{t}_index" for t in
                                         pipe.settings.service.require_indexes]
        ready = all(parts[name]["loaded"] for name in need)
        return JSONResponse({"ready": ready, "components": parts},
                            status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    install_web(app, check_key)
    return app


def _deadline(pipe: Pipeline, asked: float | None) -> float:
    """The request's deadline: the configured one, or lower when the request asks."""
    limit = pipe.settings.service.deadline_ms
    return limit if asked is None else min(limit, asked)
