"""The Elasticsearch template index against a local HTTP double of the cluster (es_double)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from elasticsearch.helpers import actions as es_helpers

from indexers.catalog_templates import TemplateRecord, records_checksum
from indexers.errors import ConfigError, EncoderMismatchError, IndexStoreError
from indexers.es_index import EsSettings, build_es_index, open_es_index
from indexers.templates import TemplateIndexConfig, build_template_index, open_template_index

from .es_double import EsDouble
from .template_fixtures import brute_force, make_templates

N = 317  # 317 records in chunks of 100 -> 4 bulk requests (100, 100, 100, 17)
ALIAS = "tpl"


class HashEncoder:
    """Deterministic bag-of-words hashing 'model': enough to check vectors flow end to end."""

    def __init__(self, dim: int = 16, name: str = "hash-bow"):
        self.name, self.dim = f"{name}-{dim}", dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out + 1e-3  # never the zero vector (cosine is undefined there)


@pytest.fixture(scope="module")
def catalog():
    return make_templates(N, seed=11)


@pytest.fixture()
def es():
    with EsDouble() as double:
        yield double


@pytest.fixture()
def settings(es):
    return EsSettings(
        hosts=es.url,
        alias=ALIAS,
        retry_backoff_s=0.001,
        max_backoff_s=0.01,
        bulk_chunk_size=100,
        max_retries=1,
    )


def _bulk_sources(es, index=None):
    """{id: source} over every recorded _bulk body (later sends overwrite earlier ones)."""
    out = {}
    for req in es.calls("PUT", r"/_bulk$") + es.calls("POST", r"/_bulk$"):
        lines = req.body
        for action, source in zip(lines[::2], lines[1::2]):
            meta = action["index"]
            if index is None or meta["_index"] == index:
                out[meta["_id"]] = source
    return out


def _created(es):
    return [r for r in es.calls("PUT", r"^/[^_/][^/]*$")]


# -- build ---------------------------------------------------------------------------------


def test_mapping_has_expected_field_types(es, settings, catalog):
    report = build_es_index(catalog.records, settings)
    (create,) = _created(es)
    assert create.path == f"/{report.version}" and report.version.startswith(f"{ALIAS}-v")
    mappings = create.body["mappings"]
    props = mappings["properties"]
    assert mappings["dynamic"] == "strict"
    assert props["id"] == {"type": "keyword"}
    for f in ("title", "description", "tags", "category"):
        assert (props[f]["type"], props[f]["analyzer"]) == ("text", "english"), f
    for f in ("tags", "category"):
        assert props[f]["fields"]["keyword"] == {"type": "keyword", "normalizer": "udrl_lowercase"}
    assert "udrl_lowercase" in create.body["settings"]["analysis"]["normalizer"]
    assert "embedding" not in props
    meta = mappings["_meta"]["udrl"]
    assert meta["checksum"] == records_checksum(catalog.records) == report.checksum
    assert (meta["encoder"], meta["dims"], meta["doc_count"]) == (None, None, N)
    assert meta["config"] == {
        "title_boost": 3.0,
        "tags_boost": 2.0,
        "category_boost": 1.5,
        "description_boost": 1.0,
    }


def test_mapping_with_encoder_adds_dense_vector(es, settings, catalog):
    enc = HashEncoder(16)
    build_es_index(catalog.records[:20], settings, encoder=enc)
    (create,) = _created(es)
    assert create.body["mappings"]["properties"]["embedding"] == {
        "type": "dense_vector",
        "dims": 16,
        "index": True,
        "similarity": "cosine",
    }
    meta = create.body["mappings"]["_meta"]["udrl"]
    assert (meta["encoder"], meta["dims"]) == ("hash-bow-16", 16)
    sources = _bulk_sources(es)
    rec = catalog.records[3]
    assert len(sources[rec.id]["embedding"]) == 16


def test_bulk_bodies_contain_every_record(es, settings, catalog):
    report = build_es_index(catalog.records, settings)
    assert report.ok and report.doc_count == N and report.previous_version is None
    assert len(es.calls("PUT", "/_bulk$")) == 4  # 317 in chunks of 100
    sources = _bulk_sources(es, index=report.version)
    assert sources == {
        r.id: r.model_dump(mode="json", exclude={"thumbnail"}) for r in catalog.records
    }
    # the alias now answers with everything, refreshed before the swap
    with open_es_index(settings) as ix:
        assert ix.count() == N and ix.version == report.version


def test_partial_bulk_failures_are_reported(es, settings, catalog):
    es.fail_docs = {
        "t00004": (400, "document_parsing_exception"),
        "t00200": (400, "mapper_parsing_exception"),
    }
    report = build_es_index(catalog.records, settings)
    assert not report.ok
    assert sorted((f.id, f.status) for f in report.failures) == [("t00004", 400), ("t00200", 400)]
    reasons = {f.id: f.reason for f in report.failures}
    assert reasons["t00004"].startswith("document_parsing_exception: failed to parse")
    assert report.doc_count == N - 2
    assert es.aliases == {ALIAS: {report.version}}  # under max_failed_fraction: published


@pytest.fixture()
def sleeps(monkeypatch):
    """Backoff waits the bulk helper asked for (not actually slept)."""
    waits: list[float] = []
    monkeypatch.setattr(es_helpers.time, "sleep", waits.append)
    return waits


def test_429_items_are_retried_with_only_the_rejected_docs(es, settings, catalog, sleeps):
    es.throttle_docs = {"t00001": 1, "t00150": 2, "t00316": 1}
    report = build_es_index(catalog.records, settings)
    # exponential backoff per chunk: retry_backoff_s * 2**attempt, capped at max_backoff_s
    assert sleeps == [0.001, 0.001, 0.002, 0.001]
    assert report.ok and report.doc_count == N
    bulks = es.calls("PUT", "/_bulk$")
    assert len(bulks) == 4 + 1 + 2 + 1  # chunk 1 resent once, chunk 2 twice, chunk 4 once
    retried = [{a["index"]["_id"] for a in b.body[::2]} for b in bulks if len(b.body) < 2 * 17]
    assert sorted(map(sorted, retried)) == [["t00001"], ["t00150"], ["t00150"], ["t00316"]]


def test_429_past_the_retry_limit_is_a_failure(es, settings, catalog):
    es.throttle_docs = {"t00002": 99}
    report = build_es_index(
        catalog.records[:10],
        replace(settings, bulk_max_retries=2, max_failed_fraction=0.5),
    )
    assert [(f.id, f.status) for f in report.failures] == [("t00002", 429)]
    assert len(es.calls("PUT", "/_bulk$")) == 3  # first send + 2 retries


def test_whole_bulk_429_is_retried_after_backoff(es, settings, catalog, sleeps):
    es.throttle_bulk = 1
    report = build_es_index(catalog.records[:50], settings)
    assert sleeps == [0.001]  # the helper backed off; the transport did not resend at once
    assert report.ok and report.doc_count == 50
    assert len(es.calls("PUT", "/_bulk$")) == 2


def test_alias_swap_is_one_update_aliases_call(es, settings, catalog):
    first = build_es_index(catalog.records[:30], settings)
    second = build_es_index(catalog.records, settings)
    calls = es.calls("POST", "^/_aliases$")
    assert len(calls) == 2
    assert calls[0].body == {"actions": [{"add": {"index": first.version, "alias": ALIAS}}]}
    assert calls[1].body == {
        "actions": [
            {"remove": {"index": first.version, "alias": ALIAS}},
            {"add": {"index": second.version, "alias": ALIAS}},
        ]
    }
    assert second.previous_version == first.version
    assert es.aliases == {ALIAS: {second.version}}
    assert first.version in es.indices  # keep_old=True by default: kept for rollback
    # the swap happened only after the new index was loaded and refreshed
    order = [(r.method, r.path) for r in es.requests]
    assert (
        order.index(("POST", f"/{second.version}/_refresh"))
        < len(order) - order[::-1].index(("POST", "/_aliases")) - 1
    )


def test_keep_old_false_deletes_old_index_after_swap(es, settings, catalog):
    first = build_es_index(catalog.records[:30], settings)
    drop = replace(settings, keep_old=False)
    second = build_es_index(catalog.records[:40], drop)
    assert set(es.indices) == {second.version}
    paths = [(r.method, r.path) for r in es.requests]
    assert paths.index(("DELETE", f"/{first.version}")) > max(
        i for i, p in enumerate(paths) if p == ("POST", "/_aliases")
    )


@pytest.mark.parametrize(
    "failure", ["bulk 500", "too many doc failures", "refresh 500", "swap 500"]
)
def test_failed_load_leaves_alias_on_old_index(es, settings, catalog, failure):
    old = build_es_index(catalog.records[:60], settings)
    with open_es_index(settings) as ix:
        word = next(iter(catalog.distinctive))
        before = ix.search(word, k=5)
    if failure == "bulk 500":
        es.fail("PUT", "/_bulk$", 500)
    elif failure == "too many doc failures":
        es.fail_docs = {r.id: (400, "mapper_parsing_exception") for r in catalog.records[:100]}
    elif failure == "refresh 500":
        es.fail("POST", "/_refresh$", 500)
    else:
        es.fail("POST", "^/_aliases$", 500)
    with pytest.raises(IndexStoreError):
        build_es_index(catalog.records, settings)
    new = _created(es)[-1].path.lstrip("/")
    assert new != old.version
    assert ("DELETE", f"/{new}") in [(r.method, r.path) for r in es.requests]
    assert set(es.indices) == {old.version} and es.aliases == {ALIAS: {old.version}}
    with open_es_index(settings) as ix:
        assert ix.count() == 60 and ix.search(word, k=5) == before


def test_alias_name_taken_by_an_index(es, settings, catalog):
    es.handle("PUT", f"/{ALIAS}", {}, {})  # a concrete index called "tpl"
    with pytest.raises(IndexStoreError, match="concrete index"):
        build_es_index(catalog.records[:5], settings)


# -- search --------------------------------------------------------------------------------


@pytest.fixture()
def opened(es, settings, catalog):
    build_es_index(catalog.records, settings)
    with open_es_index(settings) as ix:
        yield ix


def test_query_body_has_boosts_and_filters(es, opened):
    opened.search("summer poster", k=7, filters={"category": "Poster", "tags": ["Sale", "kids"]})
    body = es.calls("POST", f"^/{ALIAS}/_search$")[-1].body
    mm = body["query"]["bool"]["must"][0]["multi_match"]
    assert mm == {
        "query": "summer poster",
        "type": "best_fields",
        "fields": ["title^3", "tags^2", "category^1.5", "description^1"],
    }
    assert body["query"]["bool"]["filter"] == [
        {"term": {"category.keyword": "poster"}},
        {"term": {"tags.keyword": "kids"}},  # every tag is required: one term each
        {"term": {"tags.keyword": "sale"}},
    ]
    assert body["size"] == 7 and "knn" not in body


def test_custom_boosts_reach_the_query(es, settings, catalog):
    build_es_index(catalog.records[:10], settings, config=TemplateIndexConfig(title_boost=5.0))
    with open_es_index(settings) as ix:
        assert ix.config.title_boost == 5.0  # rebuilt from the index _meta
        ix.search("modern")
    fields = es.calls("POST", "/_search$")[-1].body["query"]["bool"]["must"][0]["multi_match"][
        "fields"
    ]
    assert fields[0] == "title^5"


def test_distinctive_word_ranks_first(opened, catalog):
    for word, want in list(catalog.distinctive.items())[:8]:
        hits = opened.search(f"{word} modern", k=3)
        assert hits[0].id == want
    rec = next(r for r in catalog.records if r.id == want)
    assert (hits[0].title, hits[0].tags, hits[0].category) == (rec.title, rec.tags, rec.category)
    assert "embedding" not in hits[0].fields


@pytest.mark.parametrize(
    "query,category,tags",
    [("night", None, ("black friday",)), ("coffee", "flyer", ("sale",)), ("modern", "nothing", ())],
)
def test_filters_match_brute_force(opened, catalog, query, category, tags):
    filters = {"category": category, "tags": list(tags)} if category else {"tags": list(tags)}
    got = {h.id for h in opened.search(query, k=N, filters=filters)}
    assert got == brute_force(catalog.records, query, category, tags)


def test_batch_is_one_msearch_and_agrees_with_single(es, opened, catalog):
    queries = [*list(catalog.distinctive)[:4], "coffee garden", "unmatchedword"]
    batch = opened.search_batch(queries, k=5, filters={"tags": ["sale"]})
    assert len(es.calls("POST", "/_msearch$")) == 1
    assert batch == [opened.search(q, k=5, filters={"tags": ["sale"]}) for q in queries]


def test_bad_queries_fail_before_any_request(es, opened):
    n = len(es.requests)
    for bad in ({"query": ""}, {"query": "x", "k": 0}, {"query": "x", "filters": {"color": "red"}}):
        with pytest.raises(ConfigError):
            opened.search(**bad)
    assert len(es.requests) == n


def test_hybrid_adds_knn_clause(es, settings, catalog):
    enc = HashEncoder(16)
    build_es_index(catalog.records, settings, encoder=enc)
    word = next(iter(catalog.distinctive))
    with open_es_index(settings, encoder=enc) as ix:
        hits = ix.search(word, k=4, filters={"tags": ["sale"]})
        ix.search(word, k=4)
    with_filter, plain = [r.body for r in es.calls("POST", "/_search$")[-2:]]
    knn = with_filter["knn"]
    assert (knn["field"], knn["k"], knn["num_candidates"]) == ("embedding", 4, 100)
    np.testing.assert_allclose(knn["query_vector"], enc.encode([word])[0], rtol=1e-6)
    assert (
        knn["filter"]
        == with_filter["query"]["bool"]["filter"]
        == [{"term": {"tags.keyword": "sale"}}]
    )
    assert "filter" not in plain["knn"] and "multi_match" in plain["query"]["bool"]["must"][0]
    assert all("sale" in h.tags for h in hits)


def test_open_hybrid_index_without_encoder_is_bm25_only(es, settings, catalog):
    build_es_index(catalog.records[:20], settings, encoder=HashEncoder(16))
    with open_es_index(settings) as ix:
        ix.search("modern")
    assert "knn" not in es.calls("POST", "/_search$")[-1].body


@pytest.mark.parametrize(
    "built_with,opened_with",
    [
        (HashEncoder(16), HashEncoder(16, name="other")),  # other model
        (HashEncoder(16), HashEncoder(8)),  # other width
        (None, HashEncoder(16)),  # built without vectors
    ],
)
def test_mismatched_encoder_is_refused(es, settings, catalog, built_with, opened_with):
    build_es_index(catalog.records[:20], settings, encoder=built_with)
    with pytest.raises(EncoderMismatchError, match="rebuild"):
        open_es_index(settings, encoder=opened_with)


# -- factory, opening, connection ----------------------------------------------------------


def test_factory_round_trip(es, settings, catalog):
    report = build_template_index("elasticsearch", catalog.records[:25], settings=settings)
    with open_template_index("elasticsearch", settings=settings) as ix:
        assert ix.version == report.version and ix.count() == 25


def test_open_missing_alias_says_how_to_fix(es, settings):
    with pytest.raises(IndexStoreError, match="build_template_index"):
        open_es_index(settings)


def test_unreachable_cluster_is_index_store_error():
    with EsDouble() as gone:
        url = gone.url  # a port that was just freed: nothing listens there any more
    s = EsSettings(hosts=url, alias=ALIAS, max_retries=0, request_timeout=2)
    with pytest.raises(IndexStoreError, match="cannot"):
        open_es_index(s)
    with pytest.raises(IndexStoreError):
        build_es_index([TemplateRecord(id="a", title="x")], s)


@pytest.mark.parametrize("alias", ["Templates", "_x", "a b", ""])
def test_invalid_alias_is_config_error(alias):
    with pytest.raises(ConfigError, match="alias"):
        EsSettings(alias=alias)


def test_double_speaks_es_protocol(es, settings, catalog):
    # the 9.x client refuses servers without the product header; every request here used the
    # compatible-with=9 media type
    build_es_index(catalog.records[:5], settings)
    assert es.requests and all("compatible-with=9" in r.headers["accept"] for r in es.requests)
