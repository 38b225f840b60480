"""Grounding queries in the catalogue (``plugin.grounding.IndexGrounder``) and the query
sources of grounded distillation (``plugin.grounded_jobs``).

World: ``make_templates(40, seed=6)`` in a tantivy index with a ``WordEncoder`` dense channel
that embeds "nuptials" as "marriage" (a synonym BM25 cannot see). The log::

    wedding invite   -> t00003 x3, t00007 x1     (in the index's expansions)
    marriage card    -> t00009 x2                (in the index's expansions)
    mystery          -> t00035 x1                (grounder's log only: no channel finds it)
    ghost            -> zz404 x1                 (an id the catalogue lacks)
    cabin winter     -> img4 x1, zz x1           (an image click, and an unknown one)
    window shopping     searched, never clicked
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from indexers.query_log import QueryLog
from indexers.template_backends import build_template_index, open_template_index
from plugin.fusion import FusionWeights, fuse_channels, term_coverage
from plugin.grounded_jobs import is_query_log, open_grounder, pseudo_queries, read_query_source
from plugin.grounding import IndexGrounder, image_text
from rewriters.errors import DataError
from rewriters.grounding import GroundItem
from rewriters.queries import QuerySpec

from ..indexers.template_fixtures import make_templates
from ..indexers.text_fakes import WordEncoder
from .conftest import settings_for

EVENTS = ([("wedding invite", "t00003")] * 3 + [("wedding invite", "t00007")]
          + [("marriage card", "t00009")] * 2 + [("mystery", "t00035"), ("ghost", "zz404"),
                                                 ("cabin winter", "img4"), ("cabin winter", "zz"),
                                                 ("window shopping", None)])


@pytest.fixture(scope="module")
def records():
    return make_templates(40, seed=6).records


@pytest.fixture(scope="module")
def qlog():
    return QueryLog.from_events(EVENTS)


@pytest.fixture(scope="module")
def encoder():
    return WordEncoder(dim=512, synonyms={"nuptials": "marriage"})


@pytest.fixture(scope="module")
def index(tmp_path_factory, records, qlog, encoder):
    root = tmp_path_factory.mktemp("grounding")
    ids = {r.id for r in records}
    build_template_index("tantivy", records, root=root, encoder=encoder,
                         expansions=qlog.without(["mystery"]).expansions(ids))
    ix = open_template_index("tantivy", root=root, encoder=encoder)
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def grounder(index, qlog, encoder):
    return IndexGrounder(index, qlog, FusionWeights(), None, encoder)


def by_id(records):
    return {r.id: r for r in records}


# -- templates ---------------------------------------------------------------------------------


def test_clicks_come_first_then_fused_neighbours(grounder, index, records):
    got = grounder.ground("Wedding  Invite", "template", k=6)
    assert len(got) == 6 and all(isinstance(g, GroundItem) for g in got)
    # clicked items, most clicked first, weight 1 + ln(1 + clicks)
    assert [(g.id, g.source) for g in got[:2]] == [("t00003", "click"), ("t00007", "click")]
    assert got[0].weight == pytest.approx(1 + math.log(4))
    assert got[1].weight == pytest.approx(1 + math.log(2))
    # then the raw + dense neighbours, fused as the pipeline fuses them, clicks left out
    raw = index.search("Wedding  Invite", 30)
    dense = index.search_dense_batch(["Wedding  Invite"], 30)[0]
    cover = term_coverage("Wedding  Invite",
                          [" ".join([h.title, h.category, *h.tags]) for h in raw[:3]])
    fused = fuse_channels({"raw": [h.id for h in raw], "dense": [h.id for h in dense]},
                          FusionWeights().for_query(cover), 60, 6)
    want = [(rank, f) for rank, f in enumerate(fused, start=1)
            if f.id not in ("t00003", "t00007")][:4]
    assert [g.id for g in got[2:]] == [f.id for _, f in want]
    for g, (rank, f) in zip(got[2:], want):
        assert g.weight == pytest.approx(1 / (1 + 0.25 * rank))
        assert g.source == ("neighbour" if "raw" in f.ranks else "similar-query")
    for g in got:  # the catalogue's own fields
        rec = by_id(records)[g.id]
        assert (g.title, g.tags, g.category, g.description) == (
            rec.title, rec.tags, rec.category, rec.description)


def test_a_similar_logged_query_grounds_an_unseen_query(grounder, index):
    # "nuptials" is in no template text and no logged query: BM25 finds nothing; the dense
    # channel embeds it as "marriage" and finds t00009 through its logged query "marriage card"
    assert index.search("nuptials") == []
    got = grounder.ground("nuptials", "template", k=3)
    assert got[0].id == "t00009" and got[0].source == "similar-query"
    assert got[0].weight == pytest.approx(0.8)  # 1 / (1 + 0.25 x rank 1)
    assert all(g.source == "similar-query" for g in got)


def test_a_click_no_channel_finds_is_fetched(grounder, index, records):
    assert "t00035" not in [h.id for h in index.search("mystery", 30)]
    got = grounder.ground("mystery", "template", k=3)
    assert (got[0].id, got[0].source, got[0].title) == ("t00035", "click",
                                                         by_id(records)["t00035"].title)


def test_clicks_on_unknown_ids_are_left_out(grounder):
    assert "zz404" not in [g.id for g in grounder.ground("ghost", "template", k=40)]


def test_k_bounds_the_answer(grounder):
    assert [g.id for g in grounder.ground("wedding invite", "template", k=1)] == ["t00003"]
    assert len(grounder.ground("modern coffee", "template", k=5)) == 5


def test_targets_are_clicks_when_logged_else_grounding(grounder):
    assert grounder.targets("WEDDING invite") == {"t00003": 1.0, "t00007": 1.0}
    top = grounder.ground("nuptials", "template", 3)
    assert grounder.targets("nuptials", k=3) == {g.id: 1.0 for g in top}
    # logged but never clicked: like an unseen query
    assert grounder.targets("window shopping", k=4) == {
        g.id: 1.0 for g in grounder.ground("window shopping", "template", 4)}
    assert len(grounder.targets("window shopping", k=4)) == 4


def test_search_prompts_are_bm25_ids(grounder, index):
    prompts = ["xq00010 gallery", "wedding invite", "zzzz"]
    got = grounder.search_prompts(prompts, k=5)
    assert got == [[h.id for h in index.search(p, 5)] for p in prompts]
    assert got[0][0] == "t00010" and got[2] == []
    assert IndexGrounder().search_prompts(prompts) == [[], [], []]


def test_no_template_index_grounds_nothing(qlog):
    assert IndexGrounder(None, qlog).ground("wedding invite", "template") == []


# -- images ------------------------------------------------------------------------------------

IMAGES = SimpleNamespace(
    ids=["img0", "img1", "img2", "img3", "img4"],
    metadata=[
        # "red cabin. winter, snow. a cabin in the woods": cabin x2 + 7 other words, |v| = sqrt(11)
        {"title": "red cabin", "tags": ["winter", "snow"], "caption": "a cabin in the woods"},
        {"title": "blue lake", "tags": ["summer"]},
        # "cabin interior. warm fireplace": 4 words, |v| = 2
        {"title": "cabin interior", "tags": [], "description": "warm fireplace"},
        {"title": "", "tags": []},  # no text: embedded as its id "img3"
        {"title": "city night"},
    ],
)


def test_image_text():
    assert image_text(IMAGES.metadata[0]) == "red cabin. winter, snow. a cabin in the woods"
    assert image_text(IMAGES.metadata[2]) == "cabin interior. warm fireplace"
    assert image_text({}) == ""


def test_image_grounding_ranks_by_the_encoder(encoder):
    g = IndexGrounder(None, None, None, IMAGES, encoder)
    got = g.ground("cabin winter", "image", k=5)
    # query |v| = sqrt 2. img0: (2 + 1) / (sqrt 2 sqrt 11) = 0.6396; img2: 1 / (sqrt 2 x 2) =
    # 0.3536; the rest share no word (similarity 0) and are left out
    assert [(x.id, x.source) for x in got] == [("img0", "neighbour"), ("img2", "neighbour")]
    assert got[0].weight == pytest.approx(3 / math.sqrt(22), abs=1e-5)
    assert got[1].weight == pytest.approx(1 / math.sqrt(8), abs=1e-5)
    assert (got[0].title, got[0].tags, got[0].description) == (
        "red cabin", ("winter", "snow"), "a cabin in the woods")
    assert got[1].description == "warm fireplace"
    assert g.ground("cabin winter", "image", k=1)[0].id == "img0"


def test_image_clicks_first_unknown_ids_dropped(encoder, qlog):
    g = IndexGrounder(None, qlog, None, IMAGES, encoder)
    got = g.ground("cabin winter", "image", k=5)  # clicked img4 and "zz" (not an image)
    assert [(x.id, x.source) for x in got] == [("img4", "click"), ("img0", "neighbour"),
                                               ("img2", "neighbour")]
    assert got[0].weight == pytest.approx(1 + math.log(2)) and got[0].title == "city night"
    assert g.ground("img3", "image")[0].id == "img3"  # an item without text by its id


def test_image_grounding_needs_an_encoder():
    assert IndexGrounder(None, None, None, IMAGES, None).ground("cabin", "image") == []


# -- pseudo queries ----------------------------------------------------------------------------


def possible_queries(docs) -> set[str]:
    """Every query pseudo_queries may draw: 1-3 word title spans, tags, category + title word."""
    out = set()
    for d in docs:
        words = d.title.casefold().split()
        for size in (1, 2, 3):
            out |= {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}
        out |= {t.casefold() for t in d.tags}
        out |= {f"{d.category.casefold()} {w}" for w in words} if d.category else set()
    return out


def test_pseudo_queries_are_seeded_distinct_and_from_the_catalogue(index):
    docs = index.documents()
    got = pseudo_queries(docs, 25, seed=0)
    texts = [q.query for q in got]
    assert len(texts) == 25 == len(set(texts)) and all(t.strip() for t in texts)
    assert set(texts) <= possible_queries(docs)
    assert all(isinstance(q, QuerySpec) and q.intent is None for q in got)
    assert pseudo_queries(docs, 25, seed=0) == got
    assert pseudo_queries(docs, 25, seed=1) != got


def test_pseudo_queries_stop_when_the_catalogue_runs_out():
    doc = SimpleNamespace(title="Red", tags=(), category="")
    assert pseudo_queries([doc], 5) == [QuerySpec("red")]


@pytest.mark.parametrize("docs", [[], [SimpleNamespace(title="", tags=("x",), category="c")]])
def test_pseudo_queries_without_titled_docs_is_data_error(docs):
    with pytest.raises(DataError, match="no titled items"):
        pseudo_queries(docs, 5)


# -- query sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,is_log", [
    ("dog\tt1\ncat\n", True),  # a clicked id
    ("dog\timage\ncat\ttemplate\nbird\tboth\nfish\n", False),  # intents: a seed file
    ("dog\ncat\n", False),  # queries only
    ("dog\timage\n" * 50 + "cat\tt00042\n", True),  # one click line makes it a log
    ("", False),
])
def test_is_query_log(tmp_path, text, is_log):
    path = tmp_path / "q.tsv"
    path.write_text(text)
    assert is_query_log(path) is is_log


def test_a_seed_file_with_capitalised_intents_or_comments_is_not_a_log(tmp_path):
    path = tmp_path / "seed.tsv"
    path.write_text("# note\tx\ndog\tImage\ncat\tTemplate\n")  # read_queries lower-cases
    assert is_query_log(path) is False


def test_is_query_log_of_unreadable_file(tmp_path):
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"caf\xe9\tt1\n")
    with pytest.raises(DataError, match="cannot be read"):
        is_query_log(path)


def test_read_query_source(tmp_path):
    log_path = tmp_path / "log.tsv"
    log_path.write_text("Dog \tt1\ndog\tt2\ncat\na\tb\tc\n")  # the last line is rejected
    specs, qlog = read_query_source(log_path)
    assert specs == [QuerySpec("Dog"), QuerySpec("cat")]  # one spec per distinct query
    assert qlog.clicked("dog") == {"t1": 1, "t2": 1}
    seed = tmp_path / "seed.tsv"
    seed.write_text("dog\timage\ncat\n")
    specs, qlog = read_query_source(seed)
    assert specs == [QuerySpec("dog", "image"), QuerySpec("cat")] and qlog is None


def test_open_grounder_without_indexes_is_none(tmp_path):
    assert open_grounder(settings_for(tmp_path)) is None
