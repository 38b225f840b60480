"""The search page, its security headers and the thumbnail route (plugin.web), through the real
app and pipeline; the browser side is in test_browser.py."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexers.images import ImageIndex
from plugin import web
from plugin.config import get_settings
from plugin.pipeline import Pipeline
from plugin.service import create_app

from .conftest import settings_for
from .fakes import FakeRewriter, HashEncoder

CAPTIONS = ["red cabin photo", "green forest photo", "blue beach photo", "red dog photo"]


@pytest.fixture
def photos(tmp_path):
    """An image index of 4 PNGs (400x300) plus three awkward rows: an id holding ``../``
    whose recorded file exists, an id whose recorded file is not an image, a corrupt PNG."""
    folder = tmp_path / "catalog"
    folder.mkdir()
    paths = []
    for i in range(4):
        p = folder / f"p{i}.png"
        Image.new("RGB", (400, 300), (60 * i, 120, 200)).save(p)
        paths.append(p)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    ids = ["p0", "p1", "p2", "p3", "../p0", "notes", "broken"]
    files = paths + [paths[0], secret, broken]
    captions = CAPTIONS + ["red cabin photo", "text file", "broken photo"]
    meta = [{"path": str(f), "title": c} for f, c in zip(files, captions)]
    return ImageIndex.build(HashEncoder().encode_texts(captions), ids, meta, HashEncoder.name)


@pytest.fixture
def client_with(tmp_path, intent_detector, template_index, photos):
    made = []

    def make(index=photos, **sections):
        pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path, **sections),
                        image_index=index, image_encoder=HashEncoder(),
                        template_index=template_index)
        app = create_app(pipe)
        app.dependency_overrides[get_settings] = lambda: pipe.settings
        client = TestClient(app)
        client.__enter__()
        made.append((client, pipe))
        return client

    yield make
    for client, pipe in made:
        client.__exit__(None, None, None)
        pipe.batcher.close()


@pytest.fixture
def reads(monkeypatch):
    """Every file the thumbnail route opens (it opens files through thumbnail_bytes only)."""
    opened = []
    real = web.thumbnail_bytes

    def spy(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(web, "thumbnail_bytes", spy)
    return opened


def test_page_and_assets_carry_a_strict_csp(client_with):
    client = client_with()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/ui/app.js"' in page.text and "<script>" not in page.text  # no inline script
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "http" not in csp and "*" not in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css"),
                        ("/ui/favicon.svg", "image/svg+xml")):
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert r.headers["content-security-policy"] == csp
    # the API keeps its JSON and gains nosniff and no framing, not the page's CSP
    health = client.get("/healthz")
    assert health.json() == {"status": "ok"} and health.headers["x-frame-options"] == "DENY"
    assert health.headers["x-content-type-options"] == "nosniff"
    assert client.get("/ui/../plugin/web.py").status_code == 404


def test_page_config_tells_defaults_and_whether_a_key_is_needed(client_with):
    open_cfg = client_with(pipeline={"k": 7}, generation={"image_length": 5}).get("/ui/config")
    assert open_cfg.json()["auth"] is False
    assert open_cfg.json()["defaults"] == {"k": 7, "fusion": True, "relevance": 4,
                                           "length": {"image": 5, "template": 10}}
    keyed = client_with(service={"api_key": "s3cret"})
    assert keyed.get("/ui/config").json()["auth"] is True  # readable without the key
    assert keyed.get("/").status_code == 200


def test_search_lists_are_each_channels_own_top_k(client_with):
    client = client_with()
    body = {"query": "red cabin", "task": "image", "length": 3, "k": 3}
    plain = client.post("/v1/search", json=body).json()["modalities"][0]
    assert plain["lists"] == {}  # only on request
    m = client.post("/v1/search", json={**body, "lists": True}).json()["modalities"][0]
    assert m["fused"] and set(m["lists"]) == {"raw", "rewrite"}
    assert [r["id"] for r in m["results"]] == [r["id"] for r in plain["results"]]
    for channel, hits in m["lists"].items():
        assert len(hits) == 3
        assert [h["ranks"] for h in hits] == [{channel: 1}, {channel: 2}, {channel: 3}]
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the fused list's ranks point into those lists
    for r in m["results"]:
        for channel, rank in r["ranks"].items():
            if rank <= 3:
                assert m["lists"][channel][rank - 1]["id"] == r["id"]
    off = client.post("/v1/search", json={**body, "lists": True, "fusion": False}).json()
    assert set(off["modalities"][0]["lists"]) == {"rewrite"}


def test_thumbnail_of_an_indexed_image(client_with, reads):
    client = client_with()
    r = client.get("/v1/thumbnail", params={"id": "p2"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "content-security-policy" in r.headers and r.headers["x-content-type-options"] == "nosniff"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (web.THUMB_PX, web.THUMB_PX * 3 // 4)  # 400x300 scaled to 192 wide
    assert [p.name for p in reads] == ["p2.png"]


@pytest.mark.parametrize("bad", [
    "p9",                    # not in the index
    "../p0",                 # in the index, but holds ../: refused before the lookup
    "p0/../p1", "..", "..\\p0", "p0\x00", "../../secret.txt", "/etc/passwd",
    "notes",                 # in the index, but its recorded file is not an image
])
def test_thumbnail_refuses_other_ids_without_reading_a_file(client_with, reads, bad):
    r = client_with().get("/v1/thumbnail", params={"id": bad})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert reads == []


def test_thumbnail_of_an_unreadable_file_is_404_not_500(client_with):
    r = client_with().get("/v1/thumbnail", params={"id": "broken"})
    assert r.status_code == 404 and "cannot be read" in r.json()["error"]["message"]


def test_thumbnail_follows_the_live_index_and_the_key(client_with, photos, tmp_path):
    client = client_with(service={"api_key": "s3cret"})
    assert client.get("/v1/thumbnail", params={"id": "p1"}).status_code == 401
    ok = client.get("/v1/thumbnail", params={"id": "p1"}, headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200
    smaller = ImageIndex.build(HashEncoder().encode_texts(CAPTIONS[:1]), ["p0"],
                               [photos.metadata[0]], HashEncoder.name)
    client.app.state.pipeline.image_index = smaller  # a new version was published
    gone = client.get("/v1/thumbnail", params={"id": "p1"}, headers={"X-API-Key": "s3cret"})
    assert gone.status_code == 404


def test_no_image_index_means_no_thumbnails(client_with, tmp_path, intent_detector):
    pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path))
    with TestClient(create_app(pipe)) as client:
        assert client.get("/v1/thumbnail", params={"id": "p0"}).status_code == 404
        assert client.get("/ui/config").json()["indexes"] == {"image": False, "template": False}
    pipe.batcher.close()
