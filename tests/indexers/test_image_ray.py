"""Encoding on Ray: the per-batch functions both runners call (fast, no Ray), and the Ray build
against the local one on the tiny CLIP (40 good images, 6 bad manifest lines, batches of 8):
same ids, vectors and rejects; a stopped Ray build resumes; the CLI's --ray."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from indexers import image_build
from indexers.catalog_images import RejectLog, load_catalog
from indexers.encoders import TINY_CLIP_NAME, ClipEncoder
from indexers.errors import ConfigError, EncoderMismatchError
from indexers.image_build import build_image_index
from indexers.image_encode import encode_batch
from indexers.image_runners import make_runner
from indexers.image_ray import RayEncodeConfig, RayRunner, _EncodeActor, ray_available
from indexers.images import ImageIndexConfig, load_image_index
from indexers.store import IndexStore

from .build_fakes import Killed
from .conftest import N_GOOD

CFG = ImageIndexConfig(model_name=TINY_CLIP_NAME, pretrained=None, index_type="flat",
                       batch_size=8)
TINY = partial(ClipEncoder, TINY_CLIP_NAME, None)  # device -> the tiny CLIP (seeded weights)

needs_ray = pytest.mark.skipif(not ray_available(),
                               reason="Ray Data is not installed (pip install 'ray[data]')")


@pytest.fixture(scope="module")
def records(image_manifest, tmp_path_factory):
    """The manifest's 41 usable records (40 images + the corrupt one), catalogue order."""
    rejects = RejectLog(tmp_path_factory.mktemp("rej") / "r.jsonl")
    return load_catalog(image_manifest, rejects)


def test_encode_batch_matches_the_encoder_and_reports_the_corrupt_file(records, tiny_encoder):
    batch = [r for r in records if r.id in ("img00", "img01", "corrupt", "img02")]
    ids, vecs, bad = encode_batch(batch, tiny_encoder)
    assert ids == ["img00", "img01", "img02"] and vecs.shape == (3, tiny_encoder.dim)
    from indexers.catalog_images import open_image

    want = tiny_encoder.encode_images([open_image(r.path) for r in batch if r.id != "corrupt"])
    np.testing.assert_allclose(vecs, want, atol=1e-6)
    (row,) = bad
    assert row["id"] == "corrupt" and row["line"] == 46 and row["file"].endswith("manifest.jsonl")


def test_ray_actor_batch_keeps_one_row_per_record(records, tiny_encoder):
    """What each Ray actor returns: rows in input order, a reject as JSON with zeros beside it."""
    by_id = {r.id: r for r in records}
    batch = [by_id["img03"], by_id["corrupt"], by_id["img04"]]
    out = _EncodeActor(TINY, "cpu", None)({"record": np.array(
        [r.model_dump_json() for r in batch], dtype=object)})
    assert list(out["id"]) == ["img03", "corrupt", "img04"]
    assert out["reject"][0] == out["reject"][2] == ""
    assert json.loads(out["reject"][1])["id"] == "corrupt" and not out["vector"][1].any()
    want = encode_batch([batch[0], batch[2]], tiny_encoder).vectors
    np.testing.assert_allclose(out["vector"][[0, 2]], want, atol=1e-6)
    assert set(out["encoder"]) == {f"{tiny_encoder.name}\0{tiny_encoder.dim}"}


def test_runner_registry_and_config_errors():
    with pytest.raises(ConfigError, match="unknown encode runner 'spark'; allowed: local, ray"):
        make_runner("spark")
    with pytest.raises(ConfigError, match="actors=0 must be at least 1"):
        RayEncodeConfig(actors=0)
    with pytest.raises(ConfigError, match="needs an encoder factory"):
        RayRunner(RayEncodeConfig())


# ---- on a local Ray (one instance for the module: it takes ~10 s to start) -------------------


