"""Hot reload (``plugin.reload``): a served app picks up a new template or image index version,
a rollback, a new rewriter, through ``POST /admin/reload`` and the watch; requests in flight
finish on the pipeline they started on; a load that fails keeps the old version serving.

The workspace holds real published indexes (tantivy templates, a FAISS image index over
``HashEncoder`` vectors); the rewriter is ``FakeRewriter`` unless a test says otherwise.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from indexers.errors import IndexStoreError
from indexers.images import ImageIndex, load_image_index
from indexers.store import IndexStore
from indexers.template_backends import build_template_index, open_template_index
from plugin.config import get_settings
from plugin.pipeline import Pipeline
from plugin.published import Stamp, read_published
from plugin.service import create_app
from rewriters.errors import ConfigError

from ..indexers.es_double import EsDouble
from ..indexers.template_fixtures import make_templates
from .conftest import settings_for
from .fakes import FakeRewriter, HashEncoder

KEY = "reload-test-key"
SEARCH = {"query": "modern poster", "task": "template", "k": 3}


def publish_templates(settings, n: int = 40, seed: int = 0) -> str:
    """Build and publish a tantivy template version; its name."""
    records = make_templates(n, seed=seed).records
    return build_template_index("tantivy", records, root=settings.template_index_dir).version


def publish_images(settings, n: int = 12) -> str:
    """Save a HashEncoder image index as a new complete version and publish it; its name."""
    enc = HashEncoder()
    captions = [f"photo {i} of a red cabin" for i in range(n)]
    img = ImageIndex.build(enc.encode_texts(captions), [f"img{i}" for i in range(n)],
                           [{"title": c} for c in captions], enc.name)
    store = IndexStore(settings.image_index_dir)
    version = store.new_version()
    img.save(version)
    store.mark_complete(version)
    store.publish(version)
    return version.name


def fake_engine(version: str) -> FakeRewriter:
    engine = FakeRewriter()
    engine.version = version
    return engine


def write_rewriter(settings, version: str) -> None:
    """A rewriter folder whose udrl.json names ``version`` (the engine comes from the test's
    ``engine_loader``; the default loader cannot load it)."""
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    (settings.model_dir / "udrl.json").write_text(json.dumps({"version": version}))


@pytest.fixture
def serve(tmp_path, intent_detector):
    """``serve(**service) -> (client, app)``: the app over the workspace's published indexes,
    owning its pipeline; the watch is off unless ``reload_interval_s`` is given."""
    clients = []

    def make(**service):
        settings = settings_for(tmp_path, index={"dense": False},
                                service={"reload_interval_s": 0, **service})
        if not settings.template_index_dir.exists():
            publish_templates(settings)
            publish_images(settings)
        enc = HashEncoder()
        pipe = Pipeline(FakeRewriter(), intent_detector, settings,
                        image_index=load_image_index(settings.image_index_dir, enc.name, enc.dim),
                        image_encoder=enc,
                        template_index=open_template_index("tantivy",
                                                           root=settings.template_index_dir))
        app = create_app(pipe, own=True)
        app.dependency_overrides[get_settings] = lambda: settings
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client, app

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def raises(error: type[Exception], fn, *args) -> bool:
    try:
        fn(*args)
    except error:
        return True
    return False


def eventually(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def template_version(client, **headers) -> str:
    r = client.post("/v1/search", json=SEARCH, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["modalities"][0]["index_version"]


def test_post_reload_serves_a_new_template_version_and_a_rollback(serve):
    client, app = serve()
    settings = app.state.pipeline.settings
    v1 = template_version(client)
    client.post("/v1/rewrite", json={"query": "modern poster", "task": "template"})
    v2 = publish_templates(settings, seed=1)
    assert template_version(client) == v1  # nothing reloads by itself with the watch off

    r = client.post("/admin/reload")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == "ok" and body["trigger"] == "api"
    assert body["components"] == {"template_index": {"old": v1, "new": v2, "result": "ok",
                                                     "error": None}}
    assert body["served"]["template_index"] == v2
    assert template_version(client) == v2
    # only the template index changed: the cache and the micro-batcher carried over
    again = client.post("/v1/rewrite", json={"query": "modern poster", "task": "template"})
    assert again.json()["prompts"][0]["source"] == "cache"

    ready = client.get("/readyz").json()
    assert ready["components"]["template_index"]["version"] == v2
    assert ready["reload"]["interval_s"] == 0 and ready["reload"]["last"]["result"] == "ok"
    unchanged = client.post("/admin/reload").json()
    assert unchanged["result"] == "unchanged" and unchanged["components"] == {}
    assert client.get("/readyz").json()["reload"]["last"]["at"] == body["at"]  # kept

    IndexStore(settings.template_index_dir).rollback()  # `udrl index rollback templates`
    back = client.post("/admin/reload").json()
    assert back["components"]["template_index"]["new"] == v1
    assert template_version(client) == v1
    metrics = client.get("/metrics").text
    assert 'udrl_reloads_total{component="template_index",result="ok"} 2.0' in metrics
    # one model call for 4 searches and 2 rewrites of one query: the cache outlived 2 reloads
    assert 'udrl_cache_lookups_total{result="miss"} 1.0' in metrics
    assert 'udrl_cache_lookups_total{result="hit"} 5.0' in metrics


def test_requests_in_flight_finish_on_the_pipeline_they_started_on(serve):
    client, app = serve()
    reloader, old = app.state.reloader, app.state.pipeline
    publish_templates(app.state.pipeline.settings, seed=1)
    with reloader.hold() as held:
        assert held is old
        assert reloader.reload("api").result == "ok"
        new = app.state.pipeline
        assert new is not old and new.batcher is old.batcher
        time.sleep(0.2)  # the retiring thread waits for this request
        assert old.template_index.search("modern", k=3) is not None  # still open
    # closed once its last request was done
    assert eventually(lambda: raises(IndexStoreError, old.template_index.search, "modern"))
    assert template_version(client) == new.template_index.version  # the shared batcher runs


def test_a_failed_load_keeps_the_old_version_and_is_reported(serve):
    client, app = serve(api_key=KEY)
    settings = app.state.pipeline.settings
    key = {"X-API-Key": KEY}
    v1 = template_version(client, **key)
    assert client.post("/admin/reload").status_code == 401  # behind the key, as /v1/*
    store = IndexStore(settings.template_index_dir)
    broken = store.new_version()  # complete but empty: no tantivy files, no meta
    store.mark_complete(broken)
    store.publish(broken)

    r = client.post("/admin/reload", headers=key)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "reload_failed"
    assert err["message"].startswith("reload failed, the old version keeps serving: "
                                     f"template_index: {settings.template_index_dir}/versions/"
                                     f"{broken.name}/")
    assert template_version(client, **key) == v1
    last = client.get("/readyz").json()["reload"]["last"]
    assert last["result"] == "failed"
    assert last["components"]["template_index"]["old"] == v1
    assert last["components"]["template_index"]["new"] == v1
    # the watch does not retry a version that failed; a new one loads
    assert app.state.reloader.reload("watch").result == "unchanged"
    v3 = publish_templates(settings, seed=3)
    assert app.state.reloader.reload("watch").components["template_index"].new == v3
    assert template_version(client, **key) == v3
    metrics = client.get("/metrics").text
    assert 'udrl_reloads_total{component="template_index",result="failed"} 1.0' in metrics
    assert 'udrl_reloads_total{component="template_index",result="ok"} 1.0' in metrics


def test_a_new_rewriter_is_loaded_and_the_old_model_retired(serve):
    client, app = serve()
    reloader, old = app.state.reloader, app.state.pipeline
    loading, release = threading.Event(), threading.Event()

    def slow_loader(settings, template_index):
        loading.set()
        release.wait(10)
        return fake_engine("fake-v2")

    reloader.engine_loader = slow_loader
    first = client.post("/v1/rewrite", json={"query": "red cabin", "task": "image"}).json()
    assert first["model_version"] == "fake-v1"
    write_rewriter(old.settings, "fake-v2")  # as `udrl train` leaves it
    reloading = threading.Thread(target=lambda: reloader.reload("api"))
    reloading.start()
    assert loading.wait(10)
    busy = client.post("/admin/reload")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "reload_in_progress"
    during = client.post("/v1/rewrite", json={"query": "red cabin", "task": "image"})
    assert during.json()["model_version"] == "fake-v1"  # served while the new one loads
    release.set()
    reloading.join(10)

    report = reloader.last
    assert report.components["rewriter"].model_dump() == {
        "old": "fake-v1", "new": "fake-v2", "result": "ok", "error": None}
    again = client.post("/v1/rewrite", json={"query": "red cabin", "task": "image"}).json()
    assert again["model_version"] == "fake-v2" and again["prompts"][0]["source"] == "model"
    assert app.state.pipeline.batcher is not old.batcher
    # the old model's worker is stopped once its requests are done
    assert eventually(lambda: raises(ConfigError, old.batcher.submit, []))
    assert client.get("/readyz").json()["components"]["rewriter"]["version"] == "fake-v2"
    metrics = client.get("/metrics").text  # counters go on across the swap
    assert 'udrl_rewrite_paths_total{path="rewrite"} 3.0' in metrics


def test_the_real_engine_loader_reloads_a_retrained_model(tmp_path, tiny_model_dir,
                                                          intent_detector):
    from plugin.hook import load_engine

    settings = settings_for(tmp_path, index={"dense": False},
                            pipeline={"engine": "torch"}, service={"reload_interval_s": 0})
    shutil.copytree(tiny_model_dir, settings.model_dir)
    pipe = Pipeline(load_engine(settings), intent_detector, settings)
    app = create_app(pipe, own=True)
    with TestClient(app) as client:
        v1 = pipe.model_version
        meta = json.loads((settings.model_dir / "udrl.json").read_text())
        meta["version"] = v1 + "-retrained"  # what a new `udrl train` changes
        (settings.model_dir / "udrl.json").write_text(json.dumps(meta))
        r = client.post("/admin/reload").json()
        assert r["components"]["rewriter"] == {"old": v1, "new": v1 + "-retrained",
                                               "result": "ok", "error": None}
        assert client.get("/readyz").json()["components"]["rewriter"]["engine"] == "Rewriter"


def test_the_watch_takes_pointers_at_once_and_files_once_they_settle(serve):
    _, app = serve()
    reloader, settings = app.state.reloader, app.state.pipeline.settings
    reloader.engine_loader = lambda s, t: fake_engine("fake-v2")
    write_rewriter(settings, "fake-v2")
    v2 = publish_templates(settings, seed=2)
    first = reloader.reload("watch")  # the pointer moved; udrl.json may still be written
    assert list(first.components) == ["template_index"]
    assert first.components["template_index"].new == v2
    assert app.state.pipeline.model_version == "fake-v1"
    second = reloader.reload("watch")  # the same on two polls: it has settled
    assert list(second.components) == ["rewriter"] and second.trigger == "watch"
    assert app.state.pipeline.model_version == "fake-v2"


def test_a_replaced_engine_is_closed_once_no_pipeline_uses_it(serve):
    _, app = serve()
    reloader, settings = app.state.reloader, app.state.pipeline.settings
    old = app.state.pipeline.rewriter
    reloader.engine_loader = lambda s, t: fake_engine("fake-v2")
    write_rewriter(settings, "fake-v2")
    assert reloader.reload("api").components["rewriter"].result == "ok"
    for t in list(reloader._threads):  # the retire thread: no request holds the old pipeline
        t.join(10)
    assert getattr(old, "closed", False)
    assert not getattr(app.state.pipeline.rewriter, "closed", False)


def test_the_watch_thread_started_with_the_app_follows_publishes(serve):
    client, app = serve(reload_interval_s=0.1)
    settings = app.state.pipeline.settings
    v2 = publish_templates(settings, seed=2)
    image_v2 = publish_images(settings, n=7)
    deadline = time.monotonic() + 10
    while template_version(client) != v2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ready = client.get("/readyz").json()
    assert ready["components"]["template_index"]["version"] == v2
    while ready["components"]["image_index"]["version"] != image_v2 and \
            time.monotonic() < deadline:
        ready = client.get("/readyz").json()
    assert ready["components"]["image_index"]["version"] == image_v2
    assert ready["reload"]["interval_s"] == 0.1 and ready["reload"]["last"]["trigger"] == "watch"
    image = client.post("/v1/search", json={"query": "red cabin", "task": "image", "k": 20})
    assert image.json()["modalities"][0]["index_version"] == image_v2
    ids = {r["id"] for r in image.json()["modalities"][0]["results"]}
    assert ids and ids <= {f"img{i}" for i in range(7)}  # the new version holds 7 images


def test_published_stamps(tmp_path):
    settings = settings_for(tmp_path)
    assert all(s == Stamp(None) for s in read_published(settings).values())  # nothing yet
    write_rewriter(settings, "m-1")
    before = read_published(settings)
    assert before["rewriter"].version == "m-1"
    (settings.model_dir / "onnx").mkdir()
    (settings.model_dir / "onnx" / "udrl_export.json").write_text("{}")  # `udrl export`
    after = read_published(settings)
    assert after["rewriter"].version == "m-1" and after["rewriter"] != before["rewriter"]
    (settings.model_dir / "udrl.json").write_text('{"vers')  # half written by `udrl train`
    assert read_published(settings)["rewriter"] == Stamp(None)  # not loadable yet


def test_elasticsearch_alias_moves_are_reloaded(tmp_path, intent_detector):
    from indexers.es_index import EsSettings
    from plugin.hook import load_pipeline

    records = make_templates(30, seed=5).records
    with EsDouble() as es:
        settings = settings_for(tmp_path, index={"dense": False, "template_backend":
                                                 "elasticsearch", "es_url": es.url,
                                                 "es_alias": "tpl"},
                                service={"reload_interval_s": 0})
        es_cfg = EsSettings(hosts=es.url, alias="tpl")
        v1 = build_template_index("elasticsearch", records, settings=es_cfg).version
        pipe = load_pipeline(settings, rewriter=FakeRewriter(), tasks=["template"])
        assert pipe.template_index.version == v1
        app = create_app(pipe, own=True)
        with TestClient(app) as client:
            v2 = build_template_index("elasticsearch", records, settings=es_cfg).version
            r = client.post("/admin/reload").json()
            assert r["components"]["template_index"] == {"old": v1, "new": v2,
                                                         "result": "ok", "error": None}
            assert template_version(client) == v2


def test_the_route_is_documented(serve):
    client, _ = serve()
    op = client.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]
    assert op["security"] == [{"ApiKey": []}]
    assert set(op["responses"]) == {"200", "401", "409", "413", "500", "503"}
    assert op["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}
