"""Every serving engine against the PyTorch one, on the same tiny random-weight models.

One suite, parametrised over the registry's exporting engines: what a caller can observe
(prompts, validity, bans, fallbacks, exports, the torch-free serving path) must not depend on
the engine. What only one engine has is tested in its own module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewriters.commands import Command
from rewriters.engines import (
    ENGINES,
    Decoding,
    Engine,
    export_engine,
    export_problem,
    exporting_engines,
    load_engine,
)
from rewriters.engines.torch_engine import Rewriter, load_rewriter
from rewriters.errors import ConfigError, ModelError

from .helpers import ITEMS, SERVING, marker_model, ranked_model, same

pytestmark = pytest.mark.parametrize("engine", SERVING)


def test_every_exporting_engine_is_in_this_suite(engine):
    assert set(exporting_engines()) == set(SERVING)


def test_float32_greedy_equals_pytorch(engine, f32_dir, vocab_engines, torch_vocab,
                                       tiny_rewriter):
    rw = load_engine(f32_dir, engine, intra_threads=1)
    assert isinstance(rw, Engine) and rw.version == tiny_rewriter.version
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (rw, tiny_rewriter))
    assert same(got, want)
    # random weights hardly ever pick <|end|> among 50k tokens: prompts ran to the budget
    assert any("truncated to CLIP's 77-token window" in g[0].problems for g in got)

    rw = vocab_engines[engine, "float32"]  # these prompts end, at different steps
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (rw, torch_vocab))
    assert same(got, want) and any(g[0].valid for g in got)
    assert len({len(g[0].prompt) for g in got}) > 1
    for item, row in zip(ITEMS, got):  # each input alone gives its batched prompt
        assert same(rw.rewrite_batch([item], decoding="greedy"), [row])


def _obeys_the_commands(outs, n, tokenizer, allowed) -> None:
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


@pytest.mark.parametrize("quantization", ["float32", "int8", "int4"])
def test_output_obeys_the_commands(engine, quantization, vocab_engines, tokenizer, allowed):
    if quantization not in ENGINES[engine].quantizations:
        pytest.skip(f"{engine} has no {quantization} export")
    rw = vocab_engines[engine, quantization]
    outs = rw.rewrite_batch(ITEMS, n=6, decoding="sample")
    _obeys_the_commands(outs, 6, tokenizer, allowed)
    assert sum(r.valid for g in outs for r in g) >= 15  # of 30; P(<|end|> first) ~ 1/7
    assert len({r.prompt for g in outs for r in g}) > 6  # n draws per item differ
    _obeys_the_commands(rw.rewrite_batch(ITEMS, decoding="greedy"), 1, tokenizer, allowed)
    assert rw._fallback is None  # served by the engine alone


def test_sampling_draws_from_the_pytorch_distribution(engine, vocab_engines, torch_vocab,
                                                      tokenizer, allowed):
    """First-token frequencies against the exact masked, warped PyTorch softmax."""
    import torch

    rw = vocab_engines[engine, "float32"]
    item = ("x", Command("template", 5, 4))
    with torch.no_grad():
        logits = torch_vocab.model(torch.tensor([torch_vocab.encode_input(*item)])).logits[0, -1]
    probs = torch.softmax(logits.masked_fill(torch_vocab.banned, float("-inf")) / 0.8, -1)
    # top_p=1 keeps every allowed token; 600 draws give each frequency a std below 0.02
    outs = rw.rewrite_batch([item], n=600, decoding="sample", temperature=0.8, top_p=1.0)[0]
    texts = {t: tokenizer.decode([t]).strip() for t in allowed}  # no text prefixes another
    first = [next((t for t, text in texts.items() if r.prompt.startswith(text)),
                  torch_vocab.end_id) for r in outs]
    for tok, p in enumerate(probs.tolist()):
        if p > 0.01:
            assert abs(first.count(tok) / len(first) - p) < 0.08, (tok, p)
    assert set(first) <= set(torch.nonzero(probs).flatten().tolist())


def test_strict_length_and_beam_run_on_pytorch(engine, vocab_dirs, torch_vocab):
    rw = load_engine(vocab_dirs["int8"], engine)
    assert rw.fallback_reason(Decoding(strict_length=True))
    assert rw.fallback_reason(Decoding(decoding="beam"))
    assert rw.fallback_reason(Decoding(decoding="greedy", seed=3)) is None
    assert rw.fallback_reason(Decoding()) is None
    assert rw._fallback is None
    got = rw.rewrite_batch(ITEMS, strict_length=True, decoding="greedy")
    assert isinstance(rw._fallback, Rewriter)  # loaded on first need
    assert same(got, torch_vocab.rewrite_batch(ITEMS, strict_length=True, decoding="greedy"))
    for (_, cmd), (r,) in zip(ITEMS, got):
        assert r.valid and r.words == cmd.length, r.problems
    assert same(rw.rewrite_batch(ITEMS[:2], n=2, decoding="beam"),
                torch_vocab.rewrite_batch(ITEMS[:2], n=2, decoding="beam"))


def test_without_a_fallback_those_requests_are_refused_after_the_checks(engine, vocab_dirs,
                                                                        monkeypatch):
    module = sys.modules[type(load_engine(vocab_dirs["int8"], engine)).__module__]
    loader = next(getattr(module, n) for n in module.__all__ if n.startswith("load_"))
    rw = loader(vocab_dirs["int8"], fallback=False)
    with pytest.raises(ConfigError, match=f"needs the PyTorch engine.*{loader.__name__}"):
        rw.rewrite("cabin", "image", 5, strict_length=True)
    with pytest.raises(ConfigError, match="unknown decoding 'topk'"):  # checked before routing
        rw.rewrite("cabin", "image", 5, strict_length=True, decoding="topk")
    with pytest.raises(ConfigError, match="temperature 0 must be > 0"):
        rw.rewrite("cabin", "image", 5, temperature=0)
    checks = []  # the request is checked once, not again on the way to the fallback
    original = Decoding.check
    monkeypatch.setattr(Decoding, "check", lambda self: checks.append(self) or original(self))
    rw.rewrite("cabin", "template", 5, decoding="greedy")
    assert len(checks) == 1


def test_trigram_ban_sees_generated_tokens_only(engine, tokenizer, allowed, tmp_path):
    # the query "x y red red red" must not stop the prompt from starting "red red red"
    path = tmp_path / "m"
    ranked_model(tokenizer, allowed, path, allowed)
    export_engine(engine, path, quantization="float32")
    items = [("a", Command("template", 9, 4)), ("x y red red red", Command("template", 9, 4))]
    want = load_rewriter(path).rewrite_batch(items, decoding="greedy")
    assert [g[0].prompt.split()[:4] for g in want] == [["red", "red", "red", "blue"]] * 2
    assert same(load_engine(path, engine).rewrite_batch(items, decoding="greedy"), want)


def test_export_problem_reports_missing_and_stale_exports(engine, tiny_model_copy, allowed):
    label = {"onnx": "ONNX", "ctranslate2": "CTranslate2"}[engine]  # as the messages say
    assert export_problem(engine, tiny_model_copy).startswith(f"no {label} export in")
    with pytest.raises(ModelError, match=f"no {label} export .*udrl export"):
        load_engine(tiny_model_copy, engine)
    out = export_engine(engine, tiny_model_copy, quantization="float32")
    assert out == tiny_model_copy / ENGINES[engine].export_dir
    assert export_problem(engine, tiny_model_copy) is None
    info = json.loads((out / "udrl_export.json").read_text())
    assert info["vocab_rows"] == 50344 and info["n_positions"] == 128
    stamp = (out / "udrl_export.json").stat().st_mtime_ns
    assert export_engine(engine, tiny_model_copy, quantization="float32") == out  # current: kept
    assert (out / "udrl_export.json").stat().st_mtime_ns == stamp
    with pytest.raises(ModelError, match="not a current int8 export.*force=True"):
        export_engine(engine, tiny_model_copy)  # another quantization
    export_engine(engine, tiny_model_copy, force=True)
    assert json.loads((out / "udrl_export.json").read_text())["quantization"] == "int8"

    # same version, other bans (output_vocab.json edited): the baked-in bans would be wrong
    (tiny_model_copy / "output_vocab.json").write_text(json.dumps(allowed))
    with pytest.raises(ModelError, match="bans other tokens.*udrl export"):
        load_engine(tiny_model_copy, engine)
    meta = json.loads((tiny_model_copy / "udrl.json").read_text())
    meta["version"] = "20990101T000000Z-retrained"  # the model changed after the export
    (tiny_model_copy / "udrl.json").write_text(json.dumps(meta))
    assert "is stale: made from model version" in export_problem(engine, tiny_model_copy)
    with pytest.raises(ModelError, match="stale.*udrl export"):
        load_engine(tiny_model_copy, engine)
    assert not [p for p in tiny_model_copy.iterdir() if p.name.startswith(".")]  # no debris


def test_bad_quantization_lists_the_allowed_values(engine, tiny_model_copy):
    allowed = ", ".join(ENGINES[engine].quantizations)
    with pytest.raises(ConfigError, match=f"no quantization 'int3'; allowed: {allowed}"):
        export_engine(engine, tiny_model_copy, quantization="int3")
    assert not (tiny_model_copy / ENGINES[engine].export_dir).exists()


def test_close_releases_the_engine(engine, f32_dir):
    rw = load_engine(f32_dir, engine)
    rw.rewrite("cabin", "template", 5, decoding="greedy")
    rw.close()
    rw.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        rw.rewrite("cabin", "template", 5, decoding="greedy")


def test_serving_path_never_imports_torch(engine, f32_dir):
    code = (
        "import sys; from rewriters.engines import load_engine\n"
        f"rw = load_engine({str(f32_dir)!r}, {engine!r}, intra_threads=1)\n"
        "out = rw.rewrite('snowy cabin', 'image', 40, n=2)\n"
        "out += rw.rewrite('snowy cabin', 'template', 5, decoding='greedy')\n"
        "assert len(out) == 3 and 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_length_markers_are_emitted_and_stripped_alike(engine, tiny_model_dir, tmp_path,
                                                       tokenizer, allowed):
    """A model that writes <|r=k|> markers: the engine may emit them and strips them alike."""
    dst = tmp_path / "m"
    marker_model(tiny_model_dir, dst, tokenizer, allowed)
    export_engine(engine, dst, quantization="float32")
    rw, torch_rw = load_engine(dst, engine), load_rewriter(dst)
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (rw, torch_rw))
    assert same(got, want)
    sampled = rw.rewrite_batch(ITEMS, n=4)
    assert not any("<|" in r.prompt for g in got + sampled for r in g)  # never leaked


def test_a_marker_inside_a_repeated_phrase_is_banned_as_pytorch_bans_it(engine, tokenizer,
                                                                        allowed, tmp_path):
    """CTranslate2's own 3-gram ban counts length markers, so "red red red <|r=5|> red" passes
    it; PyTorch bans the repeat on the text, and every engine must end up the same."""
    marker = tokenizer.convert_tokens_to_ids("<|r=5|>")
    ranking = [allowed[0], marker, *allowed[1:]]  # " red" > <|r=5|> > " blue" > ...
    items = [("a", Command("template", 9, 4)), ("snowy cabin", Command("image", 14, 2))]
    path = tmp_path / "m"
    ranked_model(tokenizer, ranking, path, ranking, marker_every=5, marker_tail=4)
    export_engine(engine, path, quantization="float32")
    want = load_rewriter(path).rewrite_batch(items, decoding="greedy")
    assert want[0][0].prompt.startswith("red red red blue")  # not "red red red red"
    assert same(load_engine(path, engine).rewrite_batch(items, decoding="greedy"), want)


def test_the_marker_grammar_is_kept_as_pytorch_keeps_it(engine, tokenizer, allowed, tmp_path):
    """A model ranking " red" > <|end|> > <|r=3|> > <|r=2|> > <|r=1|> > " blue": it would stop
    once the 3-gram ban forbids a fourth "red", but <|end|> must wait for <|r=1|> and its word,
    and markers follow the scheme's order."""
    end_id, r3, r2, r1 = tokenizer.convert_tokens_to_ids(["<|end|>", "<|r=3|>", "<|r=2|>",
                                                           "<|r=1|>"])
    ranking = [allowed[0], end_id, r3, r2, r1, *allowed[1:]]
    items = [("a", Command("template", 4, 4)), ("snowy cabin", Command("image", 30, 0))]
    path = tmp_path / "m"
    ranked_model(tokenizer, ranking, path, ranking, marker_every=3, marker_tail=3)
    export_engine(engine, path, quantization="float32")
    want = load_rewriter(path).rewrite_batch(items, decoding="greedy")
    # red red red <|r=3|> <|r=2|> <|r=1|> blue red red <|end|>: a third "red" after "red red"
    # would repeat a 3-gram, and after "<|r=1|>" no marker may follow
    assert [g[0].prompt for g in want] == ["red red red blue red red"] * 2
    assert same(load_engine(path, engine).rewrite_batch(items, decoding="greedy"), want)


def test_a_failed_export_leaves_the_previous_one_and_no_debris(engine, tiny_model_copy,
                                                               monkeypatch):
    out = export_engine(engine, tiny_model_copy, quantization="float32")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    if engine == "onnx":
        from rewriters.engines import onnx_graph

        monkeypatch.setattr(onnx_graph, "write_graph", boom)
    else:
        from ctranslate2.converters import TransformersConverter

        monkeypatch.setattr(TransformersConverter, "convert", boom)
    with pytest.raises(ModelError, match="of .* failed: RuntimeError: disk full"):
        export_engine(engine, tiny_model_copy, force=True)
    assert [p.name for p in tiny_model_copy.iterdir()
            if ENGINES[engine].export_dir in p.name] == [ENGINES[engine].export_dir]
    info = json.loads((out / "udrl_export.json").read_text())
    assert info["quantization"] == "float32" and export_problem(engine, tiny_model_copy) is None