@pytest.fixture(scope="module")
def ray_local():
    if not ray_available():
        pytest.skip("Ray Data is not installed (pip install 'ray[data]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_build(image_manifest, tiny_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    return build_image_index(image_manifest, root, tiny_encoder, CFG, progress=False), root


def rejects_of(report) -> list[dict]:
    return [json.loads(line) for line in report.rejects_path.read_text().splitlines()]


@needs_ray
@pytest.mark.slow
def test_ray_build_equals_local_build(ray_local, local_build, image_manifest, tiny_encoder,
                                      tmp_path):
    want_rep, want_root = local_build
    runner = RayRunner(RayEncodeConfig(actors=2, cpus_per_actor=1), TINY)
    rep = build_image_index(image_manifest, tmp_path, tiny_encoder, CFG, progress=False,
                            runner=runner)
    assert (rep.runner, rep.encoded, rep.count) == ("ray", N_GOOD, N_GOOD)
    assert runner.actors == 2 and runner.device == "cpu"
    got, want = load_image_index(tmp_path), load_image_index(want_root)
    assert got.ids == want.ids and got.metadata == want.metadata  # catalogue order
    np.testing.assert_allclose(got.vectors(), want.vectors(), atol=1e-6)
    key = lambda r: (r["line"] or 0, r["id"] or "")
    assert sorted(rejects_of(rep), key=key) == sorted(rejects_of(want_rep), key=key)
    assert rep.rejected == want_rep.rejected == 6  # 5 bad manifest lines + the corrupt image


@needs_ray
@pytest.mark.slow
def test_stopped_ray_build_resumes_to_the_local_vectors(ray_local, local_build, image_manifest,
                                                        tiny_encoder, tmp_path, monkeypatch):
    commits = []
    real = image_build.commit_chunk

    def stop_after_two(*args, **kwargs):
        if len(commits) == 2:  # the driver is stopped (Ctrl-C, kill) after two batches
            raise Killed
        commits.append(len(args[3]))  # ids of the committed batch
        real(*args, **kwargs)

    monkeypatch.setattr(image_build, "commit_chunk", stop_after_two)
    runner = RayRunner(RayEncodeConfig(actors=1), TINY)
    with pytest.raises(Killed):
        build_image_index(image_manifest, tmp_path, tiny_encoder, CFG, progress=False,
                          runner=runner)
    monkeypatch.setattr(image_build, "commit_chunk", real)
    (partial_version,) = IndexStore(tmp_path).incomplete_versions()
    done = sum(commits)  # images committed before the stop (the corrupt one counts as reject)

    rep = build_image_index(image_manifest, tmp_path, tiny_encoder, CFG, progress=False,
                            runner=runner)
    assert rep.version == partial_version
    assert rep.resumed + rep.encoded == N_GOOD and rep.resumed == done > 0
    _, want_root = local_build
    got, want = load_image_index(tmp_path), load_image_index(want_root)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.vectors(), want.vectors(), atol=1e-6)
    assert rep.rejected == 6


@needs_ray
@pytest.mark.slow
def test_ray_actors_with_another_encoder_are_refused(ray_local, image_manifest, tiny_encoder,
                                                     tmp_path):
    class Renamed:  # the build's encoder: another name than the actors' tiny CLIP
        name, dim = "other/model", tiny_encoder.dim
        preprocess, encode_pixels = tiny_encoder.preprocess, tiny_encoder.encode_pixels

    with pytest.raises(EncoderMismatchError, match="the Ray actors encode with"):
        build_image_index(image_manifest, tmp_path, Renamed(), CFG, progress=False,
                          runner=RayRunner(RayEncodeConfig(actors=1), TINY))


@needs_ray
@pytest.mark.slow
def test_cli_index_images_ray(ray_local, image_manifest, tmp_path, capsys):
    from plugin.cli import main

    (tmp_path / "udrl.toml").write_text(
        '[index]\nclip_model = "udrl-tiny-clip"\nclip_pretrained = "none"\nbatch_size = 8\n')
    argv = ["--config", str(tmp_path / "udrl.toml"), "--workspace", str(tmp_path), "index",
            "images", str(image_manifest), "--no-dense", "--ray", "--ray-actors", "1"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads(out)
    assert rep["runner"] == "ray" and rep["count"] == N_GOOD and rep["rejected"] == 6
    assert rep["ray"] == {"address": "local", "actors": 1, "device": "cpu"}
