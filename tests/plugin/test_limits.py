"""The service's bounds over HTTP: the key before the body, the body limit while it streams, 400
for a query too long for the model's window, 503 for a full queue, the cache field, and the
deadline counting from the request's arrival."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from plugin.config import get_settings
from plugin.service import create_app

from .fakes import FakeRewriter


def app_for(pipe):
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: pipe.settings
    return app


def call(app, path: str, chunks, headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST straight through ASGI; returns (status, JSON body, receive() calls made)."""
    reads = 0
    sent: list[dict] = []
    chunks = iter(chunks)

    async def receive():
        nonlocal reads
        reads += 1
        body = next(chunks, None)
        return {"type": "http.request", "body": body or b"", "more_body": body is not None}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1234),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), reads


def endless(size: int = 1024):
    while True:
        yield b"a" * size


def test_the_key_is_checked_before_the_body_is_read(make_pipeline):
    app = app_for(make_pipeline(service={"api_key": "s3cret"}))
    status, body, reads = call(app, "/v1/rewrite", endless(), {"content-type": "application/json",
                                                                "content-length": "100"})
    assert (status, body["error"]["code"], reads) == (401, "unauthorized", 0)
    status, _, reads = call(app, "/v1/rewrite", [b'{"query": "red dog"}'],
                            {"content-type": "application/json", "x-api-key": "s3cret"})
    assert status == 200 and reads >= 1
    assert call(app, "/v1/search", endless(), {})[:3:2] == (401, 0)


def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit(make_pipeline):
    app = app_for(make_pipeline(service={"max_body_bytes": 4096}))
    status, body, reads = call(app, "/v1/search", endless(1024),
                               {"content-type": "application/json"})  # no Content-Length
    assert status == 413 and body["error"] == {
        "code": "body_too_large", "message": "request body is over the 4096-byte limit"}
    assert reads == 5  # 5 x 1024 bytes: the fifth passes 4096, and nothing more is read
    status, _, reads = call(app, "/v1/search", endless(), {"content-length": "4097"})
    assert (status, reads) == (413, 0)  # declared: refused before reading


def test_refusals_at_the_edge_are_counted_and_logged(make_pipeline, caplog):
    client = TestClient(app_for(make_pipeline(service={"max_body_bytes": 1024})))
    with caplog.at_level("WARNING", logger="plugin.service"):
        r = client.post("/v1/search", content=(c for c in [b'{"query": "', b"a" * 3000, b'"}']),
                        headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert [m.getMessage() for m in caplog.records if m.name == "plugin.service"] == [
        "POST /v1/search -> 413 body_too_large: request body is over the 1024-byte limit"]
    metrics = client.get("/metrics").text
    assert 'udrl_requests_total{endpoint="/v1/search",status="413"} 1.0' in metrics


def test_a_query_too_long_for_the_model_is_a_400(make_pipeline):
    pipe = make_pipeline(FakeRewriter(window=128))
    client = TestClient(app_for(pipe))
    r = client.post("/v1/rewrite", json={"query": "x " * 200})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "query_too_long"
    assert err["message"].startswith("query is too long: its 200 tokens leave 0 of the model's "
                                     "128-token window for the prompt")
    assert pipe.rewriter.calls == []
    assert client.post("/v1/search", json={"query": "x " * 200}).status_code == 400


def test_a_full_queue_is_a_503_when_asked(make_pipeline):
    class Held(FakeRewriter):
        def rewrite_batch(self, items, **kw):
            running.set()
            assert release.wait(10)
            return super().rewrite_batch(items, **kw)

    running, release = threading.Event(), threading.Event()
    pipe = make_pipeline(Held(), service={"max_queue": 1, "queue_full": "503"})
    client = TestClient(app_for(pipe))
    busy = [threading.Thread(target=client.post, args=("/v1/rewrite",),
                             kwargs={"json": {"query": f"query {i}", "task": "image"}})
            for i in range(2)]
    busy[0].start()
    assert running.wait(5)
    busy[1].start()
    while pipe.batcher.depth < 1:
        time.sleep(0.005)
    try:
        r = client.post("/v1/rewrite", json={"query": "one more", "task": "image"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert 'udrl_queue_jobs_total{what="refused"} 1.0' in client.get("/metrics").text
        assert "udrl_queue_depth 1.0" in client.get("/metrics").text
    finally:
        release.set()
        for t in busy:
            t.join(5)


@pytest.mark.parametrize("path", ["/v1/rewrite", "/v1/search"])
def test_the_cache_field(make_pipeline, path):
    pipe = make_pipeline()
    client = TestClient(app_for(pipe))
    body = {"query": "red dog", "task": "image"}

    def source(r):
        data = r.json()
        return (data["rewrite"] if path == "/v1/search" else data)["prompts"][0]["source"]

    assert source(client.post(path, json=body)) == "model"
    assert source(client.post(path, json=body)) == "cache"
    assert source(client.post(path, json={**body, "cache": False})) == "model"
    r = client.post(path, json={**body, "cache": "no"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("cache:")


def test_a_spent_deadline_queues_nothing_over_http(make_pipeline):
    pipe = make_pipeline()
    r = TestClient(app_for(pipe)).post("/v1/rewrite", json={"query": "red dog", "task": "image",
                                                             "deadline_ms": 0.001})
    assert r.status_code == 200 and r.json()["prompts"][0]["reason"] == "deadline"
    assert pipe.rewriter.calls == [] and pipe.batcher.stats.expired == 0  # never queued
