"""The udrl CLI end to end on tiny settings, and its error contract (one line, exit 2)."""

from __future__ import annotations

import json

import pytest

from plugin.cli import main

TINY = """
scorer = "lexical"
builtin_queries = 60
[teacher]
kind = "builtin"
prompts_per_task = 2
[train]
preset = "tiny"
steps = 30
batch_size = 8
warmup_steps = 5
rounds = 1
round_steps = 5
explore_per_round = 16
eval_commands = 20
[intent]
epochs = 5
[index]
clip_model = "udrl-tiny-clip"
clip_pretrained = "none"
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    (ws / "udrl.toml").write_text(TINY)
    return ws


def base(ws) -> list[str]:
    return ["--config", str(ws / "udrl.toml"), "--workspace", str(ws)]


def test_offline_flow_distill_train_rewrite_intent_eval(workspace, capsys):
    code, out, err = run(capsys, *base(workspace), "distill")
    assert code == 0, err
    report = json.loads(out)
    assert report["queries_done"] == 60 and report["examples_written"] == 60 * 2 * 2
    assert report["relabel"]["examples"] == 240 and len(report["relabel"]["bucket_edges"]["edges"][0]) == 4

    code, out, err = run(capsys, *base(workspace), "distill")  # resume: nothing new
    assert code == 0 and json.loads(out)["queries_skipped_existing"] == 60

    code, out, err = run(capsys, *base(workspace), "train")
    assert code == 0, err
    assert "round 0:" in out and "round 1:" in out and "saved to" in out
    assert (workspace / "rewriter" / "loss_curve.png").is_file()
    # train ends with both serving exports; `udrl export` redoes one, and auto serves ONNX
    assert "ONNX Runtime export for serving:" in out and "CTranslate2 export for serving:" in out
    code, out, err = run(capsys, *base(workspace), "export", "--engine", "onnx",
                         "--quantization", "float32")
    assert code == 0 and out.startswith("ONNX Runtime export:"), err
    assert json.loads((workspace / "rewriter" / "onnx" / "udrl_export.json").read_text())[
        "quantization"] == "float32"
    code, out, err = run(capsys, *base(workspace), "rewrite", "holiday sale", "--task",
                         "template", "--length", "7", "--decoding", "greedy", "--json")
    assert code == 0, err

    code, out, err = run(capsys, *base(workspace), "rewrite", "holiday sale", "--task",
                         "template", "--length", "7", "-n", "2", "--strict-length", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert [g["words"] for g in got] == [7, 7] and all(g["valid"] for g in got)

    code, out, err = run(capsys, *base(workspace), "train-intent")
    assert code == 0, err and "held-out accuracy" in out
    code, out, err = run(capsys, *base(workspace), "intent", "birthday party invitation")
    assert code == 0 and "->" in out

    code, out, err = run(capsys, *base(workspace), "eval-rewriter", "--commands", "20")
    assert code == 0, err
    rep = json.loads((workspace / "reports" / "eval_rewriter.json").read_text())
    assert set(rep["modes"]) == {"free-greedy", "free-sample", "strict-greedy"}
    # strict length is exact unless an image prompt had to be cut to CLIP's 77-token window
    items = [json.loads(x) for x in
             (workspace / "reports" / "eval_rewriter_items.jsonl").read_text().splitlines()]
    strict = [i for i in items if i["mode"] == "strict-greedy"]
    assert len(strict) == 20
    for i in strict:
        assert i["words"] == i["length"] or "truncated to CLIP's 77-token window" in i["problems"]
    assert rep["intent"]["count"] > 0 and 0.0 <= rep["intent"]["accuracy"] <= 1.0
    assert (workspace / "reports" / "length_errors.png").is_file()


def test_index_commands_build_and_publish(workspace, tmp_path, capsys):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (40 * i, 90, 200 - 30 * i)).save(imgs / f"im{i}.png")
    (imgs / "broken.png").write_bytes(b"not an image")
    code, out, err = run(capsys, *base(workspace), "index", "images", str(imgs))
    assert code == 0, err
    rep = json.loads(out)
    assert rep["count"] == 5 and rep["rejected"] == 1

    cat = tmp_path / "templates.jsonl"
    rows = [{"id": f"t{i}", "title": f"summer sale banner {i}", "description": "bold",
             "tags": ["sale"], "category": "banner"} for i in range(4)] + [{"title": "no id"}]
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run(capsys, *base(workspace), "index", "templates", str(cat))
    assert code == 0, err
    rep = json.loads(out)
    assert rep["doc_count"] == 4 and rep["rejected"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rewrite", "cabin", "--task", "video"], "error: unknown task 'video'; allowed: image, template"),
        (["rewrite", "cabin", "--length", "80"], "error: length 80 is out of range 3-40 words"),
        (["rewrite", "   "], "error: query is empty"),
        (["rewrite", "cabin", "--length", "abc"], "error: Invalid value for '--length'"),
        (["rewrite", "cabin", "--model", "/nonexistent/model"], "error: model directory /nonexistent/model does not exist"),
        (["intent", "cabin", "--model", "/nonexistent/intent"], "error: "),
        (["--config", "/nonexistent.toml", "rewrite", "x"], "error: config file /nonexistent.toml does not exist"),
        (["bogus"], "error: No such command 'bogus'"),
        (["export", "--engine", "tvm"], "error: unknown engine 'tvm'; allowed: all, onnx, ctranslate2"),
        (["export", "--quantization", "int3"], "error: no engine has quantization 'int3'; ONNX Runtime: int8, int4, float32;"),
    ],
)
def test_bad_input_gives_one_error_line_and_exit_2(tmp_path, capsys, argv, message):
    code, out, err = run(capsys, "--workspace", str(tmp_path), *argv)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err


def test_unreadable_data_file_is_one_line(tmp_path, capsys):
    (tmp_path / "distilled.jsonl").mkdir()  # a directory where the data file should be
    code, out, err = run(capsys, "--workspace", str(tmp_path), "train")
    assert code == 2 and "is a directory" in err
