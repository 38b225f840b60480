"""The Elasticsearch template index against a local HTTP double of the cluster (es_double)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from elasticsearch.helpers import actions as es_helpers

from indexers.catalog_templates import TemplateRecord, records_checksum
from indexers.errors import ConfigError, EncoderMismatchError, IndexStoreError
from indexers.es_dense import read_logged_queries
from indexers.es_index import EsSettings, build_es_index, connect, open_es_index
from indexers.es_schema import _embed_text
from indexers.template_backends import build_template_index, open_template_index
from indexers.templates import TemplateIndexConfig

from .es_double import EsDouble
from .template_fixtures import brute_force, make_templates
from .text_fakes import TextRandEncoder

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
    for f in ("title", "description", "tags", "category", "queries"):
        assert (props[f]["type"], props[f]["analyzer"]) == ("text", "english"), f
    assert props["queries"] == {"type": "text", "analyzer": "english"}  # searched, not filtered
    for f in ("tags", "category"):
        assert props[f]["fields"]["keyword"] == {"type": "keyword", "normalizer": "udrl_lowercase"}
    assert "udrl_lowercase" in create.body["settings"]["analysis"]["normalizer"]
    assert "embedding" not in props and "rows" not in props
    meta = mappings["_meta"]["udrl"]
    assert meta["schema_version"] == 2
    assert meta["checksum"] == records_checksum(catalog.records) == report.checksum
    assert (meta["encoder"], meta["dims"], meta["doc_count"]) == (None, None, N)
    assert (meta["expanded_items"], meta["logged_queries"], meta["dense"]) == (0, 0, None)
    assert meta["config"] == {
        "title_boost": 3.0,
        "tags_boost": 2.0,
        "category_boost": 1.5,
        "description_boost": 1.0,
        "queries_boost": 2.0,
    }


def test_mapping_with_encoder_adds_dense_vector(es, settings, catalog):
    enc = HashEncoder(16)
    build_es_index(catalog.records[:20], settings, encoder=enc)
    (create,) = _created(es)
    vector = {"type": "dense_vector", "dims": 16, "index": True, "similarity": "cosine"}
    props = create.body["mappings"]["properties"]
    assert props["embedding"] == vector
    # the dense channel: one nested vector per row (needs Elasticsearch >= 8.11)
    assert props["rows"] == {"type": "nested", "properties": {"vector": vector}}
    meta = create.body["mappings"]["_meta"]["udrl"]
    assert (meta["encoder"], meta["dims"]) == ("hash-bow-16", 16)
    assert meta["dense"] == {"field": "rows.vector", "rows": 20}  # no log: one row each
    sources = _bulk_sources(es)
    rec = catalog.records[3]
    assert len(sources[rec.id]["embedding"]) == 16
    assert sources[rec.id]["rows"] == [{"vector": sources[rec.id]["embedding"]}]


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


def test_keep_old_false_keeps_only_the_last_good_index(es, settings, catalog):
    first = build_es_index(catalog.records[:30], settings)
    drop = replace(settings, keep_old=False)
    second = build_es_index(catalog.records[:40], drop)
    # the index live before the swap is the last good version: it stays for rollback
    assert set(es.indices) == {first.version, second.version}
    third = build_es_index(catalog.records[:50], drop)
    assert set(es.indices) == {second.version, third.version}
    assert es.aliases == {ALIAS: {third.version}}
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
        "fields": ["title^3", "tags^2", "category^1.5", "description^1", "queries^2"],
    }
    assert body["query"]["bool"]["filter"] == [
        {"term": {"category.keyword": "poster"}},
        {"term": {"tags.keyword": "kids"}},  # every tag is required: one term each
        {"term": {"tags.keyword": "sale"}},
    ]
    assert body["size"] == 7 and "knn" not in body
    # vectors and logged queries never travel back with the hits
    assert body["_source"] == {"excludes": ["embedding", "rows", "queries"]}


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


def test_hybrid_is_an_rrf_retriever_with_the_filters_on_both_children(es, settings, catalog):
    enc = HashEncoder(16)
    build_es_index(catalog.records, settings, encoder=enc)
    word = next(iter(catalog.distinctive))
    with open_es_index(settings, encoder=enc) as ix:
        hits = ix.search(word, k=4, filters={"tags": ["sale"]})
    (search,) = es.calls("POST", "/_msearch$")
    body = search.body[1]
    rrf = body["retriever"]["rrf"]
    standard, knn = rrf["retrievers"][0]["standard"], rrf["retrievers"][1]["knn"]
    bm25 = standard["query"]["bool"]
    # window = max(k, num_candidates): each list is 100 deep, the fused list k = 4
    assert (body["size"], rrf["rank_constant"], rrf["rank_window_size"]) == (4, 60, 100)
    assert (knn["field"], knn["k"], knn["num_candidates"]) == ("rows.vector", 100, 100)
    np.testing.assert_allclose(knn["query_vector"], enc.encode([word])[0], rtol=1e-6)
    assert knn["filter"] == bm25["filter"] == [{"term": {"tags.keyword": "sale"}}]
    assert "multi_match" in bm25["must"][0]
    assert hits and all("sale" in h.tags for h in hits)


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


# -- logged queries and the dense channel ----------------------------------------------------

# Hand-made log, checkable by eye: 2 templates expanded, 3 distinct queries once normalised
# ("Zanzibar  Wedding" and "zanzibar wedding" are one), one id the catalogue does not hold.
EXPANSIONS = {
    "t00005": ["Zanzibar  Wedding", "zanzibar wedding", "island vows"],
    "t00007": ["lagoon brunch"],
    "nope": ["ghost query"],
}
LOGGED = {"zanzibar wedding", "island vows", "lagoon brunch"}


def test_logged_queries_land_in_queries_and_make_a_template_findable(es, settings, catalog):
    report = build_es_index(catalog.records, settings, expansions=EXPANSIONS)
    sources = _bulk_sources(es)
    assert sources["t00005"]["queries"] == EXPANSIONS["t00005"]  # as typed, in order
    assert sources["t00007"]["queries"] == ["lagoon brunch"]
    assert "queries" not in sources["t00006"]  # no log line: no field
    assert "nope" not in sources and len(sources) == N
    meta = _created(es)[-1].body["mappings"]["_meta"]["udrl"]
    assert (meta["expanded_items"], meta["logged_queries"]) == (2, 3)
    assert report.ok
    # "zanzibar" and "lagoon" are in no title, tag or description: only the log knows them
    assert brute_force(catalog.records, "zanzibar lagoon") == set()
    with open_es_index(settings) as ix:
        assert [h.id for h in ix.search("zanzibar", k=5)] == ["t00005"]
        assert [h.id for h in ix.search("lagoon", k=5)] == ["t00007"]
        hit = ix.search("vows", k=5)[0]
    rec = catalog.records[5]
    assert (hit.id, hit.title, hit.tags) == ("t00005", rec.title, rec.tags)
    assert "queries" not in hit.fields


def test_fusion_params_and_logged_queries_round_trip(es, settings, catalog):
    fusion = {"raw": 1.0, "dense": 0.6, "rewrite": 0.3, "k": 60}
    log_summary = {"queries": 4, "clicks": 5}
    build_template_index(
        "elasticsearch",
        catalog.records,
        settings=settings,
        expansions=EXPANSIONS,
        extra_meta={"fusion": fusion, "log": log_summary},
    )
    with open_template_index("elasticsearch", settings=settings) as ix:
        assert ix.fusion_params == fusion
        assert ix.meta["log"] == log_summary
        assert ix.logged_queries() == LOGGED  # normalised; the unknown id's query is not there
        assert not ix.has_dense


def test_index_without_log_has_no_logged_queries_or_fusion(es, settings, catalog):
    build_es_index(catalog.records[:12], settings)
    with open_es_index(settings) as ix:
        assert ix.logged_queries() == set() and ix.fusion_params is None
    (read,) = [r.body for r in es.calls("POST", f"^/{ALIAS}/_search$")]
    assert read["query"] == {"exists": {"field": "queries"}} and read["_source"] == ["queries"]


def test_logged_queries_are_paged_through_every_template(es, settings, catalog):
    # 45 templates with 2 queries each, read 7 documents a request: 6 full pages + 1 of 3
    expansions = {r.id: [f"q{i} alpha", f"Q{i}  Beta"] for i, r in enumerate(catalog.records[:45])}
    build_es_index(catalog.records, settings, expansions=expansions)
    client = connect(settings)
    try:
        got = read_logged_queries(client, ALIAS, page=7)
    finally:
        client.close()
    assert got == {f"q{i} alpha" for i in range(45)} | {f"q{i} beta" for i in range(45)}
    bodies = [r.body for r in es.calls("POST", f"^/{ALIAS}/_search$")]
    assert len(bodies) == 7
    assert "search_after" not in bodies[0]
    assert [b["search_after"] for b in bodies[1:]] == [[f"t{7 * p - 1:05d}"] for p in range(1, 7)]
    assert all(b["sort"] == [{"id": "asc"}] and b["size"] == 7 for b in bodies)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"doc_count": 3}, "reuses"),
        ({"fusion": {"raw": float("nan")}}, "JSON"),
        ({"fusion": np.float32(1.0)}, "JSON"),
    ],
)
def test_bad_extra_meta_is_config_error_before_any_request(es, settings, catalog, extra, match):
    with pytest.raises(ConfigError, match=match):
        build_es_index(catalog.records[:5], settings, extra_meta=extra)
    with pytest.raises(ConfigError, match="list of query strings"):
        build_es_index(catalog.records[:5], settings, expansions={"t00001": "one string"})
    assert es.requests == []


def test_dense_rows_are_own_text_then_each_logged_query(es, settings, catalog):
    enc = TextRandEncoder()
    build_es_index(catalog.records, settings, encoder=enc, expansions=EXPANSIONS)
    meta = _created(es)[-1].body["mappings"]["_meta"]["udrl"]
    assert meta["dense"] == {"field": "rows.vector", "rows": N + 4}  # + 3 + 1 logged queries
    src = _bulk_sources(es)["t00005"]
    rec = catalog.records[5]
    want = enc.encode([_embed_text(rec), *EXPANSIONS["t00005"]])  # (4, 24)
    np.testing.assert_allclose([r["vector"] for r in src["rows"]], want, rtol=1e-6)
    assert src["embedding"] == src["rows"][0]["vector"]


def test_embed_text_is_tantivy_dense_text(catalog):
    from indexers.tantivy_index import dense_text

    records = [*catalog.records[:50], TemplateRecord(id="bare", title="Only a title")]
    assert [_embed_text(r) for r in records] == [dense_text(r) for r in records]


def _best_rows(records, expansions, enc, query, k, tags=()):
    """Brute force: (id, cosine of the best row) for the top k, rows = own text + queries."""
    q = enc.encode([query])[0]
    scored = []
    for r in records:
        if not {t.casefold() for t in tags} <= {t.casefold() for t in r.tags}:
            continue
        rows = enc.encode([_embed_text(r), *expansions.get(r.id, ())])
        scored.append((-float(np.max(rows @ q)), r.id))
    return [(i, -s) for s, i in sorted(scored)[:k]]


@pytest.fixture()
def dense(es, settings, catalog):
    enc = TextRandEncoder()
    build_es_index(catalog.records, settings, encoder=enc, expansions=EXPANSIONS)
    with open_es_index(settings, encoder=enc) as ix:
        yield ix, enc


def test_search_dense_batch_is_one_knn_msearch_with_filters(es, dense, catalog):
    ix, enc = dense
    assert ix.has_dense
    queries = ["island vows", "lagoon brunch", "coffee garden", "modern poster"]
    before = len(es.calls("POST", "/_search$"))
    got = ix.search_dense_batch(queries, k=7, filters={"tags": ["Sale"]})
    (call,) = es.calls("POST", "/_msearch$")
    assert len(es.calls("POST", "/_search$")) == before
    bodies = call.body[1::2]
    assert len(bodies) == 4 and call.body[0::2] == [{}] * 4
    for q, body in zip(queries, bodies):
        knn = body.pop("knn")
        assert body == {"size": 7, "_source": {"excludes": ["embedding", "rows", "queries"]}}
        np.testing.assert_allclose(knn.pop("query_vector"), enc.encode([q])[0], rtol=1e-6)
        assert knn == {
            "field": "rows.vector",
            "k": 7,
            "num_candidates": 100,
            "filter": [{"term": {"tags.keyword": "sale"}}],
        }
    for q, hits in zip(queries, got):
        want = _best_rows(catalog.records, EXPANSIONS, enc, q, 7, tags=["sale"])
        assert [h.id for h in hits] == [i for i, _ in want]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in want], atol=1e-5)


def test_a_logged_query_finds_its_template_by_its_best_row(dense, catalog):
    ix, _ = dense
    (hits,) = ix.search_dense_batch(["island vows"], k=3)
    assert hits[0].id == "t00005" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score < 0.9  # every other row is a different text: nearly orthogonal


def test_dense_hits_have_the_shape_of_bm25_hits(dense):
    ix, _ = dense
    (bm25,) = ix.search_batch(["vows"], k=1)
    (knn,) = ix.search_dense_batch(["island vows"], k=1)
    assert bm25[0].id == knn[0].id == "t00005"
    assert type(knn[0]) is type(bm25[0])
    assert replace(knn[0], score=0.0) == replace(bm25[0], score=0.0)  # all but the score


def test_precomputed_vectors_skip_the_encoder_and_k_sets_num_candidates(es, dense):
    ix, enc = dense
    vecs = enc.encode(["island vows", "lagoon brunch"])
    ix.encoder = None  # would raise if the index tried to encode
    got = ix.search_dense_batch(["island vows", "lagoon brunch"], k=80, vectors=vecs)
    assert [hits[0].id for hits in got] == ["t00005", "t00007"]
    knn = es.calls("POST", "/_msearch$")[-1].body[1]["knn"]
    assert (knn["k"], knn["num_candidates"]) == (80, 160)  # max(100, 2k)
    assert "filter" not in knn


def test_dense_search_refusals_send_nothing(es, dense):
    ix, enc = dense
    n = len(es.requests)
    with pytest.raises(EncoderMismatchError, match=r"\(2, 24\)"):
        ix.search_dense_batch(["a", "b"], vectors=enc.encode(["a"]))
    with pytest.raises(ConfigError):
        ix.search_dense_batch(["ok", " "])
    with pytest.raises(ConfigError, match="10000"):
        ix.search_dense_batch(["ok"], k=10_001)
    assert ix.search_dense_batch([]) == []
    assert len(es.requests) == n


def test_a_search_the_cluster_refuses_in_its_msearch_slot_is_index_store_error(dense):
    ix, _ = dense
    ix.meta = {**ix.meta, "dims": 8}  # as if opened on another build: the cluster holds 24-d rows
    with pytest.raises(IndexStoreError, match=r"query 0 \('island vows'\) failed.*dimensions"):
        ix.search_dense_batch(["island vows"], vectors=np.ones((1, 8), np.float32))


def test_index_without_encoder_has_no_dense_channel(es, settings, catalog):
    build_es_index(catalog.records[:10], settings)
    with open_es_index(settings) as ix:
        assert not ix.has_dense
        with pytest.raises(IndexStoreError, match="no dense channel"):
            ix.search_dense_batch(["modern"], vectors=np.ones((1, 24), np.float32))


def test_dense_build_on_a_cluster_older_than_8_11_creates_nothing(es, settings, catalog):
    es.version = "8.10.4"
    with pytest.raises(IndexStoreError, match="8.11"):
        build_es_index(catalog.records[:5], settings, encoder=TextRandEncoder())
    assert _created(es) == [] and es.indices == {}
    build_es_index(catalog.records[:5], settings)  # BM25 only needs no nested kNN


def test_schema_v1_index_still_opens_for_bm25(es, settings, catalog):
    from indexers.es_schema import template_mapping

    body = template_mapping({"schema_version": 1, "encoder": None, "dims": None}, None)
    del body["mappings"]["properties"]["queries"]  # what a v1 build created
    es.handle("PUT", "/tpl-v1", {}, body)
    es.handle("POST", "/_aliases", {}, {"actions": [{"add": {"index": "tpl-v1", "alias": ALIAS}}]})
    rec = catalog.records[0]
    es.handle(
        "PUT",
        "/_bulk",
        {},
        [
            {"index": {"_index": "tpl-v1", "_id": rec.id}},
            rec.model_dump(mode="json", exclude={"thumbnail"}),
        ],
    )
    es.handle("POST", "/tpl-v1/_refresh", {}, None)
    with open_es_index(settings) as ix:
        assert [h.id for h in ix.search(rec.title.split()[0], k=3)][:1] == [rec.id]
        assert not ix.has_dense and ix.logged_queries() == set() and ix.fusion_params is None


@pytest.mark.parametrize(
    "route,body,etype",
    [
        (
            "PUT /_bulk",
            [{"index": {"_index": "x", "_id": "1"}}, {"id": "1", "queries": ["q"]}],
            "strict_dynamic_mapping_exception",
        ),
        (
            "PUT /_bulk",
            [{"index": {"_index": "x", "_id": "1"}}, {"id": "1", "v": [0.0, 0.0]}],
            "document_parsing_exception",
        ),
        (
            "POST /x/_search",
            {"knn": {"field": "v", "query_vector": [1, 0], "k": 5, "num_candidates": 4}},
            "illegal_argument_exception",
        ),
        (
            "POST /x/_search",
            {"knn": {"field": "v", "query_vector": [1, 0, 0], "k": 1}},
            "illegal_argument_exception",
        ),
        (
            "POST /x/_search",
            {"knn": {"field": "id", "query_vector": [1, 0], "k": 1}},
            "illegal_argument_exception",
        ),
        ("POST /x/_search", {"sort": [{"name": "asc"}]}, "illegal_argument_exception"),
        ("POST /x/_search", {"size": 10_001}, "illegal_argument_exception"),
        ("POST /x/_search", {"kNN": {}}, "parsing_exception"),
    ],
)
def test_double_refuses_what_a_cluster_refuses(es, route, body, etype):
    """The double must fail on the shapes a real cluster rejects, or the tests above prove
    nothing about them."""
    es.handle(
        "PUT",
        "/x",
        {},
        {
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "id": {"type": "keyword"},
                    "name": {"type": "text"},
                    "v": {"type": "dense_vector", "dims": 2, "index": True, "similarity": "cosine"},
                },
            }
        },
    )
    method, path = route.split()
    if path == "/_bulk":
        _, resp = es.handle(method, path, {}, body)
        ((item,),) = [it.values() for it in resp["items"]]
        assert (item["status"], item["error"]["type"]) == (400, etype)
    else:
        with pytest.raises(Exception) as info:
            es.handle(method, path, {}, body)
        assert (info.value.status, info.value.body["error"]["type"]) == (400, etype)


@pytest.mark.parametrize(
    "mapping",
    [
        {"properties": {"q": {"type": "txt"}}},
        {"properties": {"q": {"type": "text", "analyzer": "klingon"}}},
        {"properties": {"q": {"type": "keyword", "normalizer": "missing"}}},
        {"properties": {"v": {"type": "dense_vector", "similarity": "cosine"}}},
        {
            "properties": {
                "n": {
                    "type": "nested",
                    "properties": {"v": {"type": "dense_vector", "dims": 2, "bogus": 1}},
                }
            }
        },
    ],
)
def test_double_refuses_bad_mappings(es, mapping):
    with pytest.raises(Exception) as info:
        es.handle("PUT", "/x", {}, {"mappings": mapping})
    assert (
        info.value.status == 400 and info.value.body["error"]["type"] == "mapper_parsing_exception"
    )


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


def test_fetch_and_documents_return_search_shaped_hits(es, opened, catalog):
    ids = [r.id for r in catalog.records[:3]]
    got = opened.fetch([ids[2], ids[0], "no-such-id", ids[0]])
    assert set(got) == {ids[0], ids[2]}  # unknown ids are left out, repeats asked once
    assert got[ids[0]].title == catalog.records[0].title
    docs = opened.documents(page=7)  # several pages: search_after on the id keyword
    assert sorted(d.id for d in docs) == sorted(r.id for r in catalog.records)
    assert opened.fetch([]) == {}
