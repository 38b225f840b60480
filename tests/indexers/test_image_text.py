"""The image index's text channel (``indexers.image_text``): built from the manifest's titles
and tags (``"pattern 7. blue"``) and the query log's clicks, versioned with the CLIP index,
exact against brute force, filtered, kept through a shard merge, and its logged queries kept for
``udrl eval``'s leak warning.

Catalogue: ``tests/indexers/conftest.py`` (40 titled images "pattern i", tags = colour, 6 bad
lines). Log: "crimson swatch" clicked img03 twice and img10 once; "sunset fabric" clicked img21.
Neither query shares a word with any title or tag.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexers.errors import ConfigError
from indexers.image_build import build_image_index, merge_image_shards
from indexers.image_text import build_image_text_index, image_text, search_image_text
from indexers.images import ImageIndexConfig, load_image_index
from indexers.reindex import ImageReindexConfig, reindex_images

from .conftest import N_GOOD
from .text_fakes import WordEncoder, brute_scores, brute_top

CFG = ImageIndexConfig(model_name="udrl-tiny-clip", pretrained=None, batch_size=7,
                       index_type="flat")
LOG = "crimson swatch\timg03\ncrimson swatch\timg03\ncrimson swatch\timg10\nsunset fabric\timg21\n"
EXPANSIONS = {"img03": ["crimson swatch"], "img10": ["crimson swatch"],
              "img21": ["sunset fabric"]}


@pytest.fixture(scope="module")
def words():
    return WordEncoder(dim=256)


@pytest.fixture(scope="module")
def text_store(tmp_path_factory, image_manifest, tiny_encoder, words):
    root = tmp_path_factory.mktemp("text_store")
    build_image_index(image_manifest, root, tiny_encoder, CFG, progress=False,
                      text_encoder=words, expansions=EXPANSIONS)
    return root


def test_image_text_joins_title_tags_and_caption():
    assert image_text({"title": "Red barn", "tags": ["farm", "red"],
                       "meta": {"caption": "a barn at dusk"}}) == "Red barn. farm, red. a barn at dusk"
    assert image_text({"path": "/x.png", "tags": []}) == ""


def test_text_channel_is_published_with_the_clip_index(text_store, words):
    ix = load_image_index(text_store)
    assert ix.has_dense and ix.dense.n_items == N_GOOD
    assert len(ix.dense) == N_GOOD + 3  # one row per image, one per (query, image) click
    assert ix.meta["text_channel"] == {"encoder": words.name, "items": N_GOOD, "rows": N_GOOD + 3}
    assert ix.logged_queries() == {"crimson swatch", "sunset fabric"}
    hits = search_image_text(ix, words.encode(["crimson swatch"]), 2)[0]
    assert sorted(h.id for h in hits) == ["img03", "img10"]  # found only through the log
    assert hits[0].metadata["title"] in {"pattern 3", "pattern 10"}


def test_text_channel_is_exact_and_filtered(text_store, words):
    ix = load_image_index(text_store)
    texts, ids, kinds = [], [], []
    for i, m in zip(ix.ids, ix.metadata):
        texts.append(image_text(m)), ids.append(i), kinds.append("item")
        for q in EXPANSIONS.get(i, ()):
            texts.append(q), ids.append(i), kinds.append("query")
    queries = ["pattern 7 blue", "crimson swatch red", "green", "sunset"]
    qv = words.encode(queries)
    want = brute_scores(words.encode(texts), ids, kinds, ix.dense.config, qv)
    cc0 = {i: m["license"] == "cc0" for i, m in zip(ix.ids, ix.metadata)}
    for k in (1, 5, 13, N_GOOD):
        got = search_image_text(ix, qv, k)
        got_cc0 = search_image_text(ix, qv, k, {"license": "cc0"})
        for g, gf, w in zip(got, got_cc0, want):
            assert [h.id for h in g] == [i for i, _ in brute_top(w, k)]
            assert [h.id for h in gf] == [i for i, _ in brute_top(w, k, cc0)]
            assert np.allclose([h.score for h in g], [s for _, s in brute_top(w, k)], atol=1e-5)


def test_untitled_catalogue_has_no_text_channel(image_catalog, tiny_encoder, words, tmp_path):
    build_image_index(image_catalog / "imgs", tmp_path, tiny_encoder, CFG, progress=False,
                      text_encoder=words)
    ix = load_image_index(tmp_path)
    assert not ix.has_dense and ix.meta["text_channel"] is None and ix.logged_queries() == set()


def test_shard_merge_keeps_the_text_channel(text_store, image_manifest, tiny_encoder, words,
                                            tmp_path):
    for i in range(2):
        build_image_index(image_manifest, tmp_path / f"s{i}", tiny_encoder,
                          replace(CFG, shard=f"{i}/2"), progress=False, text_encoder=words,
                          expansions=EXPANSIONS)
    merge_image_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    merged, full = load_image_index(tmp_path / "merged"), load_image_index(text_store)
    assert merged.has_dense and merged.logged_queries() == full.logged_queries()
    qv = words.encode(["crimson swatch", "pattern 12 green", "blue featured"])
    for a, b in zip(search_image_text(merged, qv, 10), search_image_text(full, qv, 10)):
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    # one shard without a text channel: the merge drops it rather than half-cover the images
    build_image_index(image_manifest, tmp_path / "t1", tiny_encoder,
                      replace(CFG, shard="1/2"), progress=False)
    merge_image_shards([tmp_path / "s0", tmp_path / "t1"], tmp_path / "half")
    assert not load_image_index(tmp_path / "half").has_dense


def test_reindex_images_with_a_log(image_manifest, tiny_encoder, words, tmp_path):
    log = tmp_path / "log.tsv"
    log.write_text(LOG + "no tab here\tx\ty\n")
    cfg = ImageReindexConfig(source=image_manifest, store_root=tmp_path / "store",
                             model_name=CFG.model_name, pretrained=None, index_type="flat",
                             log_path=log)
    with pytest.raises(ConfigError, match="turn the dense channel on"):
        reindex_images(cfg, tiny_encoder, progress=False)
    rep = reindex_images(cfg, tiny_encoder, progress=False, text_encoder=words)
    assert rep["text_channel"] and rep["log"]["clicks"] == 4 and rep["log"]["rejected_lines"] == 1
    ix = load_image_index(tmp_path / "store")
    assert ix.meta["log"]["checksum"] == rep["log"]["checksum"]
    assert [h.id for h in search_image_text(ix, words.encode(["sunset fabric"]), 1)[0]] == ["img21"]


def test_build_text_index_without_titles_is_none(words):
    assert build_image_text_index(["a", "b"], [{"tags": []}, {"path": "x"}], words) is None
