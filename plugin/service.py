"""HTTP rewrite hook: FastAPI app over the ``Pipeline`` (wiring only; logic lives in pipeline).

Endpoints: ``POST /v1/rewrite``, ``POST /v1/search``, ``GET|HEAD /healthz``,
``GET|HEAD /readyz``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``,
``POST /admin/reload`` (hot reload, ``plugin.reload``). Errors are JSON
``{"error": {"code": ..., "message": ...}}`` (``api_models.ErrorResponse``) with a 4xx status for
bad requests (400 bad values or a query too long for the model's window, 401 missing/wrong API
key, 413 body too large, 422 malformed body) and 503 when an index backend is unavailable (or
the rewrite queue is full, with ``service.queue_full = "503"``); OpenAPI lists them per route,
with the key's security scheme. The key and the body limit are checked at the edge
(``plugin.limits``): 401 before the body is read, 413 as soon as the body passes the limit.
Refused requests are logged at WARNING, one line, no traceback. A model that misses the
deadline never errors: the prompt falls back to the raw query and the response says
``path: "raw"``, ``reason: "deadline"``.
"""

from __future__ import annotations

import ipaddress
import logging
import platform
import time
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info
from prometheus_client import PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from indexers.jsonl import first_error

from .api_models import (ReadyResponse, RewriteRequest, SearchRequest, document_errors,
                         error_response, error_responses)
from .config import Settings, get_settings
from .errors import UDRL_ERRORS, error_code, http_headers, http_status
from .limits import RECEIVED_AT, RequestLimits, key_matches
from .logs import udrl_version
from .pipeline import Pipeline, RewriteResult, SearchResult
from .reload import Reloader, ReloadReport
from .web import install_web

__all__ = ["create_app", "bind_warning"]

log = logging.getLogger(__name__)

