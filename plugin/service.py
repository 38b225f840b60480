"""HTTP rewrite hook: FastAPI app over the ``Pipeline`` (wiring only; logic lives in pipeline).

Endpoints: ``POST /v1/rewrite``, ``POST /v1/search``, ``GET|HEAD /healthz``,
``GET|HEAD /readyz``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``. Errors are JSON
``{"error": {"code": ..., "message": ...}}`` (``api_models.ErrorResponse``) with a 4xx status for
bad requests (400 bad values, 401 missing/wrong API key, 413 body too large, 422 malformed body)
and 503 when an index backend is unavailable; OpenAPI lists them per route, with the key's
security scheme. Refused requests are logged at WARNING, one line, no traceback. A model that
misses the deadline never errors: the prompt falls back to the raw query and the response says
``path: "raw"``, ``reason: "deadline"``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import platform
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info
from prometheus_client import PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexers.errors import IndexStoreError
from rewriters.errors import UdrlError

from .api_models import (ReadyResponse, RewriteRequest, RewriteResponse, SearchRequest,
                         SearchResponse, document_errors, error_response, error_responses)
from .config import Settings, get_settings
from .logs import udrl_version
from .pipeline import Pipeline
from .web import install_web

__all__ = ["create_app", "bind_warning"]

log = logging.getLogger(__name__)

API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                       description="Needed on /v1/* when the service has a key "
                                   "(service.api_key); without one the API is open.")


class PrometheusText(Response):
    """``/metrics``: the Prometheus text exposition format."""

    media_type = CONTENT_TYPE_LATEST

class _Metrics:
    """Prometheus metrics of one app (its own registry, so apps in tests do not collide)."""

    def __init__(self, app: FastAPI):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        PlatformCollector(registry=self.registry)  # python_info
        Info("udrl_build", "The udrl-search build serving.", registry=self.registry).info(
            {"version": udrl_version(), "python": platform.python_version()})
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
                  x_api_key: str | None = Security(API_KEY)) -> None:
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

    def refuse(request: Request, status: int, code: str, message: str,
               headers: dict | None = None) -> JSONResponse:
        # an expected refusal: one WARNING line, no traceback
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, code,
                    message)
        return error_response(status, code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg")
        return refuse(request, 422, "invalid_request", msg or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 503: "unavailable"}
        return refuse(request, exc.status_code, codes.get(exc.status_code, "http_error"),
                      str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(IndexStoreError)
    async def _index_down(request: Request, exc: IndexStoreError):
        return refuse(request, 503, "index_unavailable", str(exc))

    @app.exception_handler(UdrlError)
    async def _bad_value(request: Request, exc: UdrlError):
        return refuse(request, 400, "bad_request", str(exc))

    refused = error_responses(400, 401, 413, 422, 503)

    @app.post("/v1/rewrite", response_model=RewriteResponse, dependencies=[Depends(check_key)],
              responses=refused)
    def rewrite(req: RewriteRequest, pipe: Pipeline = Depends(current)) -> RewriteResponse:
        """Intent, rewritten prompts and the path taken for one query."""
        res = pipe.rewrite(req.query, req.task, req.length, req.relevance, req.n,
                           _deadline(pipe, req.deadline_ms))
        metrics.observe({f"rewrite.{k}": v for k, v in res.timings_ms.items()})
        return RewriteResponse.model_validate(res.to_dict())

    @app.post("/v1/search", response_model=SearchResponse, dependencies=[Depends(check_key)],
              responses=refused)
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

    @app.head("/healthz", response_class=Response,
              responses={200: {"description": "The process is up (no body)."}})
    def healthz_head() -> Response:
        """``GET /healthz`` without a body, for probes that send HEAD."""
        return Response(status_code=200)

    def ready_state(request: Request) -> tuple[bool, dict]:
        pipe = request.app.state.pipeline
        if pipe is None:
            return False, {}
        parts = pipe.components()
        need = ["rewriter", "intent"] + [f"{t}_index" for t in
                                         pipe.settings.service.require_indexes]
        return all(parts[name]["loaded"] for name in need), parts

    not_ready = {503: {"model": ReadyResponse, "description": "Still loading, or a required "
                       "component is missing; ``components`` says which and why."}}

    @app.get("/readyz", response_model=ReadyResponse, responses=not_ready)
    def readyz(request: Request) -> JSONResponse:
        """Models and indexes are loaded (503 until they are, or while one is unavailable)."""
        ready, parts = ready_state(request)
        return JSONResponse({"ready": ready, "components": parts},
                            status_code=200 if ready else 503)

    @app.head("/readyz", response_class=Response,
              responses={200: {"description": "Ready (no body)."},
                         503: {"description": "Not ready (no body)."}})
    def readyz_head(request: Request) -> Response:
        """``GET /readyz``'s status without a body."""
        return Response(status_code=200 if ready_state(request)[0] else 503)

    @app.get("/metrics", response_class=PrometheusText,
             responses={200: {"description": "Prometheus text exposition format.",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    def prometheus() -> PrometheusText:
        """Request, stage and cache metrics, ``udrl_build_info`` and process metrics."""
        return PrometheusText(generate_latest(metrics.registry))

    install_web(app, check_key)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi
    return app


def bind_warning(settings: Settings) -> str | None:
    """Why binding ``service.host`` is risky, or None: an address beyond loopback (0.0.0.0, a
    LAN address, a host name) with no ``service.api_key`` lets anyone who reaches it in."""
    host = settings.service.host.strip("[]")
    if settings.service.api_key is not None or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve beyond loopback
    return (f"serving on {host}:{settings.service.port}, beyond loopback, with no API key: "
            "anyone who can reach this port can use the API; set service.api_key "
            "(UDRL_SERVICE__API_KEY) or bind 127.0.0.1 (in a container, publish the port on "
            "127.0.0.1 only)")


def _deadline(pipe: Pipeline, asked: float | None) -> float:
    """The request's deadline: the configured one, or lower when the request asks."""
    limit = pipe.settings.service.deadline_ms
    return limit if asked is None else min(limit, asked)
