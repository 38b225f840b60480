"""Live checks against a real cluster: set UDRL_ES_URL (and UDRL_ES_API_KEY if it needs one).

Run with ``pytest -m elasticsearch tests/indexers/test_templates_live.py``. Every test works
under a fresh random alias and deletes the indices it created.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest

from indexers.es_index import EsSettings, build_es_index, connect, open_es_index

from .template_fixtures import brute_force, make_templates

pytestmark = [
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not os.environ.get("UDRL_ES_URL"), reason="UDRL_ES_URL is not set"),
]


@pytest.fixture()
def settings():
    s = EsSettings(
        hosts=os.environ["UDRL_ES_URL"],
        api_key=os.environ.get("UDRL_ES_API_KEY") or None,
        alias=f"udrl-test-{uuid.uuid4().hex[:8]}",
        bulk_chunk_size=200,
        request_timeout=30,
    )
    yield s
    es = connect(s)
    try:  # by name: wildcard deletes are refused by default (action.destructive_requires_name)
        for name in es.indices.get(
            index=f"{s.alias}-v*", allow_no_indices=True, ignore_unavailable=True
        ):
            es.indices.delete(index=name)
    finally:
        es.close()


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
    es = connect(settings)
    try:
        assert set(es.indices.get_alias(name=settings.alias).body) == {second.version}
        assert not es.indices.exists(index=first.version)
    finally:
        es.close()
