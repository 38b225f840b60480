"""The ONNX Runtime engine against the PyTorch one on the same tiny random-weight models."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rewriters.commands import Command
from rewriters.errors import ConfigError, ModelError
from rewriters.fast import FastRewriter, export_ctranslate2, load_engine
from rewriters.generate import Rewriter, load_rewriter
from rewriters.onnx_engine import (
    ONNX_DIR,
    OnnxRewriter,
    export_onnx,
    load_onnx_rewriter,
    onnx_export_problem,
    sample_nucleus,
)

from .test_fast import ALLOWED_TEXT, ITEMS, _same, marker_model, ranked_model


def _export_copy(src: Path, dst: Path, quantization: str, output_vocab=None) -> Path:
    shutil.copytree(src, dst)
    if output_vocab is not None:
        (dst / "output_vocab.json").write_text(json.dumps(sorted(output_vocab)))
    export_onnx(dst, quantization=quantization)
    return dst


@pytest.fixture(scope="module")
def allowed(tokenizer):
    return tokenizer.encode(ALLOWED_TEXT)  # 6 tokens; <|end|> is always allowed too


@pytest.fixture(scope="module")
def f32_dir(tiny_model_dir, tmp_path_factory):
    return _export_copy(tiny_model_dir, tmp_path_factory.mktemp("onnx-f32") / "m", "float32")


@pytest.fixture(scope="module")
def vocab_engines(tiny_model_dir, tiny_rewriter, allowed, tmp_path_factory):
    """(float32 ONNX, int8 ONNX, PyTorch) engines of the tiny model restricted to 6 words, so
    prompts do end; the int8 one has its PyTorch fallback."""
    root = tmp_path_factory.mktemp("onnx-vocab")
    f32, i8 = (_export_copy(tiny_model_dir, root / q, q, allowed) for q in ("float32", "int8"))
    torch_rw = Rewriter(tiny_rewriter.model, tiny_rewriter.tokenizer, tiny_rewriter.meta,
                        output_vocab=allowed)  # the same weights, read only
    return load_onnx_rewriter(f32, intra_threads=1), load_onnx_rewriter(i8), torch_rw


@pytest.fixture(scope="module")
def int4_dir(tiny_model_dir, allowed, tmp_path_factory):
    """The tiny model restricted to the same 6 words, exported with 4-bit weights."""
    return _export_copy(tiny_model_dir, tmp_path_factory.mktemp("onnx-int4") / "m", "int4",
                        allowed)


def test_float32_greedy_equals_pytorch_in_padded_batches(f32_dir, vocab_engines,
                                                              tiny_rewriter):
    onnx = load_onnx_rewriter(f32_dir, intra_threads=1)
    assert isinstance(onnx, OnnxRewriter) and onnx.version == tiny_rewriter.version
    # ITEMS: inputs of 4 to 12 tokens in one batch, so most rows are padded (ONNX Runtime
    # pads on the right, PyTorch on the left)
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (onnx, tiny_rewriter))
    assert _same(got, want)
    # random weights hardly ever pick <|end|> among 50k tokens: prompts ran to the budget
    assert any("truncated to CLIP's 77-token window" in g[0].problems for g in got)

    onnx, _, torch_rw = vocab_engines  # these prompts end, at different steps
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (onnx, torch_rw))
    assert _same(got, want) and any(g[0].valid for g in got)
    assert len({len(g[0].prompt) for g in got}) > 1  # rows left the batch at different steps
    for item, row in zip(ITEMS, got):  # each input alone (no padding) gives its batched prompt
        assert _same(onnx.rewrite_batch([item], decoding="greedy"), [row])


@pytest.mark.parametrize("activation, tied", [("gelu", True), ("gelu_new", False)])
def test_graph_matches_torch_for_erf_gelu_and_an_untied_output_layer(tmp_path, activation,
                                                                      tied):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rewriters.onnx_graph import check_graph, write_graph

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0, activation_function=activation, tie_word_embeddings=tied)).eval()
    columns = np.arange(0, 300, 3)
    write_graph(model, columns, tmp_path / "g.onnx")
    assert check_graph(model, columns, tmp_path / "g.onnx") < 1e-5  # raises beyond 1e-3


def test_kv_decoder_rows_continue_as_if_alone(f32_dir):
    """Right padding, rows of other lengths, and ``select`` (dropping and repeating rows) give
    each row the logits it gets decoded alone."""
    onnx = load_onnx_rewriter(f32_dir, intra_threads=1)
    rows, nxt = [[5, 6, 7, 8, 9], [11, 12]], np.array([21, 22])

    def alone(seq, steps):
        dec = onnx.decoder()
        out = dec.prefill([seq], onnx.end_id, len(steps))
        for t in steps:
            out = dec.step(np.array([t]))
        return out[0]

    dec = onnx.decoder()
    first = dec.prefill(rows, onnx.end_id, 3)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(first[i], alone(r, []), atol=1e-5)
    dec.step(nxt)
    dec.select(np.array([1, 1, 0]))  # row 1 twice (n draws), then row 0
    last = dec.step(np.array([31, 32, 33]))
    np.testing.assert_allclose(last[0], alone(rows[1], [22, 31]), atol=1e-5)
    np.testing.assert_allclose(last[1], alone(rows[1], [22, 32]), atol=1e-5)
    np.testing.assert_allclose(last[2], alone(rows[0], [21, 33]), atol=1e-5)
    assert dec.lengths.tolist() == [4, 4, 7]
    dec.step(np.array([1, 2, 3]))  # the third and last step of the budget
    with pytest.raises(ModelError, match="KV cache holds 8 positions, a row needs 9"):
        dec.step(np.array([1, 2, 3]))


def _check_outputs(outs, n, tokenizer, allowed):
    words = set(tokenizer.decode(allowed).replace(",", " ,").split())
    for group in outs:
        assert len(group) == n
        for r in group:  # no leaked command token; a random model may run out of its budget
            assert r.valid or r.problems in (("empty output",),  # <|end|> came first
                                             ("no end token within the token budget",)), \
                r.problems
            assert "<|" not in r.prompt and "\n" not in r.prompt
            assert set(r.prompt.replace(",", " ,").split()) <= words
            ids = tokenizer.encode(" " + r.prompt)
            grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
            assert len(grams) == len(set(grams)), r.prompt  # the 3-gram ban held


@pytest.mark.parametrize("which", [0, 1, "int4"], ids=["float32", "int8", "int4"])
def test_sampled_output_obeys_the_commands(vocab_engines, int4_dir, tokenizer, allowed, which):
    if which == "int4":
        import onnx as onnx_lib

        onnx = load_onnx_rewriter(int4_dir, fallback=False)
        graph = onnx_lib.load(int4_dir / ONNX_DIR / "model.onnx").graph
        ops = {n.op_type for n in graph.node}  # 4-bit matrix products, 8-bit embedding tables
        assert {"MatMulNBits", "GroupQueryAttention"} <= ops and "MatMul" not in ops
        tables = {i.name: i.data_type for i in graph.initializer if i.name.startswith("wte")}
        assert "wte" not in tables and tables["wte_quantized"] in (2, 3)  # uint8 / int8
        assert onnx.export["quantization"] == "int4"
    else:
        onnx = vocab_engines[which]
    outs = onnx.rewrite_batch(ITEMS, n=6, decoding="sample")
    _check_outputs(outs, 6, tokenizer, allowed)
    assert sum(r.valid for g in outs for r in g) >= 15  # of 30; P(<|end|> first) ~ 1/7
    assert len({r.prompt for g in outs for r in g}) > 6  # n draws per item differ
    greedy = onnx.rewrite_batch(ITEMS, decoding="greedy")
    _check_outputs(greedy, 1, tokenizer, allowed)
    assert onnx._fallback is None  # served by ONNX Runtime alone


def test_seeded_sampling_is_reproducible_on_onnx(vocab_engines):
    onnx = vocab_engines[1]
    assert onnx.fallback_reason(False, "sample", seed=3) is None
    runs = [onnx.rewrite_batch(ITEMS, n=3, seed=s) for s in (4, 4, 5)]
    assert _same(runs[0], runs[1]) and not _same(runs[0], runs[2])
    assert onnx._fallback is None


def test_sampling_draws_from_the_pytorch_distribution(vocab_engines, tokenizer, allowed):
    """First-token frequencies from ONNX vs the exact masked, warped PyTorch softmax."""
    import torch

    onnx, _, torch_rw = vocab_engines
    item = ("x", Command("template", 5, 4))
    with torch.no_grad():
        logits = torch_rw.model(torch.tensor([torch_rw.encode_input(*item)])).logits[0, -1]
    probs = torch.softmax(logits.masked_fill(torch_rw.banned, float("-inf")) / 0.8, -1)
    # top_p=1 keeps every allowed token; 600 draws give each frequency a std below 0.02
    outs = onnx.rewrite_batch([item], n=600, temperature=0.8, top_p=1.0, seed=0)[0]
    texts = {t: tokenizer.decode([t]).strip() for t in allowed}  # no text prefixes another
    first = [next((t for t, text in texts.items() if r.prompt.startswith(text)), torch_rw.end_id)
             for r in outs]
    for tok, p in enumerate(probs.tolist()):
        if p > 0.01:
            assert abs(first.count(tok) / len(first) - p) < 0.08, (tok, p)
    assert set(first) <= set(torch.nonzero(probs).flatten().tolist())


def test_nucleus_keeps_what_transformers_keeps():
    import torch
    from transformers import TopPLogitsWarper

    # probabilities 0.5, 0.3, 0.15, 0.05; top_p 0.75: 0.5 and 0.3 stay (0.5 < 0.75 before the
    # second), 0.15 goes (0.8 before it); the most probable token always stays
    scores = np.log(np.array([[0.15, 0.5, 0.05, 0.3]] * 4000))
    draws = sample_nucleus(scores, 0.75, np.random.default_rng(0))
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).mean() - 0.5 / 0.8) < 0.03  # renormalised over the nucleus
    assert set(sample_nucleus(scores[:50], 0.1, np.random.default_rng(0)).tolist()) == {1}

    rng = np.random.default_rng(1)  # wide rows take the top-k path and its widening
    scores = rng.normal(size=(40, 3000)) * 3
    scores[:, ::7] = -np.inf  # banned tokens
    warped = TopPLogitsWarper(0.9)(None, torch.from_numpy(scores))
    for _ in range(5):
        picks = sample_nucleus(scores, 0.9, rng)
        assert np.isfinite(warped.numpy()[np.arange(40), picks]).all()


def test_strict_length_and_beam_run_on_pytorch(vocab_engines, tiny_model_dir, allowed,
                                               tmp_path):
    _, onnx, torch_rw = vocab_engines
    assert onnx.fallback_reason(True, "sample") and onnx.fallback_reason(False, "beam")
    assert onnx.fallback_reason(False, "greedy") is None
    assert onnx._fallback is None
    got = onnx.rewrite_batch(ITEMS[:3], strict_length=True, decoding="greedy")
    assert isinstance(onnx._fallback, Rewriter)  # loaded on first need
    for (_, cmd), (r,) in zip(ITEMS, got):
        assert r.valid and r.words == cmd.length, r.problems  # 7, 12 and 20 words
    assert _same(onnx.rewrite_batch(ITEMS[:1], n=2, decoding="beam"),
                 torch_rw.rewrite_batch(ITEMS[:1], n=2, decoding="beam"))

    path = tmp_path / "m"
    _export_copy(tiny_model_dir, path, "int8", allowed)
    no_fallback = load_onnx_rewriter(path, fallback=False)
    with pytest.raises(ConfigError, match="needs the PyTorch engine.*load_onnx_rewriter"):
        no_fallback.rewrite("cabin", "image", 5, strict_length=True)
    with pytest.raises(ConfigError, match="temperature 0 must be > 0"):
        no_fallback.rewrite("cabin", "image", 5, temperature=0)


@pytest.fixture(scope="module")
def ranked_dir(tokenizer, allowed, tmp_path_factory):
    """A model that ignores its input: fixed logits ranking " red" > " blue" > ... > <|end|>
    (see test_fast.ranked_model), so greedy prompts are known under the 3-gram ban."""
    path = tmp_path_factory.mktemp("onnx-ranked") / "m"
    ranked_model(tokenizer, allowed, path, allowed)
    export_onnx(path, quantization="float32")
    return path


def test_trigram_ban_sees_generated_tokens_only(ranked_dir):
    # the query "x y red red red" must not stop the prompt from starting "red red red"
    items = [("a", Command("template", 5, 4)), ("x y red red red", Command("template", 9, 4))]
    want = load_rewriter(ranked_dir).rewrite_batch(items, decoding="greedy")
    assert [g[0].prompt.split()[:4] for g in want] == [["red", "red", "red", "blue"]] * 2
    assert _same(load_onnx_rewriter(ranked_dir).rewrite_batch(items, decoding="greedy"), want)


def test_export_problem_reports_missing_and_stale_exports(tiny_model_copy):
    assert onnx_export_problem(tiny_model_copy).startswith("no ONNX export in")
    with pytest.raises(ModelError, match="no ONNX export .*udrl export"):
        load_onnx_rewriter(tiny_model_copy)
    out = export_onnx(tiny_model_copy, quantization="int8")
    assert out == tiny_model_copy / ONNX_DIR and onnx_export_problem(tiny_model_copy) is None
    info = json.loads((out / "udrl_export.json").read_text())
    assert info["quantization"] == "int8" and info["float32_max_diff"] < 1e-3
    assert info["vocab_rows"] == 50344 and info["n_positions"] == 128 and info["onnxruntime"]

    (out / "model.onnx").rename(out / "moved.onnx")
    assert "incomplete: model.onnx missing" in onnx_export_problem(tiny_model_copy)
    (out / "moved.onnx").rename(out / "model.onnx")
    meta = json.loads((tiny_model_copy / "udrl.json").read_text())
    meta["version"] = "20990101T000000Z-retrained"  # the model changed after the export
    (tiny_model_copy / "udrl.json").write_text(json.dumps(meta))
    assert "is stale: made from model version" in onnx_export_problem(tiny_model_copy)
    with pytest.raises(ModelError, match="stale.*udrl export"):
        load_onnx_rewriter(tiny_model_copy)


def test_export_keeps_a_current_export_and_refuses_others_without_force(tiny_model_copy,
                                                                        allowed):
    out = export_onnx(tiny_model_copy, quantization="float32")
    stamp = (out / "udrl_export.json").stat().st_mtime_ns
    assert export_onnx(tiny_model_copy, quantization="float32") == out  # current: kept
    assert (out / "udrl_export.json").stat().st_mtime_ns == stamp
    with pytest.raises(ModelError, match="not a current int8 export.*force=True"):
        export_onnx(tiny_model_copy)  # another quantization
    export_onnx(tiny_model_copy, force=True)
    assert json.loads((out / "udrl_export.json").read_text())["quantization"] == "int8"

    # same version, other bans (output_vocab.json edited): the kept output rows would be wrong
    (tiny_model_copy / "output_vocab.json").write_text(json.dumps(allowed))
    with pytest.raises(ModelError, match="bans other tokens.*udrl export"):
        load_onnx_rewriter(tiny_model_copy)
    with pytest.raises(ModelError, match="not a current int8 export"):
        export_onnx(tiny_model_copy)
    assert not [p for p in tiny_model_copy.iterdir() if p.name.startswith(".onnx")]


def test_failed_export_leaves_the_previous_one_and_no_debris(tiny_model_copy, monkeypatch):
    from rewriters import onnx_graph

    out = export_onnx(tiny_model_copy, quantization="float32")
    monkeypatch.setattr(onnx_graph, "_MAX_DIFF", -1.0)  # every graph now "differs from torch"
    with pytest.raises(ModelError, match="logits differ from torch"):
        export_onnx(tiny_model_copy, force=True)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_graph, "write_graph", boom)
    with pytest.raises(ModelError, match="ONNX export of .* failed: RuntimeError: disk full"):
        export_onnx(tiny_model_copy, force=True)
    assert [p.name for p in tiny_model_copy.iterdir() if "onnx" in p.name] == [ONNX_DIR]
    info = json.loads((out / "udrl_export.json").read_text())
    assert info["quantization"] == "float32" and onnx_export_problem(tiny_model_copy) is None


@pytest.fixture
def torch_stub(monkeypatch):
    """The PyTorch loader as seen by the engine choice, replaced by a cheap marker."""
    from rewriters import fast

    monkeypatch.setattr(fast, "load_rewriter", lambda path, **kw: "torch engine")
    return "torch engine"


def test_auto_prefers_onnx_then_ctranslate2_then_torch(tiny_model_copy, torch_stub, caplog):
    caplog.set_level(logging.INFO, logger="rewriters.fast")
    assert load_engine(tiny_model_copy) == torch_stub
    assert "torch (onnx: no ONNX export" in caplog.text and "ctranslate2: no CTranslate2" in \
        caplog.text
    export_ctranslate2(tiny_model_copy)
    assert isinstance(load_engine(tiny_model_copy), FastRewriter)
    assert "rewriter engine: ctranslate2 (onnx: no ONNX export" in caplog.text
    export_onnx(tiny_model_copy)
    assert isinstance(load_engine(tiny_model_copy, intra_threads=1), OnnxRewriter)
    assert isinstance(load_engine(tiny_model_copy, "onnx"), OnnxRewriter)
    assert isinstance(load_engine(tiny_model_copy, "ctranslate2"), FastRewriter)
    assert load_engine(tiny_model_copy, "torch") == torch_stub
    with pytest.raises(ConfigError, match="onnx engine runs on cpu only"):
        load_engine(tiny_model_copy, "onnx", device="cuda")
    with pytest.raises(ConfigError, match="engine 'tvm'; allowed: auto, onnx, ctranslate2, torch"):
        load_engine(tiny_model_copy, "tvm")

    shutil.rmtree(tiny_model_copy / "ctranslate2")
    meta = json.loads((tiny_model_copy / "udrl.json").read_text())
    meta["version"] = "20990101T000000Z-retrained"  # both exports now stale
    (tiny_model_copy / "udrl.json").write_text(json.dumps(meta))
    assert load_engine(tiny_model_copy) == torch_stub
    with pytest.raises(ConfigError,
                       match="unknown quantization 'int3'; allowed: int8, int4, float32"):
        export_onnx(tiny_model_copy, quantization="int3")


def test_serving_path_never_imports_torch(f32_dir):
    code = (
        "import sys; from rewriters.fast import load_engine\n"
        "from rewriters.onnx_engine import OnnxRewriter\n"
        f"rw = load_engine({str(f32_dir)!r}, intra_threads=1)\n"
        "assert isinstance(rw, OnnxRewriter), type(rw)\n"
        "out = rw.rewrite('snowy cabin', 'image', 40, n=2, seed=1)\n"
        "out += rw.rewrite('snowy cabin', 'template', 5, decoding='greedy')\n"
        "assert len(out) == 3 and 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_length_markers_are_handled_the_same_by_both_engines(tiny_model_dir, tmp_path,
                                                             tokenizer, allowed):
    """A model that writes <|r=k|> markers: both engines may emit them and strip them alike."""
    dst = tmp_path / "m"
    marks = marker_model(tiny_model_dir, dst, tokenizer, allowed)
    export_onnx(dst, quantization="float32")
    onnx, torch_rw = load_onnx_rewriter(dst), load_rewriter(dst)
    assert set(marks) <= set(onnx.columns.tolist())  # markers may be emitted
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (onnx, torch_rw))
    assert _same(got, want)
    sampled = onnx.rewrite_batch(ITEMS, n=4, seed=0)
    texts = [r.prompt for g in got + sampled for r in g]
    assert not any("<|" in t for t in texts)  # stripped, never leaked
