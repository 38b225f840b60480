"""The reindex batch jobs end to end: tiny CLIP images, tantivy and the ES double for templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexers.errors import ConfigError, DataError
from indexers.image_build import shard_of
from indexers.images import load_image_index
from indexers.reindex import (
    ImageReindexConfig,
    find_shards,
    merge_images,
    reindex_images,
    shard_store,
)
from indexers.store import IndexStore
from indexers.template_reindex import TemplateReindexConfig, reindex_templates
from indexers.template_backends import open_template_index

from .conftest import N_GOOD
from .es_double import EsDouble
from .template_fixtures import make_templates
from .text_fakes import WordEncoder


def image_cfg(source, store_root, **kw) -> ImageReindexConfig:
    opts = {"model_name": "udrl-tiny-clip", "pretrained": None, "index_type": "flat",
            "batch_size": 8, **kw}
    return ImageReindexConfig(source=source, store_root=store_root, **opts)


# ---- images ---------------------------------------------------------------------------------


def test_images_end_to_end_report_and_rebuild(
    image_manifest, image_catalog, tiny_encoder, tmp_path
):
    root, copy = tmp_path / "images", tmp_path / "out" / "image_rejects.jsonl"
    first = reindex_images(
        image_cfg(image_manifest, root, rejects_path=copy), tiny_encoder, progress=False
    )
    assert json.loads(json.dumps(first)) == first  # JSON-able as is
    live = IndexStore(root).open_current()
    assert first["version"] == str(live) and first["version_name"] == live.name
    assert first["previous_version"] is None and first["store_root"] == str(root)
    # 46 manifest lines: 40 good, 5 bad lines + 1 corrupt image rejected
    assert (first["count"], first["encoded"], first["resumed"]) == (N_GOOD, N_GOOD, 0)
    assert first["rejected"] == 6 and first["skipped_other_shards"] == 0
    assert Path(first["rejects_path"]).parent == live
    rows = [json.loads(x) for x in copy.read_text().splitlines()]
    assert first["rejects_copy"] == str(copy) and len(rows) == 6
    assert {r["id"] for r in rows} >= {"ghost", "remote", "corrupt"}
    assert first["images_per_s"] > 0 and first["encoder"] == tiny_encoder.name

    ix = load_image_index(root, tiny_encoder.name, tiny_encoder.dim)
    assert [h[0].id for h in ix.search(ix.vectors(), k=1)] == ix.ids  # self-retrieval

    # Second run, encoder built from the config, folder catalogue: 41 files, 1 corrupt.
    second = reindex_images(image_cfg(image_catalog / "imgs", root), progress=False)
    assert second["previous_version"] == first["version_name"]
    assert second["encoder"] == tiny_encoder.name == "udrl-tiny-clip/random"
    assert (second["count"], second["rejected"], second["rejects_copy"]) == (N_GOOD, 1, None)
    assert IndexStore(root).open_current().name == second["version_name"]
    again = load_image_index(root)
    vec = dict(zip(again.ids, again.vectors()))
    by_path = {m["path"]: i for i, m in zip(ix.ids, ix.metadata)}
    for i, m in zip(again.ids, again.metadata):  # same seeded weights, same vectors
        np.testing.assert_allclose(vec[i], ix.vectors()[ix.ids.index(by_path[m["path"]])],
                                   atol=1e-5)


def test_image_shards_never_touch_the_live_store_then_merge(image_manifest, tiny_encoder, tmp_path):
    root = tmp_path / "images"
    reports = [
        reindex_images(image_cfg(image_manifest, root, shard=f"{i}/2"), tiny_encoder, False)
        for i in range(2)
    ]
    assert IndexStore(root).current() is None  # nothing served until the merge
    assert find_shards(root) == [shard_store(root, "0/2"), shard_store(root, "1/2")]
    assert [r["store_root"] for r in reports] == [str(root / f"shards/{i}-of-2") for i in (0, 1)]
    want0 = sum(shard_of(f"img{i:02d}", 2) == 0 for i in range(N_GOOD))
    assert [r["count"] for r in reports] == [want0, N_GOOD - want0]
    # 41 catalogue records (the corrupt image is only rejected when decoded) minus shard 0's
    in0 = want0 + (shard_of("corrupt", 2) == 0)
    assert reports[0]["skipped_other_shards"] == N_GOOD + 1 - in0

    merged = merge_images(None, root, index_type="hnsw", progress=False)
    assert json.loads(json.dumps(merged)) == merged
    assert (merged["count"], merged["rejected"], merged["index_type"]) == (N_GOOD, 6, "hnsw")
    assert merged["shards"] == [str(d) for d in find_shards(root)]
    assert merged["previous_version"] is None
    assert IndexStore(root).open_current().name == merged["version_name"]
    assert sorted(load_image_index(root).ids) == [f"img{i:02d}" for i in range(N_GOOD)]


def test_merge_without_shards_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="shard='i/n'"):
        merge_images(None, tmp_path)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"index_type": "annoy"}, "annoy.*auto"),
        ({"shard": "3/2"}, "0 <= i < n"),
        ({"shard": "half"}, "i/n"),
        ({"batch_size": 0}, "batch_size"),
        ({"source": ""}, "source is missing"),
    ],
)
def test_bad_image_config_is_config_error(kw, match, tmp_path):
    kw = {"source": tmp_path, **kw}
    with pytest.raises(ConfigError, match=match):
        image_cfg(store_root=tmp_path, **kw)


def test_missing_image_catalogue_is_data_error(tiny_encoder, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        reindex_images(image_cfg(tmp_path / "nope.jsonl", tmp_path / "ix"), tiny_encoder, False)


# ---- templates ------------------------------------------------------------------------------

N_TPL = 30
BAD_LINES = [  # appended after the 30 good lines, i.e. catalogue lines 31-33
    '{"id": "broken", ',  # 31: not JSON
    json.dumps({"id": "untitled"}),  # 32: title missing
    json.dumps({"id": "t00003", "title": "again"}),  # 33: duplicate id
]


@pytest.fixture(scope="module")
def tpl_catalog():
    return make_templates(N_TPL, seed=5)


@pytest.fixture()
def tpl_source(tmp_path, tpl_catalog) -> Path:
    path = tmp_path / "templates.jsonl"
    good = [r.model_dump_json() for r in tpl_catalog.records]
    path.write_text("\n".join(good + BAD_LINES) + "\n")
    return path


def check_template_report(rep: dict, backend: str) -> None:
    assert json.loads(json.dumps(rep)) == rep
    assert rep["backend"] == backend and rep["job"] == "reindex_templates"
    assert (rep["records"], rep["doc_count"], rep["rejected"]) == (N_TPL, N_TPL, 3)
    rows = [json.loads(x) for x in Path(rep["rejects_file"]).read_text().splitlines()]
    assert [r["line"] for r in rows] == [31, 32, 33]


def test_templates_tantivy_end_to_end(tpl_source, tpl_catalog, tmp_path):
    root = tmp_path / "tpl"
    cfg = TemplateReindexConfig(source=tpl_source, root=root)
    first = reindex_templates(cfg, progress=False)
    check_template_report(first, "tantivy")
    assert first["rejects_file"] == str(root / "rejects.jsonl")  # the default place
    assert (first["previous_version"], first["failed"], first["ok"]) == (None, 0, True)
    assert first["version"] == IndexStore(root).open_current().name

    second = reindex_templates(cfg, progress=False)
    assert second["previous_version"] == first["version"] != second["version"]
    assert second["checksum"] == first["checksum"]  # same records, same content
    word, want = next(iter(tpl_catalog.distinctive.items()))
    with open_template_index("tantivy", root=root) as ix:
        assert ix.version == second["version"] and ix.count() == N_TPL
        assert ix.search(word, k=3)[0].id == want


class TinyTextEncoder:
    """Bag of letters: a deterministic stand-in for a text model (dim 8)."""

    name, dim = "letters-8", 8

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.ones((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                out[i, ord(ch) % self.dim] += 1.0
        return out


def test_templates_elasticsearch_swap_failures_and_hybrid(tpl_source, tmp_path):
    with EsDouble() as es:
        cfg = TemplateReindexConfig(
            source=tpl_source, backend="elasticsearch", es_url=es.url, alias="tpl",
            rejects_path=tmp_path / "rejects" / "tpl.jsonl",
        )
        first = reindex_templates(cfg, progress=False)
        check_template_report(first, "elasticsearch")
        assert first["previous_version"] is None and es.aliases["tpl"] == {first["version"]}

        es.fail_docs["t00007"] = (400, "document_parsing_exception")  # 1 of 30: under 5%
        second = reindex_templates(cfg, encoder=TinyTextEncoder(), progress=False)
        assert second["previous_version"] == first["version"]
        assert es.aliases["tpl"] == {second["version"]}  # swapped; old index kept (keep_old)
        assert first["version"] in es.indices
        assert (second["failed"], second["ok"], second["doc_count"]) == (1, False, N_TPL - 1)
        (failure,) = second["failures"]
        assert failure["id"] == "t00007" and failure["status"] == 400
        assert "document_parsing_exception" in failure["reason"]
        doc = es.indices[second["version"]].docs["t00001"]
        assert len(doc["embedding"]) == TinyTextEncoder.dim  # hybrid: vectors were loaded


def test_all_rejected_catalogue_publishes_nothing(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(BAD_LINES[:2]) + "\n")
    root = tmp_path / "tpl"
    with pytest.raises(DataError, match="no valid template.*2 rejected.*unchanged"):
        reindex_templates(TemplateReindexConfig(source=src, root=root), progress=False)
    assert IndexStore(root).current() is None
    assert len((root / "rejects.jsonl").read_text().splitlines()) == 2  # the report still exists


def test_missing_template_catalogue_is_data_error(tmp_path):
    cfg = TemplateReindexConfig(source=tmp_path / "none.csv", root=tmp_path / "tpl")
    with pytest.raises(DataError, match="does not exist"):
        reindex_templates(cfg, progress=False)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"backend": "solr", "root": "x"}, "'solr'; allowed: tantivy, elasticsearch"),
        ({"backend": "tantivy"}, "needs the option root"),
        ({"backend": "elasticsearch"}, "needs the option es_url"),
        ({"root": "x", "keep_versions": 0}, "keep_versions=0"),
    ],
)
def test_bad_template_config_is_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        TemplateReindexConfig(source="t.jsonl", **kw)


def test_tantivy_with_encoder_and_log_publishes_a_dense_channel(tpl_source, tmp_path):
    # "zebrafish" is in no template; the log says users searching it clicked t00004
    log_path = tmp_path / "queries.tsv"
    log_path.write_text("zebrafish\tt00004\n"  # 1
                        "Zebrafish \tt00004\n"  # 2 same query, second click
                        "modern\n"  # 3 no click
                        "lost\tt99999\n"  # 4 an id the catalogue lacks: counted, ignored
                        "a\tb\tc\n")  # 5 rejected: 3 fields
    enc = WordEncoder(dim=256, name="words-fake")
    seen = []

    def fit(records, qlog):
        seen.append((len(records), qlog.summary()))
        return {"raw": 0.25, "dense": 1.0, "k": 10}

    cfg = TemplateReindexConfig(source=tpl_source, root=tmp_path / "tpl", log_path=log_path)
    rep = reindex_templates(cfg, encoder=enc, progress=False, fit=fit)
    assert json.loads(json.dumps(rep)) == rep
    assert rep["dense"] is True and rep["fusion"] == {"raw": 0.25, "dense": 1.0, "k": 10}
    assert seen == [(N_TPL, {"queries": 3, "searches": 4, "clicks": 3, "clicked_items": 2})]
    assert rep["log"]["rejected_lines"] == 1 and rep["log"]["clicks_on_unknown_ids"] == 1
    rejects = [json.loads(x) for x in Path(rep["log"]["rejects_file"]).read_text().splitlines()]
    assert [r["line"] for r in rejects] == [5]
    with open_template_index("tantivy", root=tmp_path / "tpl", encoder=enc) as ix:
        assert ix.version == rep["version"] and ix.has_dense
        assert ix.meta["dense"]["encoder"] == "words-fake"
        # only queries that clicked a catalogue item expand it ("modern", "lost" did not)
        assert ix.fusion_params == rep["fusion"] and ix.logged_queries() == {"zebrafish"}
        assert [h.id for h in ix.search_dense_batch(["zebrafish"], 1)[0]] == ["t00004"]
        assert [h.id for h in ix.search("zebrafish")] == ["t00004"]  # the BM25 expansion too


def test_bad_log_path_publishes_nothing(tpl_source, tmp_path):
    cfg = TemplateReindexConfig(source=tpl_source, root=tmp_path / "tpl",
                                log_path=tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="missing.tsv does not exist"):
        reindex_templates(cfg, progress=False)
    assert IndexStore(tmp_path / "tpl").current() is None
    with pytest.raises(ConfigError, match="log_max_per_item=0"):
        TemplateReindexConfig(source="t.jsonl", root="x", log_max_per_item=0)
