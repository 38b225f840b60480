"""Publishing the Elasticsearch image index safely: the publish checks, pruning, rollback, and
the whole build (tiny CLIP, staging store) against the double, next to the FAISS backend."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexers.errors import IndexStoreError, PublishRefusedError
from indexers.es_image_build import build_es_image_index, publish_es_images
from indexers.es_images import open_es_image_index
from indexers.es_schema import EsSettings
from indexers.image_build import build_image_index
from indexers.images import ImageIndexConfig, load_image_index
from indexers.publish import PublishPolicy, rollback_images

from .conftest import N_GOOD

ALIAS = "img"
D = 16


@pytest.fixture()
def settings(es):
    return EsSettings(hosts=es.url, alias=ALIAS, retry_backoff_s=0.001, max_backoff_s=0.01)


def catalogue(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"img{k:04d}" for k in range(n)]
    return ids, [{"path": f"/c/{i}.png", "tags": []} for i in ids], rng.normal(size=(n, D))


def publish(settings, n, **kw):
    return publish_es_images(*catalogue(n), "enc", settings, **kw)


# -- the publish checks ------------------------------------------------------------------------


def test_count_drop_and_reject_rate_refuse_unless_forced(es, settings):
    first = publish(settings, 100)
    before = set(es.indices)
    with pytest.raises(PublishRefusedError, match=r"40 documents is 40\.0% of the 100 in live "
                       rf"version {first['version']}.*{first['version']} stays live"):
        publish(settings, 40)
    with pytest.raises(PublishRefusedError, match=r"30 of 130 records were rejected"):
        publish(settings, 100, rejected=30)
    assert set(es.indices) == before and es.aliases == {ALIAS: {first["version"]}}

    forced = publish(settings, 40, policy=PublishPolicy(force=True))
    check = forced["publish_check"]
    assert check["forced"] and not check["passed"] and check["live_count"] == 100
    assert es.aliases == {ALIAS: {forced["version"]}} and forced["count"] == 40
    assert forced["previous_version"] == first["version"]


def test_an_alias_serving_something_else_is_never_swapped(es, settings):
    es.handle("PUT", "/tpl-v1", {}, {"mappings": {"_meta": {"udrl": {"schema_version": 2}}}})
    es.handle("POST", "/_aliases", {}, {"actions": [{"add": {"index": "tpl-v1",
                                                              "alias": ALIAS}}]})
    with pytest.raises(IndexStoreError, match="not a udrl image index"):
        publish(settings, 10)
    assert set(es.indices) == {"tpl-v1"} and es.aliases == {ALIAS: {"tpl-v1"}}


def test_keep_versions_never_deletes_the_live_or_the_last_good_index(es, settings):
    es.handle("PUT", f"/{ALIAS}-vintage", {}, {})  # matches img-v* but was not built here
    versions = [publish(settings, 50 + i, keep_versions=1)["version"] for i in range(4)]
    # keep 1: the live one stays, and so does the one it replaced (rollback target)
    assert set(es.indices) == {*versions[-2:], f"{ALIAS}-vintage"}
    rep = publish(settings, 60, keep_versions=3)
    assert set(es.indices) == {*versions[-2:], rep["version"], f"{ALIAS}-vintage"}
    assert rep["pruned"] == []


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_moves_the_alias_and_open_indexes_follow(es, settings):
    first = publish(settings, 30)
    second = publish(settings, 31)
    with open_es_image_index(settings, "enc", D) as ix:
        q = catalogue(31)[2][30:31]  # image img0030: only in the second version
        assert ix.search(q, k=1)[0][0].id == "img0030"
        out = rollback_images("elasticsearch", es=settings)
        assert out == {"backend": "elasticsearch", "version": first["version"],
                       "previous_version": second["version"], "count": 30}
        assert ix.search(q, k=1)[0][0].id != "img0030"  # searches go through the alias
    with pytest.raises(IndexStoreError, match="nothing to roll back to"):
        rollback_images("elasticsearch", es=settings)
    out = rollback_images("elasticsearch", es=settings, to=second["version"])
    assert out["version"] == second["version"] and es.aliases == {ALIAS: {second["version"]}}
    with pytest.raises(IndexStoreError, match="is not an index built for alias"):
        rollback_images("elasticsearch", es=settings, to="other-v1")


# -- the whole build: encode locally, publish to the cluster ------------------------------------


def test_build_publishes_the_faiss_backends_vectors_and_reuses_them(
        es, settings, image_manifest, tiny_encoder, tmp_path):
    cfg = ImageIndexConfig(model_name="udrl-tiny-clip", pretrained=None, batch_size=8)
    staging = tmp_path / "images-es"
    first = build_es_image_index(image_manifest, staging, settings, encoder=tiny_encoder,
                                 cfg=cfg, progress=False)
    assert json.loads(json.dumps(first)) == first
    assert (first["count"], first["encoded"], first["reused"], first["rejected"]) == (
        N_GOOD, N_GOOD, False, 6)
    rows = [json.loads(x) for x in Path(first["rejects_path"]).read_text().splitlines()]
    assert {r["id"] for r in rows} >= {"ghost", "remote", "corrupt"}

    # the FAISS backend over the same catalogue answers the same top-10 for text queries
    faiss_root = tmp_path / "images"
    build_image_index(image_manifest, faiss_root, tiny_encoder, replace(cfg, index_type="flat"),
                      progress=False)
    faiss_ix = load_image_index(faiss_root, tiny_encoder.name, tiny_encoder.dim)
    texts = ["red pattern", "a green square", "blue"]
    with open_es_image_index(settings, tiny_encoder.name, tiny_encoder.dim) as ix:
        for filters in (None, {"license": "cc0"}, {"tags": "featured"}):
            got = ix.search_text(texts, tiny_encoder, 10, filters)
            want = faiss_ix.search_text(texts, tiny_encoder, 10, filters)
            assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]
            assert [[h.metadata for h in r] for r in got] == [[h.metadata for h in r]
                                                              for r in want]
        assert ix.meta["source"] == str(image_manifest.resolve())

    # same catalogue, same files: the staging vectors are published again without encoding
    again = build_es_image_index(image_manifest, staging, settings, encoder=tiny_encoder,
                                 cfg=cfg, progress=False)
    assert (again["encoded"], again["reused"], again["previous_version"]) == (
        0, True, first["version"])
    # a touched image file is encoded again
    img = image_manifest.parent / "imgs" / "set0" / "img00.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = build_es_image_index(image_manifest, staging, settings, encoder=tiny_encoder,
                                 cfg=cfg, progress=False)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (third["reused"], third["encoded"]) == (False, N_GOOD)


def test_a_refused_build_is_forced_without_encoding_again(es, settings, image_manifest,
                                                         tiny_encoder, tmp_path):
    cfg = ImageIndexConfig(model_name="udrl-tiny-clip", pretrained=None, batch_size=8)
    publish_es_images(*catalogue(200), tiny_encoder.name, replace(settings), rejected=0)
    with pytest.raises(PublishRefusedError, match=r"40 documents is 20\.0% of the 200.*"
                       r"without encoding again"):
        build_es_image_index(image_manifest, tmp_path / "st", settings, encoder=tiny_encoder,
                             cfg=cfg, progress=False)
    forced = build_es_image_index(image_manifest, tmp_path / "st", settings,
                                  encoder=tiny_encoder, cfg=cfg, progress=False,
                                  policy=PublishPolicy(force=True))
    assert (forced["count"], forced["encoded"], forced["reused"]) == (N_GOOD, 0, True)
