"""The HTTP API's contract beyond the happy path: strict types, HEAD probes, /readyz with an
index that could not be opened, refusals logged as one WARNING line, metrics as Prometheus
text with build and process metrics, prompt counts and catalogue-relative image paths."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from plugin.config import get_settings
from plugin.service import bind_warning, create_app

from .conftest import settings_for
from .fakes import FakeRewriter, HashEncoder


def client_of(pipe) -> TestClient:
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: pipe.settings
    return TestClient(app)


@pytest.mark.parametrize("path,body,field", [
    ("/v1/rewrite", {"query": "red dog", "length": "12"}, "length"),
    ("/v1/rewrite", {"query": "red dog", "n": True}, "n"),
    ("/v1/rewrite", {"query": "red dog", "length": 12.5}, "length"),
    ("/v1/rewrite", {"query": "red dog", "deadline_ms": "100"}, "deadline_ms"),
    ("/v1/search", {"query": "red dog", "fusion": "yes"}, "fusion"),
    ("/v1/search", {"query": "red dog", "k": "5"}, "k"),
    ("/v1/search", {"query": 123}, "query"),
    ("/v1/rewrite", {"query": " \t "}, "query"),  # no word: refused by the schema's pattern
    ("/v1/rewrite", {"query": "red dog", "cache": "no"}, "cache"),
    ("/v1/search", {"query": "red dog", "filters": {"template": {"colour": "red"}}},
     "filters.template.colour"),  # the template index filters by category and tags only
    ("/v1/search", {"query": "red dog", "filters": {"template": {"tags": ["ok", " "]}}},
     "filters.template.tags.1"),
])
def test_wrong_types_are_refused_not_coerced(make_pipeline, path, body, field):
    r = client_of(make_pipeline()).post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"].startswith(f"{field}:")


def test_integral_numbers_are_integers(make_pipeline):
    # JSON Schema's integer includes 4.0, so the API takes it (as 4)
    r = client_of(make_pipeline()).post("/v1/rewrite", json={"query": "red dog on the beach",
                                                             "task": "image", "length": 4.0})
    assert r.status_code == 200 and r.json()["prompts"][0]["words"] == 4


def test_head_probes(make_pipeline, tmp_path, intent_detector):
    client = client_of(make_pipeline())
    for path in ("/healthz", "/readyz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""
    from plugin.pipeline import Pipeline

    bare = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path))  # no indexes
    try:
        assert client_of(bare).head("/readyz").status_code == 503
    finally:
        bare.close()


def test_readyz_says_why_an_index_is_missing(tmp_path, intent_detector, template_index):
    from plugin.pipeline import Pipeline

    pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path),
                    template_index=template_index)
    pipe.load_errors["image_index"] = "no image index in the workspace; build one with " \
                                      "`udrl index images`"
    try:
        r = client_of(pipe).get("/readyz")
        assert r.status_code == 503
        image = r.json()["components"]["image_index"]
        assert image == {"loaded": False, "version": None,
                         "error": pipe.load_errors["image_index"]}
        assert r.json()["components"]["template_index"]["loaded"] is True
    finally:
        pipe.batcher.close()  # the template index is the session's


def test_refusals_are_one_warning_line_without_traceback(make_pipeline, caplog):
    client = client_of(make_pipeline(service={"api_key": "k"}))
    with caplog.at_level(logging.INFO, logger="plugin.service"):
        assert client.post("/v1/rewrite", json={"query": "a"}).status_code == 401
        assert client.post("/v1/rewrite", json={"query": "a", "n": 99},
                           headers={"X-API-Key": "k"}).status_code == 422
    records = [r for r in caplog.records if r.name == "plugin.service"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING"]
    assert all(r.exc_info is None for r in records)
    assert records[0].getMessage() == ("POST /v1/rewrite -> 401 unauthorized: missing or wrong "
                                       "X-API-Key header")
    assert records[1].getMessage().startswith("POST /v1/rewrite -> 422 invalid_request: n:")


def test_metrics_are_prometheus_text_with_build_and_process(make_pipeline):
    r = client_of(make_pipeline()).get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    text = r.text
    assert 'udrl_build_info{python="' in text and 'version="' in text
    assert "process_resident_memory_bytes " in text and "process_cpu_seconds_total " in text
    assert "python_info{" in text


def test_prompts_say_how_many_were_asked_and_returned(make_pipeline):
    # the script writes the same prompt every time: n=8 gives one distinct prompt
    client = client_of(make_pipeline(FakeRewriter(lambda q, c, call: "green beach photo")))
    r = client.post("/v1/rewrite", json={"query": "beach", "task": "image", "length": 3,
                                         "n": 8})
    p = r.json()["prompts"][0]
    assert (p["requested"], p["returned"], p["alternatives"]) == (8, 1, [])
    two = client_of(make_pipeline()).post("/v1/rewrite", json={"query": "red dog", "n": 1,
                                                               "task": "image"})
    assert (two.json()["prompts"][0]["requested"], two.json()["prompts"][0]["returned"]) == (1, 1)


def test_image_hits_name_the_catalogue_path_not_the_server_path(tmp_path, intent_detector):
    from indexers.images import ImageIndex
    from plugin.pipeline import Pipeline

    enc = HashEncoder()
    captions = ["red cabin photo", "blue lake photo", "green forest photo"]
    meta = [{"path": "/srv/catalogue/images/a.png", "title": captions[0]},
            {"path": "/srv/catalogue/b/b.png", "title": captions[1]},
            {"path": "/elsewhere/c.png", "title": captions[2]}]  # outside the catalogue
    index = ImageIndex.build(enc.encode_texts(captions), ["a", "b", "c"], meta, enc.name)
    index.meta["source"] = "/srv/catalogue/images.jsonl"  # what `udrl index images` records
    pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path), image_index=index,
                    image_encoder=enc)
    try:
        r = client_of(pipe).post("/v1/search", json={"query": "photo", "task": "image", "k": 3})
        fields = {h["id"]: h["fields"] for h in r.json()["modalities"][0]["results"]}
    finally:
        pipe.close()
    assert fields["a"] == {"path": "images/a.png", "title": "red cabin photo"}
    assert fields["b"]["path"] == "b/b.png"
    assert "path" not in fields["c"] and fields["c"]["title"] == "green forest photo"
    assert not any(str(v).startswith("/") for f in fields.values() for v in f.values())


@pytest.mark.parametrize("host,key,warns", [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
    ("0.0.0.0", None, True), ("192.168.1.20", None, True), ("search.internal", None, True),
    ("0.0.0.0", "s3cret", False),
])
def test_bind_warning_beyond_loopback_without_a_key(tmp_path, host, key, warns):
    s = settings_for(tmp_path, service={"host": host, "api_key": key})
    warning = bind_warning(s)
    assert (warning is not None) == warns
    if warns:
        assert f"serving on {host}:8080, beyond loopback, with no API key" in warning
