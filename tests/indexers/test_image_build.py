"""build_image_index end to end on the tiny CLIP: self-retrieval, rejects, resume, kills, shards."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from indexers.catalog_images import RejectLog, open_image, read_manifest
from indexers.errors import ConfigError, DataError, EncoderMismatchError, IndexStoreError
from indexers.image_build import build_image_index, merge_image_shards, shard_of
from indexers.images import ImageIndexConfig, load_image_index
from indexers.store import IndexStore

from .build_fakes import Killed, Wrapped
from .conftest import N_GOOD

CFG = ImageIndexConfig(
    model_name="udrl-tiny-clip", pretrained=None, index_type="flat", batch_size=8
)


def good_paths(manifest, scratch):
    """id -> image path of the 40 decodable manifest records."""
    recs = read_manifest(manifest, RejectLog(scratch / "manifest_rejects.jsonl"))
    return {r.id: r.path for r in recs if r.id != "corrupt"}


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory, image_manifest, tiny_encoder):
    root = tmp_path_factory.mktemp("flat_store")
    report = build_image_index(image_manifest, root, tiny_encoder, CFG, progress=False)
    return root, report


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_indexed_image_is_its_own_top1(kind, image_manifest, tiny_encoder, tmp_path):
    report = build_image_index(
        image_manifest, tmp_path, tiny_encoder, replace(CFG, index_type=kind), progress=False
    )
    assert (report.count, report.encoded, report.index_type) == (N_GOOD, N_GOOD, kind)
    ix = load_image_index(tmp_path, tiny_encoder.name, tiny_encoder.dim)
    paths = good_paths(image_manifest, tmp_path)
    ids = sorted(paths)
    queries = tiny_encoder.encode_images([open_image(paths[i]) for i in ids])  # (40, 32)
    top1 = [hits[0] for hits in ix.search(queries, k=3)]
    assert [h.id for h in top1] == ids
    assert all(h.score == pytest.approx(1.0, abs=1e-5) for h in top1)
    assert ix.search_one(queries[5], k=1)[0].id == ids[5]


def test_rejects_have_file_line_and_reason(flat_store, image_manifest):
    _, report = flat_store
    rows = [json.loads(x) for x in report.rejects_path.read_text().splitlines()]
    assert report.rejected == len(rows) == 6  # 5 bad manifest lines + 1 corrupt image
    by_line = {r["line"]: r for r in rows}
    assert sorted(by_line) == [41, 42, 43, 44, 45, 46]
    assert {r["file"] for r in rows} == {str(image_manifest)}
    assert by_line[46]["id"] == "corrupt" and "cannot decode image" in by_line[46]["reason"]
    assert "zz_corrupt.png" in by_line[46]["reason"]
    assert by_line[41]["reason"].startswith("bad JSON")
    assert "not found" in by_line[42]["reason"] and "duplicate id" in by_line[43]["reason"]


def test_folder_build_rejects_corrupt_file(image_catalog, tiny_encoder, tmp_path):
    report = build_image_index(image_catalog / "imgs", tmp_path, tiny_encoder, CFG, progress=False)
    assert report.count == N_GOOD and report.rejected == 1
    (row,) = [json.loads(x) for x in report.rejects_path.read_text().splitlines()]
    assert row["file"].endswith("zz_corrupt.png") and row["line"] is None
    assert row["id"] == "zz_corrupt"
    assert "set2/img02" in load_image_index(tmp_path).ids


def test_filters_and_text_search_on_built_index(flat_store, tiny_encoder):
    root, _ = flat_store
    ix = load_image_index(root, tiny_encoder.name, tiny_encoder.dim)
    hits = ix.search_text(["a red pattern"], tiny_encoder, k=50, filters={"tags": "featured"})[0]
    assert sorted(h.id for h in hits) == [f"img{i:02d}" for i in range(0, N_GOOD, 5)]  # 8 featured
    cc0 = ix.search_text(
        ["x"], tiny_encoder, k=5, filters={"license": "cc0", "meta.photographer": "p2"}
    )[0]
    assert len(cc0) == 5 and all(int(h.id[3:]) % 4 == 2 for h in cc0)  # i % 4 == 2 is even: cc0


def test_encoder_mismatch_on_open(flat_store, tiny_encoder):
    root, _ = flat_store
    with pytest.raises(
        EncoderMismatchError, match=r"'udrl-tiny-clip/random'.*'ViT-B-32/laion2b_s34b_b79k'"
    ):
        load_image_index(root, "ViT-B-32/laion2b_s34b_b79k", 512)
    with pytest.raises(EncoderMismatchError, match=r"dim 32.*dim 64"):
        load_image_index(root, tiny_encoder.name, 64)
    ix = load_image_index(root)
    with pytest.raises(EncoderMismatchError, match="other/enc"):
        ix.search_text(["q"], Wrapped(tiny_encoder, name="other/enc"), k=1)


def test_nothing_published_or_missing_source(tmp_path, tiny_encoder):
    with pytest.raises(IndexStoreError, match="no index has been published"):
        load_image_index(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        build_image_index(
            tmp_path / "nowhere.jsonl", tmp_path / "s", tiny_encoder, CFG, progress=False
        )


def test_resume_encodes_only_the_remainder(image_manifest, tiny_encoder, flat_store, tmp_path):
    # 41 decodable-looking records in batches of 8 -> 6 batches; die before the 3rd one
    dying = Wrapped(tiny_encoder, die_at=2)
    with pytest.raises(Killed):
        build_image_index(image_manifest, tmp_path, dying, CFG, progress=False)
    (partial,) = IndexStore(tmp_path).incomplete_versions()
    with (partial / "chunks.jsonl").open("a") as fh:
        fh.write('{"chunk": "chunk-0000')  # torn write of a third commit line
    assert IndexStore(tmp_path).current() is None

    counting = Wrapped(tiny_encoder)
    report = build_image_index(image_manifest, tmp_path, counting, CFG, progress=False)
    assert report.version == partial and (report.resumed, report.encoded) == (16, N_GOOD - 16)
    assert counting.images == N_GOOD - 16  # (the corrupt image never reaches the encoder)
    ix = load_image_index(tmp_path)
    assert len(ix) == N_GOOD and len(set(ix.ids)) == N_GOOD and report.rejected == 6
    ref = load_image_index(flat_store[0])  # same vectors as an uninterrupted build
    ref_vec = dict(zip(ref.ids, ref.vectors()))
    np.testing.assert_allclose(ix.vectors(), [ref_vec[i] for i in ix.ids], atol=1e-6)
    assert not list(partial.glob("chunk-*.npy"))  # chunks cleaned up after publishing


def test_killed_reindex_leaves_old_version_answering(image_manifest, tiny_encoder, tmp_path):
    v1 = build_image_index(image_manifest, tmp_path, tiny_encoder, CFG, progress=False).version
    q = load_image_index(tmp_path).vectors()[:6]
    before = [[(h.id, h.score) for h in r] for r in load_image_index(tmp_path).search(q, k=4)]
    for die_at in (0, 3):  # before any batch, and mid-way
        with pytest.raises(Killed):
            build_image_index(
                image_manifest, tmp_path, Wrapped(tiny_encoder, die_at=die_at), CFG, progress=False
            )
        assert IndexStore(tmp_path).open_current() == v1
        after = [[(h.id, h.score) for h in r] for r in load_image_index(tmp_path).search(q, k=4)]
        assert after == before
    assert len(IndexStore(tmp_path).incomplete_versions()) == 1  # the second kill resumed the first


def test_shards_merge_to_the_unsharded_index(image_manifest, tiny_encoder, flat_store, tmp_path):
    reports = [
        build_image_index(image_manifest, tmp_path / f"s{i}", tiny_encoder,
                          replace(CFG, shard=f"{i}/2"), progress=False)
        for i in range(2)
    ]
    want0 = sum(shard_of(f"img{i:02d}", 2) == 0 for i in range(N_GOOD))
    assert reports[0].count == want0 and reports[1].count == N_GOOD - want0
    merged = merge_image_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged.rejected == 6  # catalogue rejects reported by both shards, kept once
    full, m = load_image_index(flat_store[0]), load_image_index(tmp_path / "merged")
    assert sorted(m.ids) == sorted(full.ids)
    q = full.vectors()
    assert [r[0].id for r in m.search(q, k=1)] == [r[0].id for r in full.search(q, k=1)] == full.ids

    with pytest.raises(ConfigError, match="complete set"):
        merge_image_shards([tmp_path / "s0", tmp_path / "s0"], tmp_path / "bad")
    other_encoder = Wrapped(tiny_encoder, name="other/enc")
    build_image_index(image_manifest, tmp_path / "s1x", other_encoder, replace(CFG, shard="1/2"),
                      progress=False)
    with pytest.raises(EncoderMismatchError, match="'other/enc'.*'udrl-tiny-clip/random'"):
        merge_image_shards([tmp_path / "s0", tmp_path / "s1x"], tmp_path / "bad")
