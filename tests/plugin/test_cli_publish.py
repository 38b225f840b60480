"""`udrl index templates --force` and `udrl index rollback`: the CLI's side of safe publishing
(the library's checks are tested in tests/indexers/test_publish.py)."""

from __future__ import annotations

import json

from plugin.cli import main

from ..indexers.bad_catalogues import write_bad, write_jsonl
from ..indexers.es_double import EsDouble
from ..indexers.template_fixtures import make_templates


def run(capsys, ws, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(ws / "udrl.toml"), "--workspace", str(ws), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_refuse_force_and_roll_back(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "udrl.toml").write_text("[index]\ndense = false\npublish_max_reject_rate = 0.5\n")
    records = make_templates(200, seed=2).records
    code, out, err = run(capsys, ws, "index", "templates", str(write_jsonl(tmp_path / "t.jsonl",
                                                                            records)))
    assert code == 0, err
    good = json.loads(out)["version"]

    bad, _, _ = write_bad("duplicates", tmp_path, records)  # 5 kept of 100: 95% rejected
    code, out, err = run(capsys, ws, "index", "templates", str(bad))
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"error: refusing to publish {bad}: 5 documents is 2.5% of the 200")
    assert "above max_reject_rate 0.5" in err  # the setting from the config file

    code, out, err = run(capsys, ws, "index", "templates", str(bad), "--force")
    assert code == 0, err
    forced = json.loads(out)
    assert forced["doc_count"] == 5 and forced["publish_check"]["forced"]

    code, out, err = run(capsys, ws, "index", "rollback", "templates")
    assert code == 0, err
    assert json.loads(out) == {"index": "templates", "backend": "tantivy", "version": good,
                               "previous_version": forced["version"], "count": 200}
    code, out, err = run(capsys, ws, "index", "rollback", "templates", "--to", forced["version"])
    assert code == 0 and json.loads(out)["version"] == forced["version"]

    code, _, err = run(capsys, ws, "index", "rollback", "images")
    assert code == 2 and err == (f"error: nothing to roll back to under {ws}/indexes/images: "
                                 "no version has been published yet\n")
    code, _, err = run(capsys, ws, "index", "rollback", "videos")
    assert code == 2 and err == "error: unknown index 'videos'; allowed: templates, images\n"


def test_elasticsearch_refuse_and_roll_back(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "udrl.toml").write_text('[index]\ndense = false\nes_alias = "tpl"\n')
    records = make_templates(150, seed=4).records
    with EsDouble() as es:
        es_args = ("--backend", "elasticsearch", "--es-url", es.url)
        versions = []
        for n in (150, 120):  # 120 of 150 = 80%: published
            src = write_jsonl(tmp_path / f"t{n}.jsonl", records[:n])
            code, out, err = run(capsys, ws, "index", "templates", str(src), *es_args)
            assert code == 0, err
            versions.append(json.loads(out)["version"])
        assert es.aliases == {"tpl": {versions[1]}}

        bad, _, _ = write_bad("wrong_header", tmp_path, records)
        code, out, err = run(capsys, ws, "index", "templates", str(bad), *es_args)
        assert code == 2 and f"{versions[1]} stays live" in err and err.count("\n") == 1
        assert set(es.indices) == set(versions)  # nothing was created

        code, out, err = run(capsys, ws, "index", "rollback", "templates", *es_args)
        assert code == 0, err
        assert json.loads(out) == {"index": "templates", "backend": "elasticsearch",
                                   "version": versions[0], "previous_version": versions[1],
                                   "count": 150}
        assert es.aliases == {"tpl": {versions[0]}}
