"""What only the ONNX Runtime engine has: its graph, KV decoder, nucleus sampling and seeds."""

from __future__ import annotations

import numpy as np
import pytest

from rewriters.engines import Decoding, export_engine, load_engine
from rewriters.engines.onnx_engine import sample_nucleus
from rewriters.errors import ModelError

from .helpers import ITEMS, marker_model, same


@pytest.mark.parametrize("activation, tied", [("gelu", True), ("gelu_new", False)])
def test_graph_matches_torch_for_erf_gelu_and_an_untied_output_layer(tmp_path, activation,
                                                                      tied):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rewriters.engines.onnx_graph import check_graph, write_graph

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
    onnx = load_engine(f32_dir, "onnx", intra_threads=1)
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


def test_seeded_sampling_is_reproducible_on_onnx(vocab_engines):
    onnx = vocab_engines["onnx", "int8"]
    assert onnx.fallback_reason(Decoding(seed=3)) is None
    runs = [onnx.rewrite_batch(ITEMS, n=3, seed=s) for s in (4, 4, 5)]
    assert same(runs[0], runs[1]) and not same(runs[0], runs[2])


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


def test_export_records_its_check_against_torch(f32_dir):
    import json

    info = json.loads((f32_dir / "onnx" / "udrl_export.json").read_text())
    assert info["float32_max_diff"] < 1e-3 and info["onnxruntime"]


def test_a_graph_that_differs_from_torch_is_refused(tiny_model_copy, monkeypatch):
    from rewriters.engines import onnx_graph

    out = export_engine("onnx", tiny_model_copy, quantization="float32")
    monkeypatch.setattr(onnx_graph, "_MAX_DIFF", -1.0)  # every graph now "differs from torch"
    with pytest.raises(ModelError, match="logits differ from torch"):
        export_engine("onnx", tiny_model_copy, force=True)
    assert (out / "model.onnx").is_file()  # the previous export stays


def test_int4_export_holds_4bit_matrices_and_8bit_embeddings(vocab_engines, vocab_dirs):
    import onnx as onnx_lib

    assert vocab_engines["onnx", "int4"].export["quantization"] == "int4"
    graph = onnx_lib.load(vocab_dirs["int4"] / "onnx" / "model.onnx").graph
    ops = {n.op_type for n in graph.node}  # 4-bit matrix products, 8-bit embedding tables
    assert {"MatMulNBits", "GroupQueryAttention"} <= ops and "MatMul" not in ops
    tables = {i.name: i.data_type for i in graph.initializer if i.name.startswith("wte")}
    assert "wte" not in tables and tables["wte_quantized"] in (2, 3)  # uint8 / int8


def test_markers_are_logits_columns(tiny_model_dir, tmp_path, tokenizer, allowed):
    dst = tmp_path / "m"
    marks = marker_model(tiny_model_dir, dst, tokenizer, allowed)
    export_engine("onnx", dst, quantization="float32")
    assert set(marks) <= set(load_engine(dst, "onnx").columns.tolist())  # may be emitted
