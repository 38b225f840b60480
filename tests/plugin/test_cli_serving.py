"""`udrl --version`, `serve` (bind warning, JSON logs, starting without its indexes), `search`
loading only what the routed tasks need, `rewrite` decoding as the service, quiet logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from importlib.metadata import version

import pytest
from fastapi.testclient import TestClient

from plugin.cli import main

from ..indexers.template_fixtures import make_templates
from .fakes import FakeRewriter


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"udrl {version('udrl-search')}\n"


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory, tiny_model_dir):
    """A workspace with a rewriter only: no intent model, no index."""
    ws = tmp_path_factory.mktemp("serve-ws")
    shutil.copytree(tiny_model_dir, ws / "rewriter")
    return ws


@pytest.fixture
def captured_serve(monkeypatch):
    """Run `serve` up to uvicorn and keep the app it would have served (the app owns its
    pipeline: its lifespan closes it, as after a shutdown)."""
    import uvicorn

    seen = {}

    def fake_run(app, **kw):
        seen.update(app=app, **kw)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return seen


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_serve_starts_without_its_indexes_and_readyz_says_why(served_workspace, captured_serve,
                                                             capsys, monkeypatch, caplog):
    # Elasticsearch unreachable and no image index: the service starts and reports both
    monkeypatch.setenv("UDRL_INDEX__TEMPLATE_BACKEND", "elasticsearch")
    monkeypatch.setenv("UDRL_INDEX__ES_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("UDRL_PIPELINE__ENGINE", "torch")
    with caplog.at_level(logging.WARNING):
        code, _, err = run(capsys, "--workspace", str(served_workspace), "serve",
                           "--port", "18099")
    assert code == 0, err
    assert captured_serve["host"] == "127.0.0.1" and captured_serve["log_config"] is None
    assert not any("beyond loopback" in r.getMessage() for r in caplog.records)
    with TestClient(captured_serve["app"]) as client:
        r = client.get("/readyz")
        parts = r.json()["components"]
        assert r.status_code == 503 and r.json()["ready"] is False
        assert parts["rewriter"]["loaded"] is True
        assert parts["template_index"]["loaded"] is False
        assert "cannot open alias 'udrl-templates'" in parts["template_index"]["error"]
        assert parts["image_index"]["error"] == ("no image index in the workspace; build one "
                                                 "with `udrl index images`")
        assert client.get("/healthz").status_code == 200


def test_serve_beyond_loopback_without_a_key_warns_in_json(served_workspace, captured_serve,
                                                          capsys, monkeypatch):
    monkeypatch.setenv("UDRL_PIPELINE__ENGINE", "torch")
    code, _, err = run(capsys, "--workspace", str(served_workspace), "serve", "--host",
                       "0.0.0.0", "--log-format", "json")
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    warning = next(line for line in lines if "beyond loopback" in line["message"])
    assert warning["level"] == "WARNING" and warning["logger"] == "udrl"
    assert warning["message"].startswith("serving on 0.0.0.0:8080, beyond loopback, with no "
                                         "API key")
    assert set(warning) == {"ts", "level", "logger", "message"}
    assert not [line for line in err.splitlines() if line.startswith("WARNING ")]  # no text


def test_third_party_info_is_quiet_and_ours_is_not(capsys):
    from plugin.logs import configure_logging

    configure_logging()
    logging.getLogger().info("open_clip style: built a model")  # the root logger, as open_clip
    logging.getLogger("open_clip.factory").info("a library's own logger")
    logging.getLogger("plugin.jobs").info("ours")
    err = capsys.readouterr().err
    assert "INFO plugin.jobs: ours" in err
    assert "open_clip style" not in err and "a library's own logger" not in err
    configure_logging(verbose=True)
    logging.getLogger().info("now shown")
    assert "INFO root: now shown" in capsys.readouterr().err
    configure_logging()


def test_rewrite_decodes_as_the_service_first_try(tmp_path, capsys, monkeypatch,
                                                  intent_detector):
    from plugin import hook
    from plugin.config import load_settings
    from plugin.pipeline import Pipeline

    fake = FakeRewriter()
    monkeypatch.setattr(hook, "load_engine", lambda settings, **kw: fake)
    for n in (1, 3):
        code, out, err = run(capsys, "--workspace", str(tmp_path), "rewrite", "red  dog",
                             "--task", "template", "-n", str(n), "--json")
        assert code == 0, err
    cli_calls = list(fake.calls)
    service = FakeRewriter()
    pipe = Pipeline(service, intent_detector, load_settings(workspace=tmp_path))
    try:
        for n in (1, 3):
            pipe.rewrite("red  dog", "template", n=n)
    finally:
        pipe.close()
    assert len(cli_calls) == len(service.calls) == 2
    for (cli_items, cli_opts), (svc_items, svc_opts) in zip(cli_calls, service.calls):
        assert cli_items == svc_items  # same query form and command (task, length, relevance)
        assert cli_opts == svc_opts  # same decoding, temperature, top_p, beams, strictness
    assert [c[1]["decoding"] for c in cli_calls] == ["greedy", "sample"]


@pytest.fixture(scope="module")
def template_workspace(tmp_path_factory, tiny_model_dir):
    """A rewriter with its ONNX export, a tantivy template index with a dense channel, and an
    image index folder (so a search routed to images would load CLIP)."""
    from indexers.dense import load_text_encoder
    from indexers.template_backends import build_template_index
    from rewriters.engines import export_engine

    ws = tmp_path_factory.mktemp("search-ws")
    shutil.copytree(tiny_model_dir, ws / "rewriter")
    export_engine("onnx", ws / "rewriter", quantization="float32")
    build_template_index("tantivy", make_templates(60).records, root=ws / "indexes" / "templates",
                         encoder=load_text_encoder(light=True))
    (ws / "indexes" / "images").mkdir()
    return ws


def test_template_only_search_loads_neither_torch_nor_clip(template_workspace, tmp_path):
    # no --config (default settings: CLIP ViT-B-32 with hub weights): a search routed to
    # templates must not load open_clip, try the hub, or import torch
    probe = ("import json, sys\n"
             "from plugin.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "mods = ('torch', 'open_clip', 'sentence_transformers')\n"
             "print(json.dumps({'code': code, 'loaded': [m for m in mods if m in sys.modules]}),"
             " file=sys.stderr)\n")
    env = {**os.environ, "UDRL_PIPELINE__ENGINE": "onnx", "HF_HUB_OFFLINE": "1"}
    env = {k: v for k, v in env.items() if k not in ("UDRL_CONFIG",)}
    out = subprocess.run([sys.executable, "-c", probe, "--workspace", str(template_workspace),
                          "search", "modern poster", "--task", "template", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, out.stderr
    result = json.loads(out.stdout)
    template = result["modalities"][0]
    assert template["task"] == "template" and template["results"]
    assert "dense" in template["channels"]  # the dense channel was searched, without torch
    assert "INFO root:" not in out.stderr  # no third-party INFO lines
