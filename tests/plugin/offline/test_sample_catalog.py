"""The generated demo catalogue loads through the real catalogue loaders, cleanly and
reproducibly, and is never left half-written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from indexers.catalog_images import RejectLog, load_catalog, open_image
from indexers.catalog_templates import read_templates
from plugin.offline import sample_catalog
from plugin.offline.sample_catalog import (
    IMAGE_MANIFEST,
    STAMP_FILE,
    TEMPLATE_CATALOG,
    sample_image_entries,
    sample_template_entries,
    write_sample_catalog,
)
from rewriters.errors import ConfigError, DataError
from rewriters.queries import load_vocab

N_IMAGES, N_TEMPLATES = 37, 53  # awkward sizes; small so the module stays fast


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "catalog"
    return write_sample_catalog(out, n_images=N_IMAGES, n_templates=N_TEMPLATES, seed=0)


def _digest(folder) -> dict[str, str]:
    """sha256 of every file below ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_images_load_through_the_manifest_reader_with_no_rejects(catalog, tmp_path):
    rejects = RejectLog(tmp_path / "rejects.jsonl")
    records = load_catalog(catalog["image_manifest"], rejects)
    assert rejects.count == 0 and rejects.rows() == []
    assert len(records) == N_IMAGES == catalog["images"]
    assert len({r.id for r in records}) == N_IMAGES
    vocab = load_vocab()["image"]
    for r in records:
        assert r.title and r.tags and r.license == "cc0"
        cat = vocab["categories"][r.meta["category"]]  # extra keys land in meta
        assert r.meta["subject"] in cat["subjects"] and r.meta["subject"] in r.title
        assert r.meta["palette"] in vocab["colours"]


def test_images_decode_at_the_requested_size_and_show_shapes(catalog, tmp_path):
    records = load_catalog(catalog["image_manifest"], RejectLog(tmp_path / "r.jsonl"))
    for r in records:
        im = open_image(r.path)
        assert im.size == (96, 96) and im.mode == "RGB"
        # a gradient plus shapes: far more than the 2 colours of a flat two-tone picture
        assert len(im.getcolors(96 * 96)) > 8


def test_templates_load_through_the_catalogue_reader_with_no_rejects(catalog, tmp_path):
    cat = read_templates(catalog["template_catalog"], rejects_path=tmp_path / "rejects.jsonl")
    assert cat.rejects == []
    assert (tmp_path / "rejects.jsonl").read_text() == ""
    assert len(cat.records) == N_TEMPLATES == catalog["templates"]
    assert len({r.id for r in cat.records}) == N_TEMPLATES
    kinds = {k for g in load_vocab()["template"]["groups"].values() for k in g["kinds"]}
    for r in cat.records:
        assert r.title and r.description and r.tags and r.category in kinds
        assert r.category in r.tags and r.category in r.title.lower()


def test_catalogue_is_varied(catalog):
    def rows(path):
        return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]

    images, templates = rows(catalog["image_manifest"]), rows(catalog["template_catalog"])
    # titles are drawn without repeats; categories spread over the vocabulary
    assert len({r["title"] for r in images}) == N_IMAGES
    assert len({r["title"] for r in templates}) == N_TEMPLATES
    assert len({r["category"] for r in images}) >= 5
    assert len({r["category"] for r in templates}) >= 15


def test_same_seed_gives_identical_files_other_seed_differs(catalog, tmp_path):
    again = write_sample_catalog(tmp_path / "again", N_IMAGES, N_TEMPLATES, seed=0)
    other = write_sample_catalog(tmp_path / "other", N_IMAGES, N_TEMPLATES, seed=1)
    first = _digest(Path(catalog["dir"]))
    assert _digest(tmp_path / "again") == first
    assert again["images"] == N_IMAGES
    changed = _digest(tmp_path / "other")
    assert changed.keys() == first.keys()  # same ids and file names ...
    assert changed[IMAGE_MANIFEST] != first[IMAGE_MANIFEST]  # ... different content
    assert changed[TEMPLATE_CATALOG] != first[TEMPLATE_CATALOG]
    assert other["seed"] == 1


def test_entries_are_pure_functions_of_the_seed():
    assert sample_image_entries(20, seed=5) == sample_image_entries(20, seed=5)
    assert sample_template_entries(20, seed=5) == sample_template_entries(20, seed=5)
    # a longer run starts with the shorter one, so growing a demo keeps the first items
    assert sample_template_entries(30, seed=5)[:20] == sample_template_entries(20, seed=5)
    assert sample_image_entries(20, seed=5) != sample_image_entries(20, seed=6)


def test_empty_catalogue_is_valid(tmp_path):
    s = write_sample_catalog(tmp_path / "empty", n_images=0, n_templates=0)
    assert load_catalog(s["image_manifest"], RejectLog(tmp_path / "r.jsonl")) == []
    assert read_templates(s["template_catalog"]).records == []


def test_rerun_replaces_an_earlier_sample_whole(tmp_path):
    out = tmp_path / "cat"
    write_sample_catalog(out, n_images=9, n_templates=4, seed=0)
    s = write_sample_catalog(out, n_images=3, n_templates=2, seed=1)
    assert len(list((out / "images").iterdir())) == 3  # no leftovers from the bigger run
    assert json.loads((out / STAMP_FILE).read_text())["seed"] == 1 and s["images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # no temp folders left


def test_a_stopped_run_leaves_the_previous_catalogue_intact(tmp_path, monkeypatch):
    out = tmp_path / "cat"
    write_sample_catalog(out, n_images=5, n_templates=5, seed=0)
    before = _digest(out)
    real, calls = sample_catalog.draw_sample_image, []

    def dies_midway(row, size=96, seed=0):
        calls.append(row["id"])
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        return real(row, size, seed)

    monkeypatch.setattr(sample_catalog, "draw_sample_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_sample_catalog(out, n_images=8, n_templates=5, seed=3)
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_a_stopped_first_run_leaves_no_manifest(tmp_path, monkeypatch):
    def boom(row, size=96, seed=0):
        raise OSError("disk full")

    monkeypatch.setattr(sample_catalog, "draw_sample_image", boom)
    with pytest.raises(OSError, match="disk full"):
        write_sample_catalog(tmp_path / "cat", n_images=2, n_templates=2)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_folder_from_a_killed_run_is_cleaned(tmp_path):
    stale = tmp_path / ".cat.tmp-abc123"
    (stale / "images").mkdir(parents=True)
    (stale / IMAGE_MANIFEST).write_text("{}\n")
    write_sample_catalog(tmp_path / "cat", n_images=1, n_templates=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(DataError, match="not a sample catalogue"):
        write_sample_catalog(precious, n_images=1, n_templates=1)
    assert (precious / "holiday.jpg").read_bytes() == b"not ours"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_sample_catalog(tmp_path / "afile", n_images=1, n_templates=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_sample_catalog(empty, n_images=1, n_templates=1)["images"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_images": -1}, "n_images=-1"), ({"n_templates": 2.5}, "n_templates=2.5"),
     ({"n_images": True}, "n_images=True"), ({"image_size": 8}, "image_size=8 is out of range")],
)
def test_bad_arguments_name_the_value(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        write_sample_catalog(tmp_path / "cat", **kwargs)
    assert not (tmp_path / "cat").exists()


def test_other_image_sizes(tmp_path):
    s = write_sample_catalog(tmp_path / "big", n_images=3, n_templates=0, image_size=160)
    for r in load_catalog(s["image_manifest"], RejectLog(tmp_path / "r.jsonl")):
        assert open_image(r.path).size == (160, 160)
