"""bench.datasets on a hand-made icons.json in the real @tabler/icons format; npm is faked.

The fixture (tests/bench/fixtures/tabler_icons.json) has 18 icons and 25 distinct tags after
normalisation (the ``null`` tag of number-0 is dropped; 911 and 0 are numbers in the file):

    mismatch (1–5 icons, no word shared with any relevant icon name), 19 tags:
        ab-test{a-b} compare{a-b} squirrel{acorn} nut{acorn} ekg{activity-heartbeat}
        cardio{activity-heartbeat,heart} "vital signs"{activity-heartbeat} love{heart}
        rolodex{address-book} read{book} gondola{cable-car} drive{car,ambulance} 911{ambulance}
        round{circle} box{square} polygon{square,triangle,hexagon,pentagon,star}
        favourite{star} zero{number-0} empty{blank}                          → 25 (tag, icon) pairs
    match, 5 tags: a{a-b} heart{activity-heartbeat,heart} book{address-book,book}
        car{cable-car,car} 0{number-0}                                       →  8 pairs
    broad (> 5 icons), 1 tag: shape{heart,circle,square,triangle,hexagon,pentagon} → 6 pairs

    39 (tag, icon) pairs in all. question-mark has no tags; blank has category "".
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from bench import datasets as ds

FIXTURE = Path(__file__).parent / "fixtures" / "tabler_icons.json"
MISMATCH = {"ab-test", "compare", "squirrel", "nut", "ekg", "cardio", "vital signs", "love",
            "rolodex", "read", "gondola", "drive", "911", "round", "box", "polygon",
            "favourite", "zero", "empty"}
MATCH = {"a", "heart", "book", "car", "0"}
TOTAL_PAIRS = 39


@pytest.fixture(scope="module")
def icons():
    return ds.load_icons(FIXTURE)


def relevant_by_hand() -> dict[str, set[str]]:
    """tag → icons listing it, straight from the raw JSON (independent of load_icons)."""
    out: dict[str, set[str]] = {}
    for name, entry in json.loads(FIXTURE.read_text()).items():
        for t in entry["tags"]:
            if t is not None:
                out.setdefault(" ".join(str(t).casefold().split()), set()).add(name)
    return out


def read_split(out: Path, name: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    queries = dict(line.split("\t") for line in (out / name / "queries.tsv").read_text().splitlines())
    qrels: dict[str, set[str]] = {}
    for line in (out / name / "qrels.txt").read_text().splitlines():
        qid, zero, icon, grade = line.split(" ")
        assert (zero, grade) == ("0", "1")
        qrels.setdefault(qid, set()).add(icon)
    return queries, qrels


def read_log(out: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in (out / "log.tsv").read_text().splitlines()]


def test_load_icons_reads_real_format(icons):
    assert len(icons) == 18
    by_id = {i.id: i for i in icons}
    assert by_id["activity-heartbeat"].title == "activity heartbeat"
    assert by_id["activity-heartbeat"].tags == ("ekg", "cardio", "heart", "vital signs")
    assert by_id["ambulance"].tags == ("911", "drive")  # number → str
    assert by_id["number-0"].tags == ("0", "zero")  # null dropped
    assert by_id["star"].tags == ("polygon", "favourite")  # casefolded
    assert by_id["blank"].category == "" and by_id["question-mark"].tags == ()


def test_load_icons_merges_duplicate_ids_and_rejects_bad_files(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"name": "x", "category": "", "tags": ["a"]},
                               {"name": "x", "category": "C", "tags": ["b", "a"]}]))
    assert ds.load_icons(dup) == [ds.Icon("x", "C", ("a", "b"))]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a b": {"name": "a b", "tags": []}}))
    with pytest.raises(ds.DataError, match="'a b' must be a non-empty string without spaces"):
        ds.load_icons(bad)
    with pytest.raises(ds.DataError, match="does not exist"):
        ds.load_icons(tmp_path / "missing.json")


def test_classify_tags_by_hand(icons):
    mismatch, match, broad = ds.classify_tags(icons)
    assert set(mismatch) == MISMATCH and set(match) == MATCH and set(broad) == {"shape"}
    assert mismatch["polygon"] == ("square", "triangle", "hexagon", "pentagon", "star")  # 5 is in
    assert len(broad["shape"]) == 6  # 6 is out


def test_splits_have_the_promised_properties(icons, tmp_path):
    bench = ds.build_benchmark(icons, seed=13, n_test=2)
    ds.write_benchmark(bench, tmp_path)
    catalog = [json.loads(line) for line in (tmp_path / "catalog.jsonl").read_text().splitlines()]
    assert [r["id"] for r in catalog] == [i.id for i in icons]
    assert catalog[2] == {"id": "activity-heartbeat", "title": "activity heartbeat",
                          "category": "Health"}
    assert all(set(r) == {"id", "title", "category"} for r in catalog)  # tags are not indexed
    assert {r["id"]: r["category"] for r in catalog}["blank"] == ""

    truth = relevant_by_hand()
    held_out = set()
    for name, prefix, kind in (("mismatch", "mm", MISMATCH), ("match", "m", MATCH),
                               ("dev", "dev", MISMATCH)):
        queries, qrels = read_split(tmp_path, name)
        assert list(queries) == [f"{prefix}-0001", f"{prefix}-0002"]
        for qid, query in queries.items():
            assert query in kind and qrels[qid] == truth[query] and 1 <= len(qrels[qid]) <= 5
            shared = [ds.words(query) & ds.words(icon) for icon in qrels[qid]]
            assert any(shared) == (name == "match")
        held_out |= set(queries.values())
    assert len(held_out) == 6  # dev never repeats a test tag

    log = read_log(tmp_path)
    assert {ds.normalise(q) for q, _ in log}.isdisjoint(held_out)
    pairs: dict[str, set[str]] = {}
    for q, icon in log:
        pairs.setdefault(q, set()).add(icon)
    assert pairs == {t: r for t, r in truth.items() if t not in held_out}  # every other tag
    assert pairs["shape"] == truth["shape"]  # broad tags are real searches too
    assert len(log) == TOTAL_PAIRS - sum(len(truth[t]) for t in held_out) == len(set(log))


def test_too_few_tags_takes_all_and_warns(icons, caplog):
    bench = ds.build_benchmark(icons, seed=1, n_test=10)
    assert len(bench.test[0].queries) == 10
    assert set(bench.test[1].queries.values()) == MATCH  # only 5 match tags exist
    assert len(bench.dev.queries) == 9  # 19 mismatch tags - 10 in test
    shape = ("heart", "circle", "square", "triangle", "hexagon", "pentagon")
    assert bench.log == tuple(("shape", i) for i in shape)  # only the broad tag is left
    assert "only 5 match tags exist" in caplog.text and "only 9 dev" in caplog.text


def test_same_seed_same_files_other_seeds_differ(icons, tmp_path):
    def files(seed: int, out: Path) -> dict[str, bytes]:
        ds.write_benchmark(ds.build_benchmark(icons, seed=seed, n_test=2), out)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.*"))}

    first = files(13, tmp_path / "a")
    assert files(13, tmp_path / "b") == first
    assert any(files(s, tmp_path / f"s{s}") != first for s in range(1, 6))


def test_cli_writes_benchmark_and_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["tabler", str(out), "--icons", str(FIXTURE), "--n-test", "2", "--seed", "5"]
    assert ds.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary | {"out": ""} == {"dataset": "tabler", "icons": 18, "log_lines": len(read_log(out)),
                                     "log_queries": 19, "mismatch": 2, "match": 2, "dev": 2,
                                     "seed": 5, "out": ""}
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert names == {"catalog.jsonl", "log.tsv", "README.md"} | {
        f"{s}/{f}" for s in ("mismatch", "match", "dev") for f in ("queries.tsv", "qrels.txt")}
    readme = (out / "README.md").read_text()
    assert "MIT, © Paweł Kuna" in readme and "seed 5" in readme
    assert f"python -m bench.datasets tabler {out} --icons {FIXTURE}" in readme

    assert ds.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: output folder") and "--force" in err and "\n" not in err
    assert ds.main([*argv, "--force"]) == 0


def test_cli_unknown_dataset(tmp_path, capsys):
    assert ds.main(["fonts", str(tmp_path / "o"), "--icons", str(FIXTURE)]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown dataset 'fonts'; allowed: tabler"
    assert not (tmp_path / "o").exists()


def fake_npm(tmp_path: Path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_fetch_extracts_icons_json_caches_it_and_reuses_the_cache(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="bench.datasets")
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in (("package/README.md", b"hi"), ("package/icons.json", FIXTURE.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fake_npm(tmp_path, monkeypatch, f'cp "{tgz}" ./tabler-icons-3.52.0.tgz')
    monkeypatch.setenv("UDRL_DATA_CACHE", str(tmp_path / "cache"))
    assert ds.main(["tabler", str(tmp_path / "o1"), "--n-test", "2"]) == 0
    cached = tmp_path / "cache" / "tabler-icons-3.52.0.json"
    assert cached.read_bytes() == FIXTURE.read_bytes()
    assert "fetching @tabler/icons@3.52.0 with npm pack" in caplog.text  # progress for the user

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm now: the cache must serve
    assert ds.fetch_icons(tmp_path / "cache") == cached


def test_missing_or_failing_npm_is_one_line_error(tmp_path, monkeypatch, capsys):
    cache = ["--cache", str(tmp_path / "cache")]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert ds.main(["tabler", str(tmp_path / "o"), *cache]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: npm is not on PATH") and "--icons FILE" in err
    assert "\n" not in err

    fake_npm(tmp_path, monkeypatch, 'echo "npm ERR! network request failed" >&2; exit 1')
    assert ds.main(["tabler", str(tmp_path / "o"), *cache]) == 2
    err = capsys.readouterr().err.strip()
    assert "exit 1: npm ERR! network request failed" in err and "--icons FILE" in err
    assert not (tmp_path / "cache" / "tabler-icons-3.52.0.json").exists()
