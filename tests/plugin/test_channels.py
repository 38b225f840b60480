"""One modality's channels and their per-query fusion (``plugin.channels``), on a real tantivy
index with a fake-encoder dense channel (``WordEncoder``: bag of hashed words, so a prompt that
shares no word with the query has similarity 0, below every rewrite floor).

Catalogue: ``make_templates(80, seed=2)``; every 5th template was clicked in the log for
"<its title's first word> logo", so the dense channel holds those queries as rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from indexers.errors import IndexStoreError
from indexers.images import ImageIndex
from indexers.template_backends import build_template_index, open_template_index
from plugin.channels import MIN_DEPTH, MODES, search_images, search_templates
from plugin.fusion import FusionWeights, fuse_channels

from ..indexers.template_fixtures import make_templates
from ..indexers.text_fakes import WordEncoder
from .fakes import HashEncoder, outcome

K = 10
QUERY = "modern coffee"
ON_TOPIC = "modern coffee poster bright"  # cos with QUERY = 2 / (sqrt 2 x 2) = 0.707 > 0.5
OFF_TOPIC = "yoga wellness studio"  # no shared word: cos 0


@pytest.fixture(scope="module")
def catalog():
    return make_templates(80, seed=2).records


@pytest.fixture(scope="module")
def encoder():
    return WordEncoder(dim=512)


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory, catalog, encoder):
    root = tmp_path_factory.mktemp("channels-dense")
    expansions = {r.id: [f"{r.title.split()[0]} logo"] for r in catalog[::5]}
    build_template_index("tantivy", catalog, root=root, expansions=expansions, encoder=encoder)
    ix = open_template_index("tantivy", root=root, encoder=encoder)
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory, catalog):
    root = tmp_path_factory.mktemp("channels-bm25")
    build_template_index("tantivy", catalog, root=root)
    ix = open_template_index("tantivy", root=root)
    yield ix
    ix.close()


def run(index, mode, prompt=ON_TOPIC, path="rewrite", weights=None, encoder=None,
        query=QUERY, filters=None):
    timings: dict[str, float] = {}
    res = search_templates(index, query, outcome(prompt, path), K, filters, MODES[mode],
                           weights or FusionWeights(), encoder, timings)
    return res, timings


def ids(res) -> list[str]:
    return [r.id for r in res.results]


def lists_of(index, query=QUERY, prompt=ON_TOPIC, filters=None) -> dict[str, list[str]]:
    """Each channel's list as the index returns it, at the depth the channels search."""
    depth = max(K, MIN_DEPTH)
    return {"raw": [h.id for h in index.search(query, depth, filters)],
            "dense": [h.id for h in index.search_dense_batch([query], depth, filters)[0]],
            "rewrite": [h.id for h in index.search(prompt, depth, filters)]}


# -- each mode's channels ---------------------------------------------------------------------


def test_single_channel_modes_return_that_channel_as_the_index_ranks_it(dense_index, encoder):
    want = lists_of(dense_index)
    for mode in ("raw", "dense", "rewrite"):
        res, timings = run(dense_index, mode, encoder=encoder)
        assert res.channels == {mode: 1.0} and not res.fused, mode
        assert ids(res) == want[mode][:K], mode
        assert [r.ranks for r in res.results] == [{mode: i} for i in range(1, K + 1)]
        assert res.task == "template" and res.index_version == dense_index.version
        assert {"template.encode", "template.search"} <= set(timings)
    raw, _ = run(dense_index, "raw")
    assert [r.score for r in raw.results] == [h.score for h in dense_index.search(QUERY, K)]
    assert raw.results[0].fields["title"] == dense_index.search(QUERY, 1)[0].title


def test_hybrid_and_fused_fuse_with_per_query_weights(dense_index, encoder):
    want = lists_of(dense_index)
    w = FusionWeights()
    hybrid, _ = run(dense_index, "hybrid", encoder=encoder)
    assert hybrid.fused and hybrid.channels == {"raw": 1.0, "dense": 1.0}
    expect = fuse_channels({c: want[c] for c in ("raw", "dense")}, hybrid.channels, w.k, K)
    assert ids(hybrid) == [f.id for f in expect]
    assert [r.ranks for r in hybrid.results] == [f.ranks for f in expect]

    fused, _ = run(dense_index, "fused", encoder=encoder)
    sim = 2 / (np.sqrt(2) * 2)  # ON_TOPIC shares 2 of its 4 words with the 2-word query
    assert fused.channels["rewrite"] == pytest.approx((sim - 0.5) / 0.5, abs=1e-5)
    assert fused.channels["raw"] == fused.channels["dense"] == 1.0
    expect = fuse_channels(want, fused.channels, w.k, K)
    assert ids(fused) == [f.id for f in expect] and fused.prompt == ON_TOPIC
    assert any("rewrite" in r.ranks for r in fused.results)


def test_dense_mode_without_a_dense_channel_is_index_store_error(bm25_index):
    with pytest.raises(IndexStoreError, match="no dense channel"):
        run(bm25_index, "dense")


def test_hybrid_without_a_dense_channel_is_raw(bm25_index, encoder):
    res, _ = run(bm25_index, "hybrid", encoder=encoder)
    assert res.channels == {"raw": 1.0} and not res.fused
    assert ids(res) == [h.id for h in bm25_index.search(QUERY, K)]


def test_raw_path_never_adds_a_rewrite_list(dense_index, encoder):
    # the rewrite fell back to the raw query: fusing it again would double-count raw
    res, _ = run(dense_index, "fused", prompt=QUERY, path="raw", encoder=encoder)
    assert set(res.channels) == {"raw", "dense"}
    assert all("rewrite" not in r.ranks for r in res.results)
    hybrid, _ = run(dense_index, "hybrid", encoder=encoder)
    assert ids(res) == ids(hybrid)
    # the rewrite-only mode still answers (with the raw query it fell back to)
    only, _ = run(dense_index, "rewrite", prompt=QUERY, path="raw", encoder=encoder)
    assert only.channels == {"rewrite": 1.0} and ids(only) == lists_of(dense_index)["raw"][:K]


