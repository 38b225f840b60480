"""The engine registry: ``auto``'s choice, names and options, and each engine's constants."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest

from rewriters import engines
from rewriters.engines import ENGINE_CHOICES, ENGINES, export_engine, load_engine
from rewriters.engines.ctranslate2_engine import CTranslate2Rewriter
from rewriters.engines.onnx_engine import OnnxRewriter
from rewriters.errors import ConfigError, ModelError


def test_listing_the_engines_loads_none_of_them():
    import subprocess

    code = ("import sys; from rewriters.engines import ENGINES, exporting_engines\n"
            "assert exporting_engines() == ('onnx', 'ctranslate2')\n"
            "assert not {'torch', 'onnxruntime', 'ctranslate2'} & set(sys.modules), "
            "sorted({'torch', 'onnxruntime', 'ctranslate2'} & set(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_registry_states_what_each_engine_module_says():
    from rewriters.engines import ctranslate2_engine, onnx_engine

    assert ENGINES["onnx"].quantizations == onnx_engine.ONNX_QUANTIZATIONS
    assert ENGINES["onnx"].export_dir == onnx_engine.ONNX_DIR
    assert ENGINES["ctranslate2"].quantizations == ctranslate2_engine.CT2_QUANTIZATIONS
    assert ENGINES["ctranslate2"].export_dir == ctranslate2_engine.CT2_DIR
    assert ENGINE_CHOICES == ("auto", "onnx", "ctranslate2", "torch")


def test_auto_prefers_onnx_then_ctranslate2_then_torch(tiny_model_copy, torch_stub, caplog):
    caplog.set_level(logging.INFO, logger="rewriters.engines")
    assert load_engine(tiny_model_copy) == torch_stub
    assert "torch (onnx: no ONNX export" in caplog.text
    assert "ctranslate2: no CTranslate2 export" in caplog.text
    export_engine("ctranslate2", tiny_model_copy)
    assert isinstance(load_engine(tiny_model_copy), CTranslate2Rewriter)
    assert "rewriter engine: ctranslate2 (onnx: no ONNX export" in caplog.text
    export_engine("onnx", tiny_model_copy)
    assert isinstance(load_engine(tiny_model_copy, intra_threads=1), OnnxRewriter)
    assert isinstance(load_engine(tiny_model_copy, "onnx"), OnnxRewriter)
    assert isinstance(load_engine(tiny_model_copy, "ctranslate2"), CTranslate2Rewriter)
    assert load_engine(tiny_model_copy, "torch") == torch_stub

    shutil.rmtree(tiny_model_copy / "ctranslate2")
    meta = json.loads((tiny_model_copy / "udrl.json").read_text())
    meta["version"] = "20990101T000000Z-retrained"  # the export is now stale
    (tiny_model_copy / "udrl.json").write_text(json.dumps(meta))
    assert load_engine(tiny_model_copy) == torch_stub


def test_bad_names_and_devices_list_the_allowed_values(tiny_model_copy, tmp_path):
    with pytest.raises(ConfigError, match="engine 'tvm'; allowed: auto, onnx, ctranslate2, torch"):
        load_engine(tiny_model_copy, "tvm")
    with pytest.raises(ConfigError, match="engine 'torch'; allowed: onnx, ctranslate2"):
        export_engine("torch", tiny_model_copy)
    with pytest.raises(ConfigError, match="onnx engine runs on cpu only.*'ctranslate2' or"):
        load_engine(tiny_model_copy, "onnx", device="cuda")
    with pytest.raises(ModelError, match="does not exist"):
        load_engine(tmp_path / "nope")


def test_auto_passes_over_onnx_on_another_device(tiny_model_copy, torch_stub, caplog):
    caplog.set_level(logging.INFO, logger="rewriters.engines")
    export_engine("onnx", tiny_model_copy)
    assert load_engine(tiny_model_copy, device="cuda") == torch_stub
    assert "onnx: runs on cpu only, not cuda" in caplog.text


def test_auto_passes_over_an_export_that_fails_to_load(tiny_model_copy, torch_stub, caplog,
                                                       monkeypatch):
    import dataclasses

    def broken(path, opts):
        raise ModelError("cannot load the ONNX model: truncated")

    export_engine("onnx", tiny_model_copy)
    monkeypatch.setitem(engines.ENGINES, "onnx",
                        dataclasses.replace(engines.ENGINES["onnx"], load=broken))
    caplog.set_level(logging.INFO, logger="rewriters.engines")
    assert load_engine(tiny_model_copy) == torch_stub
    assert "onnx: cannot load the ONNX model: truncated" in caplog.text
