"""Publishing failures reproduced end to end (``pytest -m reliability``).

1. A live template index of 5,000 documents, then the three broken exports that replaced it
   before (mostly malformed JSONL, duplicate ids, a CSV whose rows do not fit its header), each
   through the real ``udrl`` command in its own process: each is refused with one line on
   stderr and exit status 2, and the live version keeps answering the same searches. A forced
   publish with ``keep_versions = 1`` still keeps the good version, and ``udrl index rollback``
   brings it back.
2. An image build killed with SIGKILL mid-way, 10 of its already encoded image files changed,
   the build run again: the published vectors equal a clean build's, and the unfinished build
   of another catalogue left behind is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexers.encoders import TINY_CLIP_NAME
from indexers.images import ImageIndex, load_image_index
from indexers.reindex import ImageReindexConfig, reindex_images
from indexers.store import IndexStore
from indexers.template_backends import open_template_index

from .bad_catalogues import BAD_CATALOGUES, write_bad, write_jsonl
from .build_fakes import Wrapped
from .template_fixtures import make_templates

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
N_LIVE = 5000


def udrl(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the ``udrl`` command line in a fresh process (nothing from this one leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDRL_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "plugin.cli", "--config", str(workspace / "udrl.toml"),
           "--workspace", str(workspace), *args]
    return subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def answers(root: Path, words: list[str]) -> tuple[str, int, list[list[str]]]:
    with open_template_index("tantivy", root=root) as ix:
        return ix.version, ix.count(), [[h.id for h in ix.search(w, k=5)] for w in words]


def test_bad_catalogues_are_refused_and_the_good_version_survives(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "udrl.toml").write_text("[index]\ndense = false\nkeep_versions = 1\n")
    catalog = make_templates(N_LIVE, seed=13)
    good = write_jsonl(tmp_path / "templates.jsonl", catalog.records)
    done = udrl(ws, "index", "templates", str(good))
    assert done.returncode == 0, done.stderr
    live = json.loads(done.stdout)
    assert live["doc_count"] == N_LIVE and live["publish_check"]["passed"]

    root = ws / "indexes" / "templates"
    store = IndexStore(root)
    words = list(catalog.distinctive)[:20]  # each finds its own template first
    before = answers(root, words)
    assert [hits[0] for hits in before[2]] == [catalog.distinctive[w] for w in words]

    for name in BAD_CATALOGUES:
        src, n_valid, n_rejected = write_bad(name, tmp_path, catalog.records)
        run = udrl(ws, "index", "templates", str(src))
        assert run.returncode == 2 and run.stdout == "", (name, run.stdout)
        (line,) = run.stderr.splitlines()  # the decision, and nothing else
        assert line.startswith(f"error: refusing to publish {src}: {n_valid} documents is "), line
        assert f"{n_rejected} of {n_valid + n_rejected} records were rejected" in line
        assert f"{live['version']} stays live" in line and line.endswith("--force")
        assert answers(root, words) == before  # same version, count and results
        assert [p.name for p in store.complete_versions()] == [live["version"]]
        assert store.incomplete_versions() == []

    # Forcing the broken export through publishes it; pruning (keep_versions = 1) still
    # keeps the version that was live before it, and rollback brings that one back.
    src, n_valid, _ = write_bad("malformed", tmp_path, catalog.records)
    forced = udrl(ws, "index", "templates", str(src), "--force")
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout)
    assert out["doc_count"] == n_valid and out["publish_check"]["forced"]
    assert "despite the publish checks (--force)" in forced.stderr
    assert [p.name for p in store.complete_versions()] == [live["version"], out["version"]]

    back = udrl(ws, "index", "rollback", "templates")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"index": "templates", "backend": "tantivy",
                                       "version": live["version"],
                                       "previous_version": out["version"], "count": N_LIVE}
    assert answers(root, words) == before


# ---- the changed-image resume ---------------------------------------------------------------

N_IMAGES, BATCH = 400, 16
CHANGED = [f"p{i:04d}" for i in range(0, 100, 10)]  # 10 images in the first 7 batches
KILL_SCRIPT = """
import os, signal, sys
from indexers.encoders import TINY_CLIP_NAME, ClipEncoder
from indexers.image_build import build_image_index
from indexers.images import ImageIndexConfig

