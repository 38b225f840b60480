"""Image build resume keyed on the catalogue checksum and per-file fingerprints, the clean-up of
unfinished builds, and the publish checks of image builds and merges (tiny CLIP, 40 images)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from indexers.errors import PublishRefusedError
from indexers.image_build import build_image_index, merge_image_shards
from indexers.image_resume import committed
from indexers.images import ImageIndexConfig, load_image_index
from indexers.publish import PublishPolicy
from indexers.store import IndexStore

from .build_fakes import Killed, Wrapped
from .conftest import N_GOOD, image_rel, make_image

CFG = ImageIndexConfig(model_name="udrl-tiny-clip", pretrained=None, index_type="flat",
                       batch_size=8)
CHANGED = range(10)  # img00..img09: all in the first three batches of 8


@pytest.fixture()
def catalog(image_catalog, tmp_path):
    """A private copy of the generated catalogue (tests change its files)."""
    return shutil.copytree(image_catalog, tmp_path / "cat")


def change_images(root, which) -> None:
    for i in which:  # other pixels and another size: a new file where the old one was
        make_image(200 + i).resize((41 + 3 * i, 29 + 5 * i)).save(root / image_rel(i))


def by_id(ix) -> dict[str, np.ndarray]:
    return dict(zip(ix.ids, ix.vectors(), strict=True))


def test_committed_reuses_only_unchanged_files():
    entries = [
        {"chunk": "c0", "ids": ["a", "b"], "fps": ["fa", "fb"], "rejects": [], "reject_fps": []},
        {"chunk": "c1", "ids": ["c"], "fps": ["fc"],  # d did not decode
         "rejects": [{"id": "d", "reason": "corrupt"}], "reject_fps": ["fd"]},
        {"chunk": "c2", "ids": ["e"], "rejects": []},  # a log written before fingerprints
        {"chunk": "c3", "ids": ["b"], "fps": ["fb2"], "rejects": [], "reject_fps": []},
    ]
    now = {"a": "fa", "b": "fb2", "c": "fc-new", "d": "fd", "e": "fe"}  # c changed
    at, rejects, stale = committed(entries, now)
    assert at == {"a": ("c0", 0), "b": ("c3", 0)}  # b's newer commit matches its file
    assert rejects == [{"id": "d", "reason": "corrupt"}]
    assert stale == 2  # c changed; e has no fingerprint to trust


def test_changed_files_are_encoded_again_on_resume(catalog, tiny_encoder, tmp_path):
    store_root, manifest = tmp_path / "store", catalog / "manifest.jsonl"
    with pytest.raises(Killed):  # 24 images committed in 3 batches, then the run dies
        build_image_index(manifest, store_root, Wrapped(tiny_encoder, die_at=3), CFG,
                          progress=False)
    (partial,) = IndexStore(store_root).incomplete_versions()
    old = {}  # the vectors the killed run committed
    for line in (partial / "chunks.jsonl").read_text().splitlines():
        e = json.loads(line)
        old.update(zip(e["ids"], np.load(partial / e["chunk"]), strict=True))
    assert len(old) == 24 and {f"img{i:02d}" for i in CHANGED} <= set(old)

    change_images(catalog, CHANGED)
    counting = Wrapped(tiny_encoder)
    rep = build_image_index(manifest, store_root, counting, CFG, progress=False)
    assert rep.version == partial  # same manifest: the build was resumed
    assert (rep.resumed, rep.changed, rep.encoded) == (24 - 10, 10, N_GOOD - 14)
    assert counting.images == N_GOOD - 14

    build_image_index(manifest, tmp_path / "clean", tiny_encoder, CFG, progress=False)
    got, want = load_image_index(store_root), load_image_index(tmp_path / "clean")
    assert got.ids == want.ids  # catalogue order, as the clean build
    np.testing.assert_allclose(got.vectors(), want.vectors(), atol=1e-6)
    vec = by_id(got)
    for i in (f"img{i:02d}" for i in CHANGED):  # the changed images really moved ...
        assert not np.allclose(vec[i], old[i], atol=1e-3), i
    for i in set(old) - {f"img{i:02d}" for i in CHANGED}:  # ... and the others were reused
        np.testing.assert_allclose(vec[i], old[i], atol=1e-6)


def test_a_changed_manifest_starts_a_new_build_and_the_old_one_is_cleaned(
        catalog, tiny_encoder, tmp_path):
    store_root, manifest = tmp_path / "store", catalog / "manifest.jsonl"
    with pytest.raises(Killed):
        build_image_index(manifest, store_root, Wrapped(tiny_encoder, die_at=2), CFG,
                          progress=False)
    (partial,) = IndexStore(store_root).incomplete_versions()
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:20]) + "\n")  # 20 good lines left
    rep = build_image_index(manifest, store_root, tiny_encoder, CFG, progress=False)
    assert rep.version != partial and rep.resumed == 0 and rep.count == 20
    # the unfinished build is older than the new complete one: removed, not warned about
    assert not partial.exists() and IndexStore(store_root).incomplete_versions() == []


def test_a_running_build_is_not_cleaned_up(catalog, tiny_encoder, tmp_path):
    store_root, manifest = tmp_path / "store", catalog / "manifest.jsonl"
    with pytest.raises(Killed):
        build_image_index(manifest, store_root, Wrapped(tiny_encoder, die_at=1), CFG,
                          progress=False)
    store = IndexStore(store_root)
    (partial,) = store.incomplete_versions()
    held = store.lock(partial)  # as if its build were still running
    try:
        folder = build_image_index(catalog / "imgs", store_root, tiny_encoder, CFG,
                                   progress=False)
        assert partial.exists() and folder.version != partial
    finally:
        held.close()
    store.clean_unfinished()
    assert not partial.exists()


def test_refused_image_build_keeps_its_vectors_for_force(catalog, tiny_encoder, tmp_path):
    store_root, manifest = tmp_path / "store", catalog / "manifest.jsonl"
    live = build_image_index(manifest, store_root, tiny_encoder, CFG, progress=False)
    assert live.publish_check["passed"] and live.count == N_GOOD
    lines = manifest.read_text().splitlines()
    small = catalog / "small.jsonl"
    small.write_text("\n".join(lines[:10]) + "\n")  # 10 images against 40 live: 25%
    with pytest.raises(PublishRefusedError, match="10 documents is 25.0% of the 40") as err:
        build_image_index(small, store_root, tiny_encoder, CFG, progress=False)
    assert "publishes them without encoding again" in str(err.value)
    store = IndexStore(store_root)
    assert store.current() == live.version
    (kept,) = store.incomplete_versions()

    counting = Wrapped(tiny_encoder)
    forced = build_image_index(small, store_root, counting, CFG, progress=False,
                               policy=PublishPolicy(force=True))
    assert (forced.version, forced.count, forced.resumed, counting.images) == (kept, 10, 10, 0)
    assert forced.publish_check["forced"] and store.previous() == live.version


def test_merge_is_checked_against_the_live_store(catalog, tiny_encoder, tmp_path):
    root, manifest = tmp_path / "images", catalog / "manifest.jsonl"
    build_image_index(manifest, root, tiny_encoder, CFG, progress=False)
    small = catalog / "small.jsonl"
    small.write_text("\n".join(manifest.read_text().splitlines()[:12]) + "\n")
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):  # shard stores serve nothing: they are not checked
        rep = build_image_index(small, d, tiny_encoder, replace(CFG, shard=f"{i}/2"),
                                progress=False)
        assert rep.publish_check is None
    live = IndexStore(root).current()
    with pytest.raises(PublishRefusedError, match="12 documents is 30.0% of the 40"):
        merge_image_shards(shards, root)
    assert IndexStore(root).current() == live and IndexStore(root).incomplete_versions() == []
    merged = merge_image_shards(shards, root, policy=PublishPolicy(min_count_ratio=0.25))
    assert merged.count == 12 and merged.publish_check["passed"]
