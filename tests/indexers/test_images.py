"""ImageIndex against brute force, filters, persistence; the encoder; the catalogue readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexers.catalog_images import RejectLog, load_catalog, open_image, read_manifest, scan_folder
from indexers.encoders import TINY_CLIP_CONFIG, ClipEncoder
from indexers.errors import ConfigError, DataError, EncoderMismatchError, IndexStoreError
from indexers.images import Hit, ImageIndex, ImageIndexConfig, matches_filters

from .conftest import MANIFEST_BAD, N_GOOD

N, D, NQ = 1037, 48, 101  # awkward sizes on purpose


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synth():
    """Seeded unit vectors with metadata: license cycles over 3 values, tags over 7."""
    rng = np.random.default_rng(7)
    x = unit(rng.standard_normal((N, D)))
    q = unit(rng.standard_normal((NQ, D)))
    ids = [f"v{i}" for i in range(N)]
    meta = [
        {"license": ("cc0", "cc-by", "rf")[i % 3], "tags": [f"t{i % 7}", "all"]} for i in range(N)
    ]
    return x, q, ids, meta


def brute(x, q, k, mask=None):
    """Exact top-k rows per query by numpy, optionally restricted to ``mask``."""
    s = q @ x.T  # (Q, N)
    if mask is not None:
        s = np.where(mask[None, :], s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return [[int(r) for r in row if np.isfinite(s[i, r])] for i, row in enumerate(order)]


def rows(hits: list[Hit]) -> list[int]:
    return [int(h.id[1:]) for h in hits]


@pytest.fixture(scope="module")
def indexes(synth):
    x, _, ids, meta = synth
    return {
        t: ImageIndex.build(x, ids, meta, "synthetic/enc", ImageIndexConfig(index_type=t))
        for t in ("flat", "hnsw", "ivf")
    }


def test_flat_equals_brute_force(synth, indexes):
    x, q, _, _ = synth
    res = indexes["flat"].search(q, k=10)
    assert [rows(r) for r in res] == brute(x, q, 10)
    want = np.sort(q @ x.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose([[h.score for h in r] for r in res], want, atol=1e-5)


# measured on this data: hnsw (M=32, efSearch=128) 1.00, ivf (nlist=26, nprobe=16) 0.91
@pytest.mark.parametrize("kind,bar", [("hnsw", 0.97), ("ivf", 0.85)])
def test_approximate_recall_at_10(synth, indexes, kind, bar):
    x, q, _, _ = synth
    truth = brute(x, q, 10)
    res = indexes[kind].search(q, k=10)
    recall = np.mean([len(set(rows(r)) & set(t)) / 10 for r, t in zip(res, truth)])
    assert recall >= bar


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize(
    "filters", [{"license": "cc-by"}, {"tags": "t3"}, {"tags": ["t3", "all"], "license": "rf"}]
)
def test_filters_are_exact(synth, indexes, kind, filters):
    x, q, _, meta = synth
    mask = np.array([matches_filters(m, filters) for m in meta])
    res = indexes[kind].search(q, k=10, filters=filters)
    for hits in res:
        assert len(hits) == 10 and all(matches_filters(h.metadata, filters) for h in hits)
    if kind == "flat":  # over-fetch + widen must give exactly the filtered brute force
        assert [rows(r) for r in res] == brute(x, q, 10, mask)


def test_selective_filter_widens_to_all_matches(synth, indexes):
    # tags t3 and license rf: i % 7 == 3 and i % 3 == 2 -> i % 21 == 17 -> 49 of 1037 rows
    _x, q, _, meta = synth
    f = {"tags": "t3", "license": "rf"}
    mask = np.array([matches_filters(m, f) for m in meta])
    assert mask.sum() == 49
    for kind in ("flat", "hnsw", "ivf"):
        res = indexes[kind].search(q[:5], k=100, filters=f)
        assert [sorted(rows(r)) for r in res] == [sorted(np.flatnonzero(mask).tolist())] * 5


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_batch_and_single_agree(synth, indexes, kind):
    _, q, _, _ = synth
    ix = indexes[kind]
    for f in (None, {"license": "cc0"}):
        batch = ix.search(q[:17], k=7, filters=f)
        single = [ix.search_one(v, k=7, filters=f) for v in q[:17]]
        assert [[h.id for h in r] for r in batch] == [[h.id for h in r] for r in single]
        np.testing.assert_allclose(
            [[h.score for h in r] for r in batch], [[h.score for h in r] for r in single], atol=1e-5
        )


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_k_larger_than_index_returns_all(synth, indexes, kind):
    _, q, _, _ = synth
    res = indexes[kind].search(q[:3], k=N + 50)
    assert [sorted(rows(r)) for r in res] == [list(range(N))] * 3
    assert all(r[0].score >= r[-1].score for r in res)


def test_edge_cases(synth, indexes):
    x, q, _, meta = synth
    flat = indexes["flat"]
    assert flat.search(q, k=5, filters={"license": "nope"}) == [[] for _ in range(NQ)]  # no match
    assert flat.search(q, k=5, filters={"no_such_field": 1}) == [[] for _ in range(NQ)]
    assert flat.search(np.zeros((0, D), np.float32), k=3) == []  # no queries
    empty = ImageIndex.build(
        np.zeros((0, D)), [], [], "synthetic/enc", ImageIndexConfig(index_type="flat")
    )
    assert empty.search(q[:2], k=3) == [[], []]
    with pytest.raises(ConfigError, match="k 0"):
        flat.search(q, k=0)
    with pytest.raises(ConfigError, match="does not match index dim 48"):
        flat.search(q[:, :10], k=3)
    with pytest.raises(ConfigError, match="duplicate id 'v0'"):
        ImageIndex.build(x[:2], ["v0", "v0"], meta[:2], "e", ImageIndexConfig(index_type="flat"))
    with pytest.raises(ConfigError, match="'annoy' is unknown"):
        ImageIndexConfig(index_type="annoy")
    with pytest.raises(ConfigError, match="'i/n'"):
        ImageIndexConfig(shard="2")


def test_auto_picks_flat_below_threshold(synth):
    x, _, ids, meta = synth
    assert (
        ImageIndex.build(x, ids, meta, "e", ImageIndexConfig(index_type="auto")).index_type
        == "flat"
    )


def test_matches_filters_by_hand():
    m = {"license": "cc0", "tags": ["cat", "red"], "meta": {"source": "s1"}}
    assert matches_filters(m, None) and matches_filters(m, {})
    assert matches_filters(m, {"license": "cc0", "tags": "cat"})
    assert matches_filters(m, {"tags": ["cat", "red"], "meta.source": "s1"})
    assert not matches_filters(m, {"tags": ["cat", "dog"]})
    assert not matches_filters(m, {"license": "CC0"})
    assert not matches_filters(m, {"meta.missing": "x"})


def test_save_open_roundtrip_and_errors(synth, indexes, tmp_path):
    x, q, _, _ = synth
    ix = indexes["hnsw"]
    ix.save(tmp_path)
    back = ImageIndex.open(tmp_path, "synthetic/enc", D, verify=True)
    assert (
        back.index_type == "hnsw"
        and len(back) == N
        and back.meta["checksum"] == ix.meta["checksum"]
    )
    assert [h.id for h in back.search_one(q[0], 5)] == [h.id for h in ix.search_one(q[0], 5)]
    meta = json.loads((tmp_path / "index_meta.json").read_text())
    assert {
        "encoder",
        "dim",
        "index_type",
        "count",
        "checksum",
        "built_at",
        "config",
    } <= meta.keys()
    assert ImageIndexConfig(**meta["config"]) == ImageIndexConfig(index_type="hnsw")

    with pytest.raises(EncoderMismatchError, match=r"'synthetic/enc'.*'other/enc'"):
        ImageIndex.open(tmp_path, "other/enc")
    with pytest.raises(EncoderMismatchError, match=r"dim 48.*dim 512"):
        ImageIndex.open(tmp_path, dim=512)
    np.save(tmp_path / "vectors.npy", x[::-1])  # tampered vectors
    with pytest.raises(IndexStoreError, match="checksum mismatch"):
        ImageIndex.open(tmp_path, verify=True)
    (tmp_path / "index.faiss").write_bytes((tmp_path / "index.faiss").read_bytes()[:1000])
    with pytest.raises(IndexStoreError, match="cannot read FAISS index"):
        ImageIndex.open(tmp_path)
    (tmp_path / "index_meta.json").unlink()
    with pytest.raises(IndexStoreError, match="missing or corrupt"):
        ImageIndex.open(tmp_path)


# ---- encoder --------------------------------------------------------------------------------


def test_tiny_encoder_shapes_and_names(tiny_encoder, image_catalog):
    assert (
        tiny_encoder.name == "udrl-tiny-clip/random"
        and tiny_encoder.dim == TINY_CLIP_CONFIG["embed_dim"]
    )
    imgs = [open_image(p) for p in sorted((image_catalog / "imgs").rglob("img0*"))[:3]]
    v = tiny_encoder.encode_images(imgs)
    assert v.shape == (3, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    t = tiny_encoder.encode_texts(["a red square", ""])
    assert t.shape == (2, 32) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.encode_images([]).shape == (0, 32)


def test_random_init_is_reproducible(tiny_encoder, image_catalog):
    other = ClipEncoder("udrl-tiny-clip", pretrained=None)
    img = [open_image(next((image_catalog / "imgs").rglob("img01.*")))]
    np.testing.assert_array_equal(other.encode_images(img), tiny_encoder.encode_images(img))


def test_long_text_is_truncated_not_an_error(tiny_encoder):
    words = " ".join(f"word{i} blue" for i in range(400))  # ~2,000 tokens, context is 77
    full = tiny_encoder.tokenizer([words])  # open_clip's own truncation on the whole text
    assert tiny_encoder._clip_text(words) != words
    assert (tiny_encoder.tokenizer([tiny_encoder._clip_text(words)]) == full).all()
    huge = "x" * 200_000  # one giant word: BPE on it would take minutes
    assert tiny_encoder.encode_texts([huge, words]).shape == (2, 32)


def test_missing_checkpoint_is_a_model_error(tmp_path):
    from indexers.errors import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        ClipEncoder("udrl-tiny-clip", pretrained=str(tmp_path / "nope.safetensors"))


# ---- catalogue ------------------------------------------------------------------------------


def test_folder_catalogue(image_catalog, tmp_path):
    rejects = RejectLog(tmp_path / "rejects.jsonl")
    recs = scan_folder(image_catalog / "imgs", rejects)
    ids = [r.id for r in recs]
    assert (
        len(recs) == N_GOOD + 1 and "set1/img01" in ids and "zz_corrupt" in ids
    )  # decode comes later
    assert rejects.count == 0
    with pytest.raises(DataError, match="does not exist"):
        load_catalog(tmp_path / "nowhere", rejects)


def test_manifest_rejects_each_bad_line(image_manifest, tmp_path):
    rejects = RejectLog(tmp_path / "rejects.jsonl")
    recs = read_manifest(image_manifest, rejects)
    # 40 good + the corrupt image (only decoding finds it); lines 41-45 rejected now
    assert len(recs) == N_GOOD + 1
    rows = {r["line"]: r for r in rejects.rows()}
    assert sorted(rows) == [41, 42, 43, 44, 45]
    assert all(r["file"] == str(image_manifest) for r in rows.values())
    assert rows[41]["reason"].startswith("bad JSON") and rows[41]["id"] is None
    assert "not found" in rows[42]["reason"] and rows[42]["id"] == "ghost"
    assert "duplicate id 'img00' (first on line 1)" in rows[43]["reason"]
    assert "id" in rows[44]["reason"] and rows[44]["id"] is None
    assert "'https' is not supported" in rows[45]["reason"]
    assert MANIFEST_BAD[46] == "corrupt image"
    r0 = recs[0]
    assert r0.metadata() == {
        "path": str(image_manifest.parent / "imgs/set0/img00.png"),
        "title": "pattern 0",
        "tags": ["red", "featured"],
        "license": "cc0",
        "meta": {"photographer": "p0"},
    }
    assert recs[39].id == "img39" and recs[39].path.is_file()  # given as a file:// URL
    with pytest.raises(DataError, match="cannot decode"):
        open_image(image_manifest.parent / "imgs/zz_corrupt.png")
