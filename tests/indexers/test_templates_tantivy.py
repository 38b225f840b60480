"""The template catalogue reader and the embedded (tantivy) template index."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from indexers import tantivy_index
from indexers.catalog_templates import TemplateRecord, read_templates, records_checksum
from indexers.dense import DenseConfig
from indexers.errors import ConfigError, DataError, IndexStoreError
from indexers.store import IndexStore
from indexers.template_backends import build_template_index, open_template_index
from indexers.templates import TemplateIndexConfig

from .template_fixtures import VOCAB, brute_force, make_templates
from .text_fakes import WordEncoder, brute_scores, brute_top, dense_rows

N = 317  # awkward size on purpose


@pytest.fixture(scope="session")
def catalog():
    return make_templates(N, seed=7)


@pytest.fixture(scope="session")
def built(tmp_path_factory, catalog):
    """One published index shared by the read-only tests."""
    root = tmp_path_factory.mktemp("tpl-tantivy")
    report = build_template_index("tantivy", catalog.records, root=root)
    return root, report


@pytest.fixture()
def index(built):
    ix = open_template_index("tantivy", root=built[0])
    yield ix
    ix.close()


# -- ranking ------------------------------------------------------------------------------


def test_build_report_and_meta(built, catalog):
    root, report = built
    assert report.backend == "tantivy" and report.ok and report.previous_version is None
    assert report.doc_count == N
    meta = json.loads((IndexStore(root).open_current() / tantivy_index.META_FILE).read_text())
    assert meta["backend"] == "tantivy" and meta["doc_count"] == N
    # the checksum is over the records sorted by id, so file order does not change it
    assert meta["checksum"] == records_checksum(reversed(catalog.records)) == report.checksum
    assert meta["field_boosts"] == {"title": 3.0, "tags": 2.0, "category": 1.5, "description": 1.0,
                                    "queries": 2.0}
    assert meta["built_at"].endswith("Z")


def test_count_and_version(index, built):
    assert index.count() == N
    assert index.version == built[1].version


def test_distinctive_title_word_ranks_first(index, catalog):
    assert len(catalog.distinctive) == 32  # ids 0, 10, ..., 310
    for word, want in catalog.distinctive.items():
        hits = index.search(f"{word} modern poster", k=5)
        assert hits[0].id == want, word


def test_hit_carries_stored_fields(index, catalog):
    word, want = next(iter(catalog.distinctive.items()))
    rec = next(r for r in catalog.records if r.id == want)
    (hit,) = index.search(word, k=1)
    assert (hit.title, hit.category, hit.tags) == (rec.title, rec.category, rec.tags)
    assert hit.fields["description"] == rec.description and hit.score > 0


def _two_docs(tmp_path, config=None):
    # Same word "lighthouse", same field lengths: only the field it sits in differs.
    recs = [
        TemplateRecord(id="in-desc", title="ocean poster", description="lighthouse at dawn"),
        TemplateRecord(id="in-title", title="lighthouse poster", description="ocean at dawn"),
    ]
    build_template_index("tantivy", recs, root=tmp_path, config=config)
    return open_template_index("tantivy", root=tmp_path)


def test_title_boost_beats_description(tmp_path):
    with _two_docs(tmp_path) as ix:
        assert [h.id for h in ix.search("lighthouse")] == ["in-title", "in-desc"]


def test_saved_boosts_drive_the_ranking(tmp_path):
    flipped = TemplateIndexConfig(title_boost=1.0, description_boost=5.0)
    with _two_docs(tmp_path, flipped) as ix:
        assert ix.config == flipped  # rebuilt from index_meta.json, not the defaults
        assert [h.id for h in ix.search("lighthouse")] == ["in-desc", "in-title"]


# -- filters ------------------------------------------------------------------------------

FILTER_CASES = [
    ("modern", None, ()),
    ("modern", "poster", ()),  # stored as "Poster": filters are case-insensitive
    ("coffee garden", None, ("sale",)),
    ("coffee garden", "Flyer", ("sale", "summer")),
    ("night", None, ("black friday",)),  # a tag with a space is one exact value
    ("night", "card", ("BLACK FRIDAY", "kids")),
    ("modern", "no-such-category", ()),  # zero hits
    ("unmatchedword", None, ()),  # zero hits
]


@pytest.mark.parametrize("query,category,tags", FILTER_CASES)
def test_filters_match_brute_force(index, catalog, query, category, tags):
    filters = {"category": category, "tags": list(tags)} if category else {"tags": list(tags)}
    got = index.search(query, k=N, filters=filters)
    assert {h.id for h in got} == brute_force(catalog.records, query, category, tags)
    scores = [h.score for h in got]
    assert scores == sorted(scores, reverse=True)


def test_filters_reject_unknown_keys(index):
    with pytest.raises(ConfigError, match="allowed: category, tags"):
        index.search("modern", filters={"colour": "red"})
    with pytest.raises(ConfigError, match="category"):
        index.search("modern", filters={"category": ""})


def test_k_limits_hits(index, catalog):
    assert len(index.search("modern", k=3)) == 3
    assert len(brute_force(catalog.records, "modern")) > 3


def test_batch_agrees_with_single(index, catalog):
    queries = [*list(catalog.distinctive)[:5], "modern coffee", "night", "unmatchedword", '"']
    filters = {"tags": ["sale"]}
    for f in (None, filters):
        batch = index.search_batch(queries, k=7, filters=f)
        assert batch == [index.search(q, k=7, filters=f) for q in queries]
    assert index.search_batch([], k=3) == []


@pytest.mark.parametrize(
    "query",
    [
        "sale: 50% (off)",
        '"',
        '"modern',
        "title:modern",
        "AND",
        "modern OR",
        "NOT modern",
        "-bold +",
        "*",
        "mod*",
        "[1 TO 5]",
        "{x}",
        "\\",
        "modern^3",
        "modern~2",
        "IN [a b]",
        "a && b || !c",
        "/regex.*/",
        "🎉 party 🎉",
        "x" * 300,
    ],
)
def test_query_syntax_is_plain_text(index, query):
    hits = index.search(query, k=5)
    assert isinstance(hits, list)


def test_query_syntax_words_still_match(index, catalog):
    # "title:modern" is the words "title" and "modern", not a field query
    want = brute_force(catalog.records, "title modern")
    assert {h.id for h in index.search("title:modern", k=N)} == want
    assert index.search('"', k=5) == []  # nothing left to search for


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query_is_config_error(index, query):
    with pytest.raises(ConfigError, match="empty"):
        index.search(query)
    with pytest.raises(ConfigError):
        index.search_batch(["modern", query])


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_config_error(index, k):
    with pytest.raises(ConfigError, match="k="):
        index.search("modern", k=k)


# -- factory and store ---------------------------------------------------------------------


def test_unknown_backend_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: tantivy, elasticsearch"):
        open_template_index("solr", root="x")
    with pytest.raises(ConfigError, match="allowed: tantivy, elasticsearch"):
        build_template_index("faiss", [], root="x")


def test_unknown_option_lists_allowed(tmp_path):
    with pytest.raises(ConfigError, match="allowed: root, config"):
        open_template_index("tantivy", root=tmp_path, hosts="http://x")


def test_open_unpublished_store_says_how_to_fix(tmp_path):
    with pytest.raises(IndexStoreError, match="build_template_index"):
        open_template_index("tantivy", root=tmp_path)


def test_closed_index_raises(built):
    ix = open_template_index("tantivy", root=built[0])
    ix.close()
    with pytest.raises(IndexStoreError, match="closed"):
        ix.search("modern")


def test_empty_catalogue_builds_empty_index(tmp_path):
    build_template_index("tantivy", [], root=tmp_path)
    with open_template_index("tantivy", root=tmp_path) as ix:
        assert ix.count() == 0 and ix.search("modern") == []


def test_duplicate_ids_are_refused(tmp_path):
    recs = [TemplateRecord(id="a", title="x"), TemplateRecord(id="a", title="y")]
    with pytest.raises(DataError, match="duplicate"):
        build_template_index("tantivy", recs, root=tmp_path)


def test_rebuild_publishes_new_version_and_prunes(tmp_path, catalog):
    first = build_template_index("tantivy", catalog.records[:50], root=tmp_path)
    reports = [
        build_template_index("tantivy", catalog.records, root=tmp_path, keep_versions=2)
        for _ in range(3)
    ]
    assert reports[0].previous_version == first.version
    with open_template_index("tantivy", root=tmp_path) as ix:
        assert ix.version == reports[-1].version and ix.count() == N
    # Pruning never removes the live version and keeps exactly the newest two.
    left = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert left == sorted([reports[-2].version, reports[-1].version])


@pytest.mark.parametrize("where", ["while writing", "before publish"])
def test_killed_reindex_keeps_old_version(tmp_path, catalog, monkeypatch, where):
    old = build_template_index("tantivy", catalog.records, root=tmp_path)
    word = next(iter(catalog.distinctive))
    with open_template_index("tantivy", root=tmp_path) as ix:
        before = ix.search(f"{word} modern", k=10)

    class Killed(RuntimeError):
        pass

    def boom(*args, **kwargs):
        raise Killed(where)

    if where == "while writing":
        real = tantivy_index._document
        monkeypatch.setattr(
            tantivy_index, "_document", lambda r, q=(): boom() if r.id == "t00100" else real(r, q)
        )
    else:
        monkeypatch.setattr(tantivy_index.IndexStore, "publish", boom)
    with pytest.raises(Killed):
        build_template_index("tantivy", catalog.records[:150], root=tmp_path)
    monkeypatch.undo()

    with open_template_index("tantivy", root=tmp_path) as ix:
        assert ix.version == old.version and ix.count() == N
        assert ix.search(f"{word} modern", k=10) == before
    # the failed build left nothing behind: only the old version remains
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [old.version]


# -- catalogue input -----------------------------------------------------------------------


def _rejects(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rejects_have_file_line_reason(tmp_path):
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "thumbs" / "a.png").write_bytes(b"png")
    lines = [
        {
            "id": "a",
            "title": "Summer sale",
            "tags": ["sale", " summer "],
            "category": "Poster",
            "thumbnail": "thumbs/a.png",
        },  # 1 ok
        "{not json",  # 2 bad JSON
        {"title": "no id"},  # 3 missing id
        {"id": "c", "title": "   "},  # 4 blank title
        "",  # 5 blank: ignored
        {"id": "a", "title": "again"},  # 6 duplicate id
        {"id": "d", "title": "Thumb gone", "thumbnail": "thumbs/none.png"},  # 7 missing file
        [1, 2],  # 8 not an object
        {"id": 42, "title": "Numeric id", "tags": "x;y|z"},  # 9 ok (coerced)
    ]
    src = tmp_path / "cat.jsonl"
    src.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = read_templates(src, rejects_path=tmp_path / "rejects.jsonl")

    assert [r.id for r in out.records] == ["a", "42"]
    assert out.records[0].tags == ("sale", "summer")
    assert out.records[0].thumbnail == str((tmp_path / "thumbs" / "a.png").resolve())
    assert out.records[1].tags == ("x", "y", "z")
    rej = _rejects(tmp_path / "rejects.jsonl")
    assert [(r["line"], r["id"]) for r in rej] == [
        (2, None),
        (3, None),
        (4, "c"),
        (6, "a"),
        (7, "d"),
        (8, None),
    ]
    assert all(r["file"] == str(src) for r in rej)
    reasons = [r["reason"] for r in rej]
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "id: missing"
    assert reasons[2].startswith("title:")
    assert "duplicate id 'a' (first seen at line 1)" in reasons[3]
    assert "thumbs/none.png" in reasons[4] and "does not exist" in reasons[4]
    assert "JSON object" in reasons[5]


def test_csv_rejects_and_tag_separators(tmp_path):
    src = tmp_path / "cat.csv"
    src.write_text(
        "id,title,description,tags,category\n"  # line 1: header
        "a,Summer sale,big discounts,sale; summer|promo,Poster\n"  # 2 ok
        ",No id,,,\n"  # 3 missing id
        "b,,desc,,\n"  # 4 missing title
        "c,Too many,x,y,z,extra\n"  # 5 extra field
        "d,Too few\n"  # 6 missing fields
        "a,Duplicate,,,\n"  # 7 duplicate
        '"e","Quoted, with comma","multi\nline",,Card\n'  # 8-9 ok, spans two lines
        'f,"bad"quote,,,\n'  # 10 text after a closing quote
        "\n"  # 11 blank: ignored
        'g,"unclosed,,,\n'  # 12 an unclosed quote is reported, not merged
    )
    out = read_templates(src, rejects_path=tmp_path / "rej.jsonl")
    assert [r.id for r in out.records] == ["a", "e"]
    assert out.records[0].tags == ("sale", "summer", "promo")
    assert out.records[1].title == "Quoted, with comma"
    rej = _rejects(tmp_path / "rej.jsonl")
    assert [(r["line"], r["id"]) for r in rej] == [
        (3, None),
        (4, "b"),
        (5, "c"),
        (6, "d"),
        (7, "a"),
        (10, None),
        (12, None),
    ]
    assert rej[5]["reason"].startswith("bad CSV row") and rej[6]["reason"].startswith("bad CSV")
    assert rej[0]["reason"].startswith("id:") and rej[1]["reason"].startswith("title:")
    assert "6 fields, header has 5" in rej[2]["reason"]
    assert "2 fields, header has 5" in rej[3]["reason"]
    assert "duplicate" in rej[4]["reason"]


def test_catalogue_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_templates(tmp_path / "missing.jsonl")
    (tmp_path / "cat.txt").write_text("id,title\n")
    with pytest.raises(DataError, match=r"use one of \.jsonl, \.csv"):
        read_templates(tmp_path / "cat.txt")
    (tmp_path / "noid.csv").write_text("name,title\nx,y\n")
    with pytest.raises(DataError, match="no column"):
        read_templates(tmp_path / "noid.csv")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="cannot be read"):
        read_templates(tmp_path / "bin.jsonl")


def test_empty_catalogue_has_no_records_and_no_rejects(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    out = read_templates(tmp_path / "empty.jsonl", rejects_path=tmp_path / "r.jsonl")
    assert out.records == [] and out.rejects == [] and (tmp_path / "r.jsonl").read_text() == ""


def test_catalogue_round_trip_into_index(tmp_path, catalog):
    src = tmp_path / "cat.jsonl"
    src.write_text("".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in catalog.records))
    out = read_templates(src)
    assert out.records == catalog.records and out.rejects == []
    assert records_checksum(out.records) == records_checksum(catalog.records)


# -- logged-query expansion, the dense channel, fetch/documents, schema v1 ----------------------

# Logged queries for the dense/expanded build: every 7th template (t00000, t00007, ...) was
# clicked for "<two vocabulary words>" and every 21st also for "zq<id>", a word no template text
# holds (t00000: "zq00000"). Seeded, so the build is the same in every run.
def make_expansions(records, seed=1) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out = {}
    for i, r in enumerate(records):
        if i % 7 == 0:
            out[r.id] = [" ".join(rng.sample(VOCAB, 2))]
            if i % 21 == 0:
                out[r.id].append(f"Zq{i:05d}  Logo")  # as typed: case and spaces kept
    return out


@pytest.fixture(scope="module")
def dense_built(tmp_path_factory, catalog):
    """A version built with expansions, a WordEncoder dense channel and extra meta."""
    root = tmp_path_factory.mktemp("tpl-dense")
    expansions = make_expansions(catalog.records)
    enc = WordEncoder(dim=512)
    fusion = {"raw": 0.5, "raw_coverage": 1.0, "coverage_floor": 0.5, "dense": 1.0, "k": 10}
    build_template_index("tantivy", catalog.records, root=root, expansions=expansions,
                         encoder=enc, extra_meta={"fusion": fusion, "log": {"queries": 3}})
    return root, expansions, enc, fusion


@pytest.fixture()
def dense_index(dense_built):
    ix = open_template_index("tantivy", root=dense_built[0], encoder=dense_built[2])
    yield ix
    ix.close()


def test_expansion_makes_an_item_findable_by_its_logged_query(dense_index, index, catalog):
    # "zq00021" is in no template's text, only in t00021's logged query "Zq00021  Logo"
    assert brute_force(catalog.records, "zq00021") == set()
    assert index.search("zq00021") == []  # the build without a log cannot find it
    assert [h.id for h in dense_index.search("zq00021")] == ["t00021"]
    assert [h.id for h in dense_index.search("ZQ00042", k=1)] == ["t00042"]  # any case


def test_expanded_build_records_what_it_used(dense_index, dense_built, catalog):
    _, expansions, enc, fusion = dense_built
    meta = dense_index.meta
    assert meta["schema_version"] == 2 and meta["expanded_items"] == len(expansions) == 46
    assert meta["dense"] == {"encoder": enc.name, "dim": 512,
                             "rows": N + sum(len(q) for q in expansions.values())}
    assert meta["log"] == {"queries": 3}  # extra_meta is stored as given
    assert dense_index.fusion_params == fusion
    want = {" ".join(q.split()).casefold() for qs in expansions.values() for q in qs}
    assert dense_index.logged_queries() == want and "zq00021 logo" in want


def test_a_build_without_log_or_encoder_has_none(index):
    assert not index.has_dense and index.fusion_params is None
    assert index.logged_queries() == set()
    with pytest.raises(IndexStoreError, match="no dense channel; rebuild it with an encoder"):
        index.search_dense_batch(["modern"])


DENSE_FILTERS = [None, {"category": "poster"}, {"tags": ["sale"]},
                 {"category": "FLYER", "tags": ["summer", "Sale"]},
                 {"tags": ["black friday"]}, {"category": "no-such-category"}]


@pytest.mark.parametrize("filters", DENSE_FILTERS, ids=str)
def test_dense_search_with_filters_equals_brute_force(dense_index, dense_built, catalog,
                                                      filters):
    _, expansions, enc, _ = dense_built
    texts, row_ids, kinds = dense_rows(catalog.records, expansions)
    queries = ["modern coffee", "zq00063", "night party festival", "unmatchedword"]
    scores = brute_scores(enc.encode(texts), row_ids, kinds, DenseConfig(), enc.encode(queries))
    category, tags = (filters or {}).get("category"), (filters or {}).get("tags", ())
    allowed = {r.id for r in catalog.records
               if (category is None or r.category.casefold() == category.casefold())
               and {t.casefold() for t in tags} <= {t.casefold() for t in r.tags}}
    allow = dict.fromkeys(allowed, True)
    by_id = {r.id: r for r in catalog.records}
    for k in (1, 10, N + 3):
        got = dense_index.search_dense_batch(queries, k, filters)
        assert len(got) == len(queries)
        for hits, s in zip(got, scores):
            assert {h.id for h in hits} <= allowed
            want = brute_top(s, k, allow)
            assert len(hits) == len(want) == min(k, len(allowed))
            np.testing.assert_allclose([h.score for h in hits], [x for _, x in want], atol=1e-5)
            for h in hits:  # the hit carries the template's stored fields
                rec = by_id[h.id]
                assert (h.title, h.category, h.tags) == (rec.title, rec.category, rec.tags)
    if allowed:  # the logged-query-only word finds its template whenever the filter allows it
        top = dense_index.search_dense_batch(["zq00063"], 1)[0][0]
        assert top.id == "t00063"


def test_dense_search_with_precomputed_vectors(dense_index, dense_built):
    enc = dense_built[2]
    queries = ["modern coffee", "vintage"]
    assert dense_index.search_dense_batch(queries, 5, vectors=enc.encode(queries)) == \
        dense_index.search_dense_batch(queries, 5)
    with pytest.raises(ConfigError, match="empty"):
        dense_index.search_dense_batch(["ok", " "])


def test_dense_index_needs_its_own_encoder(dense_built):
    root = dense_built[0]
    with pytest.raises(IndexStoreError, match="built with 'words-512', not 'words-64'"):
        open_template_index("tantivy", root=root, encoder=WordEncoder(dim=64))
    with open_template_index("tantivy", root=root) as ix:  # opens; BM25 works without it
        assert ix.has_dense and ix.search("zq00021")[0].id == "t00021"
        with pytest.raises(IndexStoreError, match="open .* with its encoder 'words-512'"):
            ix.search_dense_batch(["modern"])


def test_fetch_and_documents(index, catalog):
    by_id = {r.id: r for r in catalog.records}
    got = index.fetch(["t00005", "nope", "t00300", "t00005"])
    assert sorted(got) == ["t00005", "t00300"]  # unknown ids left out, duplicates once
    for i, h in got.items():
        rec = by_id[i]
        assert (h.title, h.category, h.tags) == (rec.title, rec.category, rec.tags)
        assert h.fields["description"] == rec.description
    assert index.fetch([]) == {} and index.fetch(["nope"]) == {}
    docs = index.documents()
    assert len(docs) == N and {d.id for d in docs} == set(by_id)


def test_documents_of_an_empty_index(tmp_path):
    build_template_index("tantivy", [], root=tmp_path)
    with open_template_index("tantivy", root=tmp_path) as ix:
        assert ix.documents() == [] and ix.fetch(["a"]) == {}


def _as_schema(root, version):
    live = IndexStore(root).open_current()
    meta_path = live / tantivy_index.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = version
    meta_path.write_text(json.dumps(meta))
    (live / tantivy_index.LOG_QUERIES_FILE).unlink(missing_ok=True)  # v1 builds wrote none


def test_schema_v1_index_still_opens_and_searches(tmp_path, catalog):
    records = catalog.records[:120]
    build_template_index("tantivy", records, root=tmp_path)
    _as_schema(tmp_path, 1)
    with open_template_index("tantivy", root=tmp_path) as ix:
        assert ix.meta["schema_version"] == 1 and ix.count() == 120
        assert not ix.has_dense and ix.fusion_params is None and ix.logged_queries() == set()
        for query, category, tags in FILTER_CASES:
            filters = {"category": category, "tags": list(tags)} if category else {"tags": list(tags)}
            got = ix.search(query, k=120, filters=filters)
            assert {h.id for h in got} == brute_force(records, query, category, tags)
        assert ix.fetch(["t00003"])["t00003"].title == records[3].title


def test_unknown_schema_version_says_rebuild(tmp_path, catalog):
    build_template_index("tantivy", catalog.records[:5], root=tmp_path)
    _as_schema(tmp_path, 3)
    with pytest.raises(IndexStoreError, match="schema_version=3.*rebuild"):
        open_template_index("tantivy", root=tmp_path)
