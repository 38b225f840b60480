"""bench.run with fake sections: merging, error capture, Markdown rendering, argument checks."""

from __future__ import annotations

import importlib.machinery
import json
import re
import sys
import types

import pytest

from bench import run as bench_run


def fake_section(monkeypatch, name: str, run) -> None:
    mod = types.ModuleType(f"bench.{name}")
    mod.run = run
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)  # what find_spec reads
    monkeypatch.setitem(sys.modules, mod.__name__, mod)


@pytest.fixture()
def sections(monkeypatch):
    monkeypatch.setattr(bench_run, "SECTIONS", ("fast", "broken", "planned"))
    monkeypatch.setattr(bench_run, "machine_info", lambda: {"cpu": "Test CPU", "cores": 2})
    fake_section(monkeypatch, "fast", lambda quick: {"quick": quick, "search": {
        "flat": {"qps": 1234.5, "recall": 1.0}, "hnsw": {"qps": 9876.25, "recall": 0.9731}}})

    def broken(quick):
        raise ValueError("no | pipes in tables")

    fake_section(monkeypatch, "broken", broken)


def test_runs_available_sections_records_errors_and_keeps_old_ones(sections, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(
        {"updated": "old", "sections": {"kept": {"date": "d0", "result": {"x": 1}}}}))
    assert bench_run.main(["--quick", "--out", str(tmp_path)]) == 1  # "broken" failed

    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data["sections"]) == ["kept", "fast", "broken"]  # "planned" has no module
    assert data["sections"]["kept"] == {"date": "d0", "result": {"x": 1}}
    fast, broken = data["sections"]["fast"], data["sections"]["broken"]
    assert fast["quick"] is True and fast["result"]["search"]["hnsw"]["recall"] == 0.9731
    assert fast["machine"] == {"cpu": "Test CPU", "cores": 2} and "date" in fast
    assert broken["error"] == "ValueError: no | pipes in tables" and "result" not in broken
    out = capsys.readouterr().out
    assert "[1/2] fast (quick) ..." in out and "[2/2] broken FAILED" in out

    md = (tmp_path / "results.md").read_text()
    assert md.count("\n## ") == 3 and "| search.hnsw.qps | 9,876.25 |" in md
    assert "| search.flat.recall | 1 |" in md and "| quick | true |" in md
    assert "| error | ValueError: no \\| pipes in tables |" in md  # escaped, table intact


def test_only_runs_the_named_sections(sections, tmp_path):
    assert bench_run.main(["--only", "fast", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data["sections"]) == ["fast"] and data["sections"]["fast"]["quick"] is False


@pytest.mark.parametrize(
    ("only", "match"),
    [("nope", "unknown section.*allowed: fast, broken, planned"), ("planned", "no module yet")],
)
def test_bad_only_lists_the_allowed_names(sections, only, match, capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench_run.main(["--only", only, "--out", str(tmp_path)])
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "results.json").exists()


def test_machine_info_has_the_basics():
    info = bench_run.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["ram_gib"] > 0
    assert {"torch", "faiss", "gpu", "python"} <= set(info)
