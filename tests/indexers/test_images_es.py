"""The Elasticsearch image index against the local double: same hits as FAISS, filters as kNN
filter clauses, the options each cluster version takes, and the bulk load's failure handling.

The double's kNN is exact, so an exact FAISS index (flat) over the same vectors must give the
same top-10 ids in the same order, with the same cosines (up to float rounding).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from indexers.catalog_images import RejectLog
from indexers.errors import ConfigError, EncoderMismatchError, IndexStoreError
from indexers.es_image_build import pack_vector, publish_es_images
from indexers.es_images import EsImageConfig, image_filter_clauses, open_es_image_index
from indexers.es_schema import EsSettings
from indexers.image_backends import IMAGE_BACKENDS, ImageSearchIndex, open_image_index
from indexers.images import ImageIndex, ImageIndexConfig


N, D, Q = 263, 64, 7  # awkward sizes: 263 docs in bulk chunks of 100 (100, 100, 63)
ALIAS = "img"
ENC = "test-clip-64"


def _meta(k: int) -> dict:
    """Image k: license cc0 for odd k; tags red for k % 3 == 0 else blue, plus "featured" for
    k % 5 == 0; meta.src s0..s3 = k % 4; meta.year 2020 + k % 2."""
    tags = ["red" if k % 3 == 0 else "blue"] + (["featured"] if k % 5 == 0 else [])
    return {"path": f"/cat/img{k:03d}.png", "title": f"pattern {k}", "tags": tags,
            "license": "cc0" if k % 2 else "cc-by", "meta": {"src": f"s{k % 4}",
                                                               "year": 2020 + k % 2}}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(N, D)).astype(np.float32)  # (N, D), not unit length on purpose
    ids = [f"img{k:03d}" for k in range(N)]
    queries = rng.normal(size=(Q, D)).astype(np.float32)  # (Q, D)
    return ids, [_meta(k) for k in range(N)], vecs, queries


@pytest.fixture(scope="module")
def flat(data):
    ids, metas, vecs, _ = data
    return ImageIndex.build(vecs, ids, metas, ENC, ImageIndexConfig(pretrained=None,
                                                                     index_type="flat"))


@pytest.fixture()
def settings(es):
    return EsSettings(hosts=es.url, alias=ALIAS, retry_backoff_s=0.001, max_backoff_s=0.01,
                      bulk_chunk_size=100, max_retries=1)


def publish(data, settings, **kw):
    ids, metas, vecs, _ = data
    return publish_es_images(ids, metas, vecs, ENC, settings, **kw)


def ids_of(results):
    return [[h.id for h in hits] for hits in results]


# -- same hits as FAISS ------------------------------------------------------------------------


FILTERS = [None, {"license": "cc0"}, {"tags": "red"}, {"tags": ["blue", "featured"]},
           {"meta.src": "s1"}, {"meta.year": 2021, "license": "cc0"},
           {"license": "cc0", "tags": "featured", "meta.src": "s3"},  # 1 in 60: few matches
           {"colour": "red"}, {"license": "none-such"}]  # no such field / value: no hits


@pytest.mark.parametrize("version", ["9.1.0", "9.3.0"])  # float lists, base64 vectors
@pytest.mark.parametrize("filters", FILTERS)
def test_same_top10_as_exact_faiss(es, settings, data, flat, version, filters):
    es.version = version
    publish(data, settings, config=EsImageConfig(index_type="hnsw"))
    with open_es_image_index(settings, ENC, D) as ix:
        got = ix.search(data[3], k=10, filters=filters)
    want = flat.search(data[3], k=10, filters=filters)
    assert ids_of(got) == ids_of(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)
        assert [h.metadata for h in g] == [h.metadata for h in w]  # the FAISS hit's shape
    if filters == {"colour": "red"}:
        assert got == [[]] * Q


def test_one_msearch_with_filters_as_knn_filter_clauses(es, settings, data):
    publish(data, settings)
    with open_es_image_index(settings, ENC, D) as ix:
        ix.search(data[3][:3], k=5, filters={"tags": ["red", "featured"], "meta.src": "s0"})
    (call,) = es.calls("POST", "/_msearch$")
    bodies = call.body[1::2]
    assert len(bodies) == 3 and call.path == f"/{ALIAS}/_msearch"
    knn = bodies[0]["knn"]
    assert knn["filter"] == [{"term": {"metadata.tags": "red"}},
                             {"term": {"metadata.tags": "featured"}},
                             {"term": {"metadata.meta.src": "s0"}}]
    assert (knn["field"], knn["k"], knn["num_candidates"], bodies[0]["size"]) == (
        "vector", 5, 100, 5)
    q = data[3][0] / np.linalg.norm(data[3][0])
    np.testing.assert_allclose(knn["query_vector"], q, rtol=1e-6)  # unit queries
    assert bodies[0]["_source"] == ["metadata"]  # never the vector


@pytest.mark.parametrize(("filters", "clauses"), [
    ({}, []),
    ({"tags": []}, [{"exists": {"field": "metadata.tags"}}]),
    ({"meta": "x"}, [{"term": {"metadata.meta": "x"}}]),  # an object has no value: no match
    ({"license": True, "meta.a.b": 2}, [{"term": {"metadata.license": True}},
                                        {"term": {"metadata.meta.a.b": 2}}]),
])
def test_filter_clauses_by_hand(filters, clauses):
    assert image_filter_clauses(filters) == clauses


@pytest.mark.parametrize("bad", [{"meta": {"src": "s1"}}, {"title": None}, ["license"]])
def test_filters_without_an_exact_translation_are_refused(bad):
    with pytest.raises(ConfigError):
        image_filter_clauses(bad)


def test_refusals_send_nothing(es, settings, data):
    publish(data, settings)
    with open_es_image_index(settings, ENC, D) as ix:
        n = len(es.requests)
        for kw in ({"k": 0}, {"k": 10_001}, {"query_vecs": np.zeros((2, D + 1))},
                   {"filters": {"meta": {"a": 1}}}):
            with pytest.raises(ConfigError):
                ix.search(**{"query_vecs": data[3], **kw})
        assert len(es.requests) == n
        assert ix.search(np.zeros((0, D), np.float32)) == []


# -- mapping and options by cluster version ----------------------------------------------------


def test_mapping_is_a_strict_dense_vector_with_the_options(es, settings, data):
    rep = publish(data, settings, config=EsImageConfig(m=24, ef_construction=128))
    mapping = es.indices[rep["version"]].mappings
    assert mapping["dynamic"] == "strict"
    assert mapping["properties"]["vector"] == {
        "type": "dense_vector", "dims": D, "index": True, "similarity": "dot_product",
        "index_options": {"type": "int8_hnsw", "m": 24, "ef_construction": 128}}
    assert mapping["properties"]["metadata"] == {"type": "flattened", "ignore_above": 8191}
    assert set(mapping["properties"]) == {"id", "vector", "metadata"}
    meta = mapping["_meta"]["udrl"]
    assert (meta["schema"], meta["encoder"], meta["dim"], meta["count"]) == (
        "udrl-images/1", ENC, D, N)
    assert meta["es_config"]["index_type"] == "int8_hnsw" and meta["previous_version"] is None


@pytest.mark.parametrize(("version", "index_type", "rescore"), [
    ("9.1.0", "int8_hnsw", {"oversample": 3.0}),
    ("8.18.0", "bbq_hnsw", {"oversample": 3.0}),
    ("8.17.0", "int8_hnsw", None),  # rescore_vector is 8.18+: left out
    ("9.1.0", "hnsw", None),  # float vectors: nothing to rescore
])
def test_rescore_vector_only_where_the_cluster_has_it(es, settings, data, version, index_type,
                                                      rescore):
    es.version = version
    publish(data, settings, config=EsImageConfig(index_type=index_type))
    with open_es_image_index(settings, ENC, D) as ix:
        assert len(ix.search(data[3][:1], k=3)[0]) == 3
    knn = es.calls("POST", "/_msearch$")[-1].body[1]["knn"]
    assert knn.get("rescore_vector") == rescore


def test_rescoring_asks_for_oversample_x_k_candidates(es, settings, data):
    publish(data, settings)  # int8_hnsw, oversample 3, num_candidates 100
    with open_es_image_index(settings, ENC, D) as ix:
        assert len(ix.search(data[3][:1], k=50)[0]) == 50
    knn = es.calls("POST", "/_msearch$")[-1].body[1]["knn"]
    assert (knn["k"], knn["num_candidates"]) == (50, 150)


def test_query_time_options_override_the_saved_ones(es, settings, data):
    publish(data, settings, config=EsImageConfig(oversample=2.0))
    with open_es_image_index(settings, ENC, D, EsImageConfig(num_candidates=400,
                                                             oversample=0)) as ix:
        ix.search(data[3][:1], k=3)
        assert ix.config.index_type == "int8_hnsw"  # the index options stay the saved ones
    knn = es.calls("POST", "/_msearch$")[-1].body[1]["knn"]
    assert knn["num_candidates"] == 400 and "rescore_vector" not in knn


def test_bbq_needs_64_dims_and_8_16(es, settings, data):
    ids, metas, vecs, _ = data
    with pytest.raises(ConfigError, match="at least 64 dimensions"):
        publish_es_images(ids, metas, vecs[:, :32], ENC, settings,
                          config=EsImageConfig(index_type="bbq_hnsw"))
    es.version = "8.15.3"
    with pytest.raises(IndexStoreError, match="bbq_hnsw needs 8.16"):
        publish(data, settings, config=EsImageConfig(index_type="bbq_hnsw"))
    assert es.indices == {}  # refused before anything was created


def test_base64_vectors_from_9_3_float_lists_before(es, settings, data):
    ids, metas, vecs, _ = data
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for version, kind in (("9.2.1", list), ("9.3.0", str)):
        es.version = version
        rep = publish(data, settings)
        first = next(b for b in es.calls("PUT", "/_bulk$") if b.body[0]["index"]["_index"]
                     == rep["version"]).body[1]
        assert isinstance(first["vector"], kind) and rep["vectors_as"] == (
            "base64" if kind is str else "floats")
        if kind is str:
            raw = np.frombuffer(base64.b64decode(first["vector"]), dtype=">f4")
            np.testing.assert_array_equal(raw, unit[0].astype(np.float32))
            assert first["vector"] == pack_vector(unit[0])
        assert {k: v for k, v in first.items() if k != "vector"} == {"id": ids[0],
                                                                     "metadata": metas[0]}


def test_pack_vector_is_big_endian_float32():
    # 1.0 = 0x3F800000, -2.0 = 0xC0000000 (big-endian bytes)
    assert base64.b64decode(pack_vector(np.array([1.0, -2.0]))) == bytes.fromhex("3f800000c0000000")


# -- bulk load ---------------------------------------------------------------------------------


def test_429s_are_retried_and_partial_failures_become_rejects(es, settings, data, tmp_path):
    es.throttle_docs = {"img001": 2, "img200": 1}
    es.fail_docs = {"img007": (400, "document_parsing_exception")}
    rejects = RejectLog(tmp_path / "rejects.jsonl", truncate=True)
    rep = publish(data, settings, rejects=rejects, what="manifest.jsonl")
    assert (rep["count"], rep["failed"]) == (N - 1, 1)
    assert rep["failures"][0]["id"] == "img007" and rep["failures"][0]["status"] == 400
    (row,) = rejects.rows()
    assert row["file"] == "manifest.jsonl" and row["id"] == "img007"
    assert row["reason"].startswith("elasticsearch refused it (400): document_parsing_exception")
    assert es.aliases == {ALIAS: {rep["version"]}}
    bulks = es.calls("PUT", "/_bulk$")
    # 3 chunks; then only the throttled documents again: img001 twice, img200 once
    assert len(bulks) == 3 + 2 + 1
    assert sorted(b.body[0]["index"]["_id"] for b in bulks if len(b.body) == 2) == [
        "img001", "img001", "img200"]


def test_zero_vectors_are_refused_per_document(es, settings, data):
    ids, metas, vecs, _ = data
    vecs = vecs.copy()
    vecs[5] = 0.0  # no direction: dot_product refuses it (not unit length)
    rep = publish_es_images(ids, metas, vecs, ENC, settings)
    assert [f["id"] for f in rep["failures"]] == ["img005"]
    assert "unit-length" in rep["failures"][0]["reason"]


def test_too_many_failures_leave_the_alias_alone(es, settings, data):
    first = publish(data, settings)
    es.fail_docs = {f"img{k:03d}": (400, "document_parsing_exception") for k in range(20)}
    with pytest.raises(IndexStoreError, match="20 of 263 documents failed"):
        publish(data, settings)
    assert es.aliases == {ALIAS: {first["version"]}} and set(es.indices) == {first["version"]}


# -- opening -----------------------------------------------------------------------------------


def test_open_checks_alias_schema_and_encoder(es, settings, data):
    with pytest.raises(IndexStoreError, match="does not exist"):
        open_es_image_index(settings)
    publish(data, settings)
    with pytest.raises(EncoderMismatchError, match="built by encoder 'test-clip-64'"):
        open_es_image_index(settings, "other-clip", D)
    es.handle("PUT", "/tpl-v1", {}, {"mappings": {"_meta": {"udrl": {"schema_version": 2}}}})
    es.handle("POST", "/_aliases", {}, {"actions": [{"add": {"index": "tpl-v1", "alias": "tpl"}}]})
    from dataclasses import replace

    with pytest.raises(IndexStoreError, match="not a udrl image index"):
        open_es_image_index(replace(settings, alias="tpl"))


def test_registry_opens_either_backend_with_the_same_interface(es, settings, data, flat,
                                                               tmp_path, monkeypatch):
    from indexers import es_images

    publish(data, settings)
    monkeypatch.setattr(es_images, "_PAGE", 50)  # 263 images: 6 pages
    ix = open_image_index("elasticsearch", settings=settings, encoder_name=ENC, dim=D)
    assert isinstance(ix, ImageSearchIndex) and isinstance(flat, ImageSearchIndex)
    assert (len(ix), ix.version, ix.has_dense, ix.logged_queries()) == (
        N, next(iter(es.aliases[ALIAS])), False, set())
    assert sorted(ix.ids) == sorted(flat.ids)
    assert dict(zip(ix.ids, ix.metadata)) == dict(zip(flat.ids, flat.metadata))
    assert len(es.calls("POST", "/_search$")) == 6  # listed once, then cached
    assert len(ix.metadata) == N and len(es.calls("POST", "/_search$")) == 6
    ix.close()
    with pytest.raises(ConfigError, match="allowed: faiss, elasticsearch"):
        open_image_index("milvus")
    assert set(IMAGE_BACKENDS) == {"faiss", "elasticsearch"}
    json.dumps(ix.meta)  # build facts are JSON
