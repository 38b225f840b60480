"""Live checks of the Elasticsearch image index and the hybrid template search: set
UDRL_ES_URL (and, for a secured cluster, UDRL_ES_API_KEY or UDRL_ES_USERNAME and
UDRL_ES_PASSWORD, UDRL_ES_CA_CERTS or UDRL_ES_VERIFY_CERTS=false; see test_templates_live).

Run with ``pytest -m elasticsearch tests/indexers/test_images_live.py``. Every test works under
a fresh random alias and deletes the indices it created. A real cluster's HNSW is approximate,
so the FAISS comparison asks for recall, not identity.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from indexers.es_features import read_features
from indexers.es_image_build import publish_es_images
from indexers.es_images import EsImageConfig, open_es_image_index
from indexers.es_index import build_es_index, connect, open_es_index
from indexers.images import ImageIndex, ImageIndexConfig
from indexers.publish import rollback_images

from .template_fixtures import make_templates
from .text_fakes import TextRandEncoder


@pytest.fixture()
def settings(live_settings):  # the cluster fixture (tests/indexers/conftest.py)
    return live_settings

pytestmark = [
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not os.environ.get("UDRL_ES_URL"), reason="UDRL_ES_URL is not set"),
]

N, D = 400, 64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    ids = [f"img{k:04d}" for k in range(N)]
    metas = [{"path": f"/c/{i}.png", "tags": ["red" if k % 3 == 0 else "blue"],
              "license": "cc0" if k % 2 else "cc-by", "meta": {"src": f"s{k % 4}"}}
             for k, i in enumerate(ids)]
    return ids, metas, rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(5, D))


def features(settings):  # noqa: F811
    es = connect(settings)
    try:
        return read_features(es)
    finally:
        es.close()


def recall(got, want) -> float:
    return float(np.mean([len({h.id for h in g} & {h.id for h in w}) / max(1, len(w))
                          for g, w in zip(got, want)]))


@pytest.mark.parametrize("index_type", ["hnsw", "int8_hnsw", "bbq_hnsw"])
def test_top10_close_to_exact_faiss_with_filters(settings, data, index_type):  # noqa: F811
    ids, metas, vecs, queries = data
    have = features(settings)
    if index_type == "bbq_hnsw" and not have.bbq:
        pytest.skip(f"bbq_hnsw needs Elasticsearch 8.16; the cluster runs {have.version}")
    rep = publish_es_images(ids, metas, vecs, "enc", settings,
                            EsImageConfig(index_type=index_type, num_candidates=N))
    assert rep["count"] == N and rep["failed"] == 0
    assert rep["vectors_as"] == ("base64" if have.base64_vectors else "floats")
    flat = ImageIndex.build(vecs, ids, metas, "enc", ImageIndexConfig(pretrained=None,
                                                                      index_type="flat"))
    with open_es_image_index(settings, "enc", D) as ix:
        for filters in (None, {"license": "cc0", "tags": "red"}, {"meta.src": "s2"}):
            got, want = ix.search(queries, 10, filters), flat.search(queries, 10, filters)
            assert recall(got, want) >= (0.9 if index_type != "bbq_hnsw" else 0.7)
            assert all(filters is None or flat.filter_mask(filters)[flat.ids.index(h.id)]
                       for r in got for h in r)  # every hit passes the filters
            exact = {h.id: h.score for r in want for h in r}
            assert all(abs(h.score - exact[h.id]) < 0.05 for r in got for h in r
                       if h.id in exact)  # cosines, as FAISS reports them


def test_prune_and_rollback(settings, data):  # noqa: F811
    ids, metas, vecs, _ = data
    versions = [publish_es_images(ids[: 300 + i], metas[: 300 + i], vecs[: 300 + i], "enc",
                                  settings, keep_versions=1)["version"] for i in range(3)]
    es = connect(settings)
    try:
        left = set(es.indices.get(index=f"{settings.alias}-v*").body)
    finally:
        es.close()
    assert left == set(versions[1:])  # the live one and the one it replaced
    out = rollback_images("elasticsearch", es=settings)
    assert (out["version"], out["count"]) == (versions[1], 301)


def test_hybrid_rrf_retriever_and_client_side_fusion_agree(settings):  # noqa: F811
    have = features(settings)
    enc = TextRandEncoder()
    catalog = make_templates(300, seed=3)
    build_es_index(catalog.records, settings, encoder=enc,
                   expansions={"t00005": ["island vows"]})
    with open_es_index(settings, encoder=enc) as served, \
            open_es_index(replace(settings), encoder=enc) as here:
        here.retrievers_refused = True  # fuse BM25 and kNN client-side
        a = served.search_batch(["island vows", "modern poster"], k=10)
        b = here.search_batch(["island vows", "modern poster"], k=10)
        print("retrievers:", have.retrievers, "refused:", served.retrievers_refused)
    assert a[0][0].id == b[0][0].id == "t00005"
    for x, y in zip(a, b):  # RRF ties may be ordered differently: compare the scores
        assert sorted(round(h.score, 6) for h in x) == sorted(round(h.score, 6) for h in y)