REWRITE_JSON = TypeAdapter(RewriteResult)  # /v1/rewrite's body, serialised without FastAPI

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
        self.reloads = Counter("udrl_reloads", "Components reloaded (POST /admin/reload or the "
                               "watch).", ["component", "result"], registry=self.registry)
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
                stats = pipe.batcher.stats
                b.add_metric(["batches"], stats.batches)
                b.add_metric(["items"], stats.items)
                b.add_metric(["isolated"], stats.isolated)  # failed batches re-run job by job
                yield b
                q = CounterMetricFamily("udrl_queue_jobs", "Rewrite jobs not run as queued: "
                                        "expired (deadline passed while waiting), refused "
                                        "(queue full), shared (joined an identical job).",
                                        labels=["what"])
                for what in ("expired", "refused", "shared"):
                    q.add_metric([what], getattr(stats, what))
                yield q
                yield GaugeMetricFamily("udrl_queue_depth", "Rewrite jobs waiting for the model.",
                                        value=pipe.batcher.depth)

        self.registry.register(_PipelineCollector())

    def observe(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage.labels(stage).observe(ms / 1000.0)


def create_app(pipeline: Pipeline | None = None, own: bool = False) -> FastAPI:
    """The service app. Without ``pipeline`` it loads one from ``get_settings()`` at start-up.
    ``own``: the app closes ``pipeline`` when it stops or a reload replaces it (``udrl serve``).

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
        await anyio.to_thread.run_sync(app.state.reloader.start)  # the watch (plugin.reload)
        yield
        await anyio.to_thread.run_sync(app.state.reloader.stop)  # closes what the app loaded

    app = FastAPI(title="udrl-search rewrite hook", version="1", lifespan=lifespan,
                  description="UDRL query rewriting for multimodal search.")
    app.state.pipeline, app.state.owned = pipeline, own
    app.state.metrics = metrics = _Metrics(app)
    app.state.reloader = Reloader(app.state, metrics.reloads)

    async def current(request: Request):  # async: no thread hop per request
        # the request keeps this pipeline until it is done, even if a reload swaps it out
        with request.app.state.reloader.hold() as pipe:
            if pipe is None:
                raise StarletteHTTPException(503, "the pipeline is not loaded yet")
            yield pipe

    async def check_key(x_api_key: str | None = Security(API_KEY)) -> None:
        if not key_matches(settings_now().service.api_key, x_api_key):
            raise StarletteHTTPException(401, "missing or wrong X-API-Key header")

    def refuse(request: Request, status: int, code: str, message: str,
               headers: dict | None = None) -> JSONResponse:
        # an expected refusal: one WARNING line, no traceback
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, code,
                    message)
        return error_response(status, code, message, headers)

    def settings_now() -> Settings:
        pipe = app.state.pipeline
        return (pipe.settings if pipe is not None
                else app.dependency_overrides.get(get_settings, get_settings)())

    keyed: list[APIRoute] = []  # the routes behind the key, found at the first request

    def needs_key(scope: dict) -> bool:
        if not keyed:
            keyed.extend(r for r in app.router.routes
                         if isinstance(r, APIRoute) and _calls(r.dependant, check_key))
        return any(r.matches(scope)[0] == Match.FULL for r in keyed)

    def observe(endpoint: str, status: int, seconds: float) -> None:
        if endpoint in ("/v1/rewrite", "/v1/search", "/healthz", "/readyz"):
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(seconds)

    # pure ASGI: the key is checked before the body is read, the body limit while it streams
    app.add_middleware(RequestLimits, settings=settings_now, needs_key=needs_key,
                       refuse=refuse, observe=observe)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        msg = first_error(exc, drop=("body",), empty=None)  # "query: String should have ..."
        return refuse(request, 422, "invalid_request", msg or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "body_too_large", 503: "unavailable"}
        return refuse(request, exc.status_code, codes.get(exc.status_code, "http_error"),
                      str(exc.detail), getattr(exc, "headers", None))

    async def _refused(request: Request, exc: Exception):  # statuses: plugin.errors' table
        return refuse(request, http_status(exc), error_code(exc), str(exc),
                      http_headers(exc) or None)

    for family in UDRL_ERRORS:
        app.add_exception_handler(family, _refused)

    refused = error_responses(400, 401, 413, 422, 503)

    @app.post("/v1/rewrite", response_model=RewriteResult, dependencies=[Depends(check_key)],
              responses=refused)
    async def rewrite(req: RewriteRequest, request: Request,
                      pipe: Pipeline = Depends(current)) -> Response:
        """Intent, rewritten prompts and the path taken for one query."""
        call = partial(pipe.rewrite, req.query, req.task, req.length, req.relevance, req.n,
                       _deadline(pipe, req.deadline_ms, request), cache=req.cache)
        # every prompt cached: answered here on the event loop; else the model's wait runs
        # in a worker thread
        res = call(cached_only=True) if req.cache else None
        if res is None:
            res = await run_in_threadpool(call)
        metrics.observe({f"rewrite.{k}": v for k, v in res.timings_ms.items()})
        # built (and validated) once by the pipeline: serialised as is, no second pass
        return Response(REWRITE_JSON.dump_json(res), media_type="application/json")

    @app.post("/v1/search", response_model=SearchResult, dependencies=[Depends(check_key)],
              responses=refused)
    def search(req: SearchRequest, request: Request,
               pipe: Pipeline = Depends(current)) -> SearchResult:
        """Fused raw + rewritten results per routed modality."""
        filters = req.filters.as_dict() if req.filters is not None else None
        res = pipe.search(req.query, req.k, filters, req.task, req.length, req.relevance,
                          req.fusion, _deadline(pipe, req.deadline_ms, request), lists=req.lists,
                          cache=req.cache)
        metrics.observe(res.timings_ms)
        return res  # the pipeline's own result: FastAPI takes the instance as it is

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
        reload = request.app.state.reloader.status().model_dump()
        return JSONResponse({"ready": ready, "components": parts, "reload": reload},
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

    @app.post("/admin/reload", response_model=ReloadReport, dependencies=[Depends(check_key)],
              responses=error_responses(401, 409, 500, 503))
    def reload(pipe: Pipeline = Depends(current)) -> ReloadReport | JSONResponse:
        """Serve what was published since start-up or the last reload (index versions, the
        rewriter, intent model, fitted weights, precomputed rewrites) without a restart."""
        report = app.state.reloader.reload("api")
        if report is None:
            return error_response(409, "reload_in_progress", "a reload is already running; "
                                  "try again when it is done (GET /readyz shows the last one)")
        if report.result == "failed":
            failed = [f"{c}: {r.error}" for c, r in report.components.items() if r.error]
            done = [f"{c} {r.old} -> {r.new}" for c, r in report.components.items()
                    if not r.error]
            return error_response(500, "reload_failed", "reload failed, the old version keeps "
                                  "serving: " + "; ".join(failed)
                                  + (f" (reloaded: {', '.join(done)})" if done else ""))
        return report

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


def _deadline(pipe: Pipeline, asked: float | None, request: Request) -> float:
    """What is left of the request's deadline (ms; <= 0 when spent): the configured one, or
    lower when the request asks, less the time since the request arrived (waiting for a worker
    thread, reading the body)."""
    limit = pipe.settings.service.deadline_ms
    total = limit if asked is None else min(limit, asked)
    since = request.scope.get(RECEIVED_AT)
    return total if since is None else total - (time.monotonic() - since) * 1000.0


def _calls(dependant, fn) -> bool:
    """Whether a route's dependency tree calls ``fn`` (e.g. the API-key check)."""
    return any(d.call is fn or _calls(d, fn) for d in dependant.dependencies)
