"""Live checks against a real cluster: set UDRL_ES_URL.

A secured cluster (Elasticsearch 8/9 by default) also needs UDRL_ES_API_KEY, or
UDRL_ES_USERNAME and UDRL_ES_PASSWORD; with https, UDRL_ES_CA_CERTS (the CA file, e.g. the
node's ``config/certs/http_ca.crt``) or UDRL_ES_VERIFY_CERTS=false for a throwaway cluster.

Run with ``pytest -m elasticsearch tests/indexers/test_templates_live.py``. Every test works
under a fresh random alias and deletes the indices it created.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from indexers.es_dense import MIN_NESTED_KNN
from indexers.es_index import build_es_index, connect, open_es_index

from .template_fixtures import brute_force, make_templates
from .text_fakes import TextRandEncoder

pytestmark = [
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not os.environ.get("UDRL_ES_URL"), reason="UDRL_ES_URL is not set"),
]


@pytest.fixture()
def settings(live_settings):  # the cluster fixture (tests/indexers/conftest.py)
    return live_settings


@pytest.fixture(scope="module")
def catalog():
    return make_templates(300, seed=3)


def test_build_and_search_distinctive_word(settings, catalog):
    report = build_es_index(catalog.records, settings)
    assert report.ok and report.doc_count == 300
    with open_es_index(settings) as ix:
        assert ix.count() == 300
        for word, want in list(catalog.distinctive.items())[:5]:
            assert ix.search(f"{word} modern", k=3)[0].id == want
        got = {h.id for h in ix.search("coffee", k=300, filters={"tags": ["Black Friday"]})}
        assert got == brute_force(catalog.records, "coffee", tags=["black friday"])


def test_reindex_swaps_alias(settings, catalog):
    first = build_es_index(catalog.records[:100], settings)
    with open_es_index(settings) as ix:
        assert ix.count() == 100
        second = build_es_index(catalog.records, replace(settings, keep_old=False))
        assert ix.count() == 300  # the open index follows the alias: no downtime, no reopen
        third = build_es_index(catalog.records[:200], replace(settings, keep_old=False))
        assert ix.count() == 200
    es = connect(settings)
    try:
        assert set(es.indices.get_alias(name=settings.alias).body) == {third.version}
        assert es.indices.exists(index=second.version)  # live before: kept for rollback
        assert not es.indices.exists(index=first.version)
    finally:
        es.close()


def test_logged_queries_field_is_searched_and_read_back(settings, catalog):
    # "zanzibar" and "lagoon" are in no template's own text: only the log knows them
    expansions = {"t00005": ["Zanzibar  Wedding", "island vows"], "t00007": ["lagoon brunch"]}
    fusion = {"raw": 1.0, "dense": 0.5, "k": 60}
    build_es_index(catalog.records, settings, expansions=expansions, extra_meta={"fusion": fusion})
    with open_es_index(settings) as ix:
        assert [h.id for h in ix.search("zanzibar", k=5)] == ["t00005"]
        assert [h.id for h in ix.search("lagoon brunches", k=5)] == ["t00007"]  # english stems
        assert ix.logged_queries() == {"zanzibar wedding", "island vows", "lagoon brunch"}
        assert ix.fusion_params == fusion


def test_knn_dense_search_over_nested_rows(settings, catalog):
    es = connect(settings)
    try:
        number = es.info()["version"]["number"]
    finally:
        es.close()
    if tuple(int(x) for x in number.split(".")[:2]) < MIN_NESTED_KNN:
        pytest.skip(f"nested kNN needs Elasticsearch >= 8.11; the cluster runs {number}")
    enc = TextRandEncoder()
    expansions = {"t00005": ["island vows"], "t00007": ["lagoon brunch"]}
    build_es_index(catalog.records, settings, encoder=enc, expansions=expansions)
    with open_es_index(settings, encoder=enc) as ix:
        assert ix.has_dense
        vows, brunch = ix.search_dense_batch(["island vows", "lagoon brunch"], k=3)
        # a logged query's own row is its nearest vector: cosine ~1 (quantized index options
        # make it approximate), every other row is a different random text
        assert vows[0].id == "t00005" and vows[0].score == pytest.approx(1.0, abs=0.05)
        assert brunch[0].id == "t00007"
        rec = catalog.records[7]
        assert (brunch[0].title, brunch[0].tags) == (rec.title, rec.tags)
        tag = rec.tags[0] if rec.tags else "sale"
        (filtered,) = ix.search_dense_batch(["lagoon brunch"], k=5, filters={"tags": [tag]})
        assert filtered and all(tag.casefold() in map(str.casefold, h.tags) for h in filtered)
