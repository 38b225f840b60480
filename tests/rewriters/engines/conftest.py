"""Engine-test fixtures: the tiny model's exports for every serving engine, built once."""

from __future__ import annotations

import pytest

from rewriters.engines import load_engine
from rewriters.engines.torch_engine import Rewriter

from .helpers import ALLOWED_TEXT, export_copy


@pytest.fixture(scope="session")
def allowed(tokenizer):
    return tokenizer.encode(ALLOWED_TEXT)


@pytest.fixture(scope="session")
def f32_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with float32 exports for every serving engine."""
    return export_copy(tiny_model_dir, tmp_path_factory.mktemp("f32") / "m", "float32")


@pytest.fixture(scope="session")
def vocab_dirs(tiny_model_dir, tmp_path_factory, allowed):
    """{quantization: dir} of the tiny model restricted to 6 words (so prompts do end),
    exported for every serving engine (int4: ONNX Runtime only)."""
    root = tmp_path_factory.mktemp("vocab")
    dirs = {q: export_copy(tiny_model_dir, root / q, q, allowed) for q in ("float32", "int8")}
    dirs["int4"] = export_copy(tiny_model_dir, root / "int4", "int4", allowed, engines=("onnx",))
    return dirs


@pytest.fixture(scope="session")
def torch_vocab(tiny_rewriter, allowed):
    """The PyTorch engine of the restricted model (the same weights, read only)."""
    return Rewriter(tiny_rewriter.model, tiny_rewriter.tokenizer, tiny_rewriter.meta,
                    output_vocab=allowed)


@pytest.fixture(scope="session")
def vocab_engines(vocab_dirs):
    """{(engine, quantization): loaded engine} of the restricted model, loaded once."""
    import ctranslate2

    ctranslate2.set_random_seed(0)  # seeds the worker threads these generators will start
    out = {(e, q): load_engine(vocab_dirs[q], e, intra_threads=1 if q == "float32" else 0)
           for e in ("onnx", "ctranslate2") for q in ("float32", "int8")}
    out["onnx", "int4"] = load_engine(vocab_dirs["int4"], "onnx")
    return out


@pytest.fixture
def torch_stub(monkeypatch):
    """The PyTorch engine as the registry loads it, replaced by a cheap marker."""
    import dataclasses

    from rewriters import engines

    spec = dataclasses.replace(engines.ENGINES["torch"], load=lambda path, opts: "torch engine")
    monkeypatch.setitem(engines.ENGINES, "torch", spec)
    return "torch engine"
