"""The HTTP service through httpx (FastAPI's TestClient) against the real app and pipeline."""

import json

import pytest
from fastapi.testclient import TestClient

from plugin.config import get_settings
from plugin.service import create_app

from .fakes import FakeRewriter


@pytest.fixture
def client_for(make_pipeline):
    clients = []

    def make(rewriter=None, **sections):
        pipe = make_pipeline(rewriter, **sections)
        app = create_app(pipe)
        app.dependency_overrides[get_settings] = lambda: pipe.settings
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_rewrite_endpoint_and_cache_hit(client_for):
    client = client_for()
    body = {"query": "red dog on the beach", "task": "image", "length": 4}
    r = client.post("/v1/rewrite", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["tasks"] == ["image"] and data["path"] == "rewrite"
    assert data["prompts"][0]["prompt"] == "red dog on the"
    assert data["prompts"][0]["source"] == "model"
    second = client.post("/v1/rewrite", json=body).json()
    assert second["prompts"][0]["source"] == "cache"
    metrics = client.get("/metrics").text
    assert 'udrl_cache_lookups_total{result="hit"} 1.0' in metrics
    assert 'udrl_cache_lookups_total{result="miss"} 1.0' in metrics
    assert 'udrl_requests_total{endpoint="/v1/rewrite",status="200"} 2.0' in metrics
    assert 'udrl_stage_seconds_count{stage="rewrite.rewrite"} 2.0' in metrics
    assert 'udrl_rewrite_paths_total{path="rewrite"} 2.0' in metrics


def test_search_endpoint_fusion_is_stable(client_for):
    client = client_for(FakeRewriter(lambda q, c, call: "green beach photo"))
    body = {"query": "red thing", "task": "image", "length": 3, "k": 5}
    first = client.post("/v1/search", json=body).json()
    img = first["modalities"][0]
    assert img["task"] == "image" and img["fused"] and len(img["results"]) == 5
    assert first["rewrite"]["prompts"][0]["prompt"] == "green beach photo"
    for _ in range(3):
        again = client.post("/v1/search", json=body).json()["modalities"][0]["results"]
        assert [(r["id"], r["score"], r["ranks"]) for r in again] == [
            (r["id"], r["score"], r["ranks"]) for r in img["results"]]
    off = client.post("/v1/search", json={**body, "fusion": False}).json()["modalities"][0]
    assert not off["fused"] and all(list(r["ranks"]) == ["rewrite"] for r in off["results"])


@pytest.mark.parametrize("query, intent", [("summer sale flyer", "template"),
                                           ("blue cabin photo", "image")])
def test_search_routes_by_detected_intent(client_for, query, intent):
    # no task in the request: the intent model routes it (the fixture's model learnt queries
    # with flyer/poster/menu/sale as template searches, the others as image searches)
    client = client_for()
    data = client.post("/v1/search", json={"query": query}).json()
    assert data["rewrite"]["intent"] == intent and data["rewrite"]["tasks"] == [intent]
    assert [m["task"] for m in data["modalities"]] == [intent]
    assert data["modalities"][0]["results"]


def test_health_ready_and_openapi(client_for):
    client = client_for()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["components"]) == {"rewriter", "intent", "image_index",
                                               "template_index"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/rewrite", "/v1/search", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


def test_readyz_is_503_when_an_index_is_missing(tmp_path, intent_detector):
    from plugin.pipeline import Pipeline

    from .conftest import settings_for

    pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path))
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: pipe.settings
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["components"]["image_index"]["loaded"] is False
    pipe.close()


def test_api_key_on_and_off(client_for):
    open_client = client_for()
    assert open_client.post("/v1/rewrite", json={"query": "a b"}).status_code == 200
    client = client_for(service={"api_key": "s3cret"})
    r = client.post("/v1/rewrite", json={"query": "a b"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    wrong = client.post("/v1/rewrite", json={"query": "a b"}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    ok = client.post("/v1/rewrite", json={"query": "a b"}, headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_deadline_fails_open_with_a_slow_model(client_for):
    client = client_for(FakeRewriter(delay_s=1.0), service={"deadline_ms": 100})
    r = client.post("/v1/rewrite", json={"query": "slow query", "task": "image"})
    assert r.status_code == 200
    data = r.json()
    assert data["path"] == "raw" and data["prompts"][0]["reason"] == "deadline"
    assert data["prompts"][0]["prompt"] == "slow query"
    assert data["timings_ms"]["rewrite"] < 900
    s = client.post("/v1/search", json={"query": "other slow", "task": "image"}).json()
    assert s["modalities"][0]["path"] == "raw" and s["modalities"][0]["results"]
    assert 'udrl_fallbacks_total{reason="deadline"}' in client.get("/metrics").text


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 422, "invalid_request"),
    (json.dumps({"query": ""}).encode(), 422, "invalid_request"),
    (json.dumps({"query": "a", "length": 99}).encode(), 422, "invalid_request"),
    (json.dumps({"query": "a", "task": "video"}).encode(), 422, "invalid_request"),
    (json.dumps({"query": "a", "surprise": 1}).encode(), 422, "invalid_request"),
    (json.dumps({"query": "   "}).encode(), 422, "invalid_request"),  # no word: the schema
    (json.dumps({"query": "a" * 5000}).encode(), 413, "body_too_large"),
])
def test_bad_bodies_get_json_4xx(client_for, body, status, code):
    client = client_for(service={"max_body_bytes": 4096})
    r = client.post("/v1/rewrite", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_oversized_body_without_content_length(client_for):
    client = client_for(service={"max_body_bytes": 1024})

    def chunks():
        yield b'{"query": "'
        yield b"a" * 3000
        yield b'"}'

    r = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_readyz_with_a_templates_only_deployment(tmp_path, intent_detector, template_index):
    from plugin.pipeline import Pipeline

    from .conftest import settings_for

    pipe = Pipeline(FakeRewriter(), intent_detector,
                    settings_for(tmp_path, service={"require_indexes": ["template"]}),
                    template_index=template_index)
    with TestClient(create_app(pipe)) as client:
        assert client.get("/readyz").status_code == 200
    pipe.batcher.close()


def test_a_crashing_model_fails_open(client_for):
    class Crashing(FakeRewriter):
        def rewrite_batch(self, items, **kw):
            raise RuntimeError("CUDA out of memory")

    r = client_for(Crashing()).post("/v1/rewrite", json={"query": "a b", "task": "image"})
    assert r.status_code == 200
    assert r.json()["prompts"][0]["reason"] == "model error: CUDA out of memory"