class DiesAt:  # SIGKILLs its own process when asked for batch n (0-based)
    def __init__(self, enc, n):
        self.enc, self.n, self.name, self.dim = enc, n, enc.name, enc.dim
    def preprocess(self, image):
        return self.enc.preprocess(image)
    def encode_pixels(self, pixels):
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        self.n -= 1
        return self.enc.encode_pixels(pixels)

source, store, n, BATCH = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = ImageIndexConfig(model_name=TINY_CLIP_NAME, pretrained=None, index_type="flat",
                       batch_size=BATCH)
build_image_index(source, store, DiesAt(ClipEncoder(TINY_CLIP_NAME, pretrained=None), n), cfg,
                  progress=False)
"""


def write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(grid).resize((64 + seed % 7, 48 + seed % 5), Image.NEAREST).save(path)


def killed_build(source: Path, store: Path, at_batch: int, script: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(script), str(source), str(store), str(at_batch),
                          str(BATCH)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == -9, run.stderr  # killed, not finished or failed


def test_killed_image_build_resumes_with_changed_files_encoded_again(tmp_path, tiny_encoder):
    cat = tmp_path / "cat"
    (cat / "imgs").mkdir(parents=True)
    lines = []
    for i in range(N_IMAGES):
        write_image(cat / "imgs" / f"p{i:04d}.png", seed=i)
        lines.append(json.dumps({"id": f"p{i:04d}", "path": f"imgs/p{i:04d}.png",
                                 "title": f"pattern {i}"}))
    manifest = cat / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    script = tmp_path / "kill_build.py"
    script.write_text(KILL_SCRIPT)
    cfg = {"model_name": TINY_CLIP_NAME, "pretrained": None, "index_type": "flat",
           "batch_size": BATCH}
    store_root = tmp_path / "images"
    first = reindex_images(ImageReindexConfig(manifest, store_root, **cfg), tiny_encoder,
                           progress=False)
    store = IndexStore(store_root)

    killed_build(cat / "imgs", store_root, 2, script)  # another catalogue: the folder
    (other,) = store.incomplete_versions()
    killed_build(manifest, store_root, 12, script)  # 12 batches = 192 images committed
    interrupted = [p for p in store.incomplete_versions() if p != other]
    assert len(interrupted) == 1 and (interrupted[0] / ".lock").exists()  # SIGKILL: no clean-up

    for n, name in enumerate(CHANGED):
        write_image(cat / "imgs" / f"{name}.png", seed=10_000 + n)
    counting = Wrapped(tiny_encoder)
    rep = reindex_images(ImageReindexConfig(manifest, store_root, **cfg), counting,
                         progress=False)
    assert rep["version_name"] == interrupted[0].name  # the killed build was resumed
    assert (rep["resumed"], rep["changed"]) == (192 - 10, 10)
    assert rep["encoded"] == counting.images == N_IMAGES - 182
    assert rep["previous_version"] == first["version_name"]
    assert store.incomplete_versions() == [] and not other.exists()  # older: cleaned up

    clean_root = tmp_path / "clean"
    reindex_images(ImageReindexConfig(manifest, clean_root, **cfg), tiny_encoder, False)
    got, want = load_image_index(store_root), load_image_index(clean_root)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.vectors(), want.vectors(), atol=1e-6)
    old_ix = ImageIndex.open(store_root / "versions" / first["version_name"])
    old = dict(zip(old_ix.ids, old_ix.vectors(), strict=True))
    new = dict(zip(got.ids, got.vectors(), strict=True))
    for name in CHANGED:  # the changed images have new vectors, not the killed run's
        assert not np.allclose(new[name], old[name], atol=1e-3), name
    same = [i for i in got.ids if i not in CHANGED]
    np.testing.assert_allclose([new[i] for i in same], [old[i] for i in same], atol=1e-6)