def test_off_topic_rewrite_is_dropped_and_changes_nothing(dense_index, encoder):
    # the off-topic prompt's BM25 list would change the order if it were fused
    lists = lists_of(dense_index, prompt=OFF_TOPIC)
    if_used = fuse_channels(lists, {"raw": 1.0, "dense": 1.0, "rewrite": 1.0}, 60, K)
    fused, _ = run(dense_index, "fused", prompt=OFF_TOPIC, encoder=encoder)
    hybrid, _ = run(dense_index, "hybrid", encoder=encoder)
    assert fused.channels == {"raw": 1.0, "dense": 1.0, "rewrite": 0.0}
    assert ids(fused) == ids(hybrid) != [f.id for f in if_used]
    assert [r.score for r in fused.results] == [r.score for r in hybrid.results]
    assert all("rewrite" not in r.ranks for r in fused.results)


def test_without_an_encoder_the_rewrite_has_no_floor(dense_index):
    # nothing measures the prompt's similarity: the rewrite gets its full weight
    res, _ = run(dense_index, "fused", prompt=OFF_TOPIC, weights=FusionWeights(rewrite=0.8))
    assert res.channels == {"raw": 1.0, "dense": 1.0, "rewrite": 0.8}
    assert ids(res) == [f.id for f in fuse_channels(lists_of(dense_index, prompt=OFF_TOPIC),
                                                     res.channels, 60, K)]


def test_raw_weight_follows_query_word_coverage(dense_index, encoder):
    # "xq00010" is in t00010's title (its top hit); "zzzunknown" is nowhere: coverage 1/2
    w = FusionWeights(raw=0.5, raw_coverage=1.0, coverage_floor=0.0)
    half, _ = run(dense_index, "hybrid", weights=w, encoder=encoder, query="xq00010 zzzunknown")
    full, _ = run(dense_index, "hybrid", weights=w, encoder=encoder, query="xq00010")
    assert half.channels["raw"] == pytest.approx(1.0)  # 0.5 + 1.0 x 0.5
    assert full.channels["raw"] == pytest.approx(1.5)  # 0.5 + 1.0 x 1
    assert half.results[0].id == full.results[0].id == "t00010"


def test_filters_reach_every_channel(dense_index, catalog, encoder):
    filters = {"category": "poster"}
    posters = {r.id for r in catalog if r.category == "Poster"}
    res, _ = run(dense_index, "fused", encoder=encoder, filters=filters)
    assert res.results and {r.id for r in res.results} <= posters
    expect = fuse_channels(lists_of(dense_index, filters=filters), res.channels, 60, K)
    assert ids(res) == [f.id for f in expect]


# -- images -----------------------------------------------------------------------------------


def run_images(image_index, mode, prompt, encoder=None):
    return search_images(image_index, HashEncoder(), "red cabin", outcome(prompt, task="image"),
                         K, None, MODES[mode], FusionWeights(), encoder, {})


def test_images_raw_fused_and_off_topic(image_index):
    clip = HashEncoder()
    # many captions tie on "red cabin": compare with the list at the depth the channel reads
    raw_ids = [h.id for h in image_index.search(clip.encode_texts(["red cabin"]),
                                                MIN_DEPTH)[0]][:K]
    raw = run_images(image_index, "raw", "red cabin photo")
    assert raw.channels == {"raw": 1.0} and [r.id for r in raw.results] == raw_ids
    # "blue dog" shares no word with "red cabin": dropped, the fused list is raw's
    off = run_images(image_index, "fused", "blue dog", encoder=WordEncoder())
    assert off.channels == {"raw": 1.0, "rewrite": 0.0} and [r.id for r in off.results] == raw_ids
    on = run_images(image_index, "fused", "red cabin photo", encoder=WordEncoder())
    assert on.fused and on.channels["rewrite"] > 0
    with pytest.raises(IndexStoreError, match="has no text channel"):
        run_images(image_index, "dense", "red cabin")


def test_images_text_channel_finds_what_users_called_an_image(image_index):
    """A titled image index with a text channel: "crimson hut" is no caption's word, but the
    log says users who typed it clicked img07; the dense list finds img07 first, and fused
    lists raw, dense and rewrite with their weights."""
    from indexers.image_text import build_image_text_index

    words = WordEncoder()
    titled = ImageIndex.build(image_index.vectors(), image_index.ids, image_index.metadata,
                              image_index.encoder_name)
    titled.dense = build_image_text_index(titled.ids, titled.metadata, words,
                                          {"img07": ["crimson hut"]})
    query = "crimson hut"
    dense = search_images(titled, HashEncoder(), query, outcome(query, task="image"), K, None,
                          MODES["dense"], FusionWeights(), words, {})
    assert dense.channels == {"dense": 1.0} and dense.results[0].id == "img07"
    fused = search_images(titled, HashEncoder(), query, outcome("crimson hut photo", task="image"),
                          K, None, MODES["fused"], FusionWeights(), words, {})
    assert set(fused.channels) == {"raw", "dense", "rewrite"} and fused.channels["dense"] > 0
    assert "img07" in [r.id for r in fused.results] and "dense" in fused.results[0].ranks
    filtered = search_images(titled, HashEncoder(), query, outcome(query, task="image"), K,
                             {"colour": "blue"}, MODES["dense"], FusionWeights(), words, {})
    assert filtered.results and all(r.fields["colour"] == "blue" for r in filtered.results)
