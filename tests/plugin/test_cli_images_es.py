"""`udrl index images|merge|rollback images --backend elasticsearch` against the
Elasticsearch double: build, refuse, force without encoding again, roll back, shards and their
merge (the library's side: tests/indexers/test_images_es*.py)."""

from __future__ import annotations

import json

from PIL import Image

from plugin.cli import main


TINY = """
[index]
clip_model = "udrl-tiny-clip"
clip_pretrained = "none"
dense = false
es_image_alias = "imgs"
publish_max_reject_rate = 0.5
"""


def run(capsys, ws, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(ws / "udrl.toml"), "--workspace", str(ws), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_builds_refuses_forces_merges_and_rolls_back(tmp_path, capsys, es):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "udrl.toml").write_text(TINY)
    imgs = tmp_path / "imgs"
    imgs.mkdir()

    def draw(*which: int) -> None:
        for i in which:
            Image.new("RGB", (40 + i, 30), (40 * i, 90, 200 - 30 * i)).save(imgs / f"im{i}.png")

    draw(*range(6))
    (imgs / "broken.png").write_bytes(b"not an image")
    flags = ("--backend", "elasticsearch", "--es-url", es.url)

    code, out, err = run(capsys, ws, "index", "images", str(imgs), *flags)
    assert code == 0, err
    first = json.loads(out)
    assert (first["backend"], first["alias"], first["count"], first["rejected"]) == (
        "elasticsearch", "imgs", 6, 1)
    assert es.aliases == {"imgs": {first["version"]}}
    assert (ws / "indexes" / "images-es").is_dir() and not (ws / "indexes" / "images").exists()

    for p in sorted(imgs.glob("im[2-5].png")):  # 2 of 6 images left: 33% of the live count
        p.unlink()
    code, out, err = run(capsys, ws, "index", "images", str(imgs), *flags)
    last = err.strip().splitlines()[-1]  # after the encoder's warnings and progress
    assert (code, out) == (2, "") and err.count("error:") == 1
    assert last.startswith(f"error: refusing to publish {imgs}: 2 documents is 33.3% of the 6")
    assert f"{first['version']} stays live" in last and set(es.indices) == {first["version"]}

    code, out, err = run(capsys, ws, "index", "images", str(imgs), *flags, "--force")
    assert code == 0, err
    forced = json.loads(out)
    assert forced["count"] == 2 and forced["publish_check"]["forced"] and forced["reused"]

    code, out, err = run(capsys, ws, "index", "rollback", "images", *flags)
    assert code == 0, err
    assert json.loads(out) == {"index": "images", "backend": "elasticsearch",
                               "version": first["version"],
                               "previous_version": forced["version"], "count": 6}

    draw(2, 3, 4, 5)  # all 6 again, in two shards (crc32: im4, im5 | im0..im3)
    for i in range(2):  # shards encode into the staging store; the merge publishes
        code, out, err = run(capsys, ws, "index", "images", str(imgs), *flags,
                             "--shard", f"{i}/2")
        assert code == 0, err
        assert json.loads(out)["count"] == (2, 4)[i]
    code, out, err = run(capsys, ws, "index", "merge", *flags)
    assert code == 0, err
    merged = json.loads(out)
    assert (merged["count"], merged["rejected"], merged["previous_version"]) == (
        6, 1, first["version"])
    assert es.aliases == {"imgs": {merged["version"]}}

    code, out, err = run(capsys, ws, "index", "images", str(imgs), *flags, "--log", "q.tsv")
    assert code == 2 and err.startswith("error: --log expands the image index's text channel")
