"""The CTranslate2 engine against the PyTorch one on the same tiny random-weight models."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewriters.commands import Command
from rewriters.errors import ConfigError, ModelError
from rewriters.fast import (
    EXPORT_DIR,
    FastRewriter,
    clip_token_count_light,
    export_ctranslate2,
    export_problem,
    load_engine,
    load_fast_rewriter,
)
from rewriters.generate import Rewriter, clip_token_count

# Short and long queries in one batch (CTranslate2 feeds the tails of the longer inputs through
# its decoding loop), both tasks, and image prompts long enough to be cut to CLIP's window.
ITEMS = [("cozy cabin", Command("template", 7, 4)),
         ("a", Command("image", 12, 2)),
         ("holiday sale poster with bold red letters", Command("template", 20, 1)),
         ("snowy mountain at dawn", Command("image", 40, 0)),
         ("minimal", Command("template", 3, 3))]
ALLOWED_TEXT = " red blue green cabin, snow"


def _export_copy(src: Path, dst: Path, quantization: str, output_vocab=None) -> Path:
    shutil.copytree(src, dst)
    if output_vocab is not None:
        (dst / "output_vocab.json").write_text(json.dumps(sorted(output_vocab)))
    export_ctranslate2(dst, quantization=quantization)
    return dst


@pytest.fixture(scope="module")
def allowed(tokenizer):
    return tokenizer.encode(ALLOWED_TEXT)  # 6 tokens; <|end|> is always allowed too


@pytest.fixture(scope="module")
def f32_dir(tiny_model_dir, tmp_path_factory):
    return _export_copy(tiny_model_dir, tmp_path_factory.mktemp("f32") / "m", "float32")


@pytest.fixture(scope="module")
def small_vocab_dirs(tiny_model_dir, tmp_path_factory, allowed):
    """(float32, int8) exports of the tiny model restricted to 6 words, so prompts do end."""
    root = tmp_path_factory.mktemp("vocab")
    return tuple(_export_copy(tiny_model_dir, root / q, q, allowed) for q in ("float32", "int8"))


@pytest.fixture(scope="module")
def vocab_engines(small_vocab_dirs, tiny_rewriter, allowed):
    """(float32 fast, int8 fast, PyTorch) engines of the restricted model, loaded once."""
    import ctranslate2

    ctranslate2.set_random_seed(0)  # seeds the worker threads these generators will start
    f32, i8 = small_vocab_dirs
    torch_rw = Rewriter(tiny_rewriter.model, tiny_rewriter.tokenizer, tiny_rewriter.meta,
                        output_vocab=allowed)  # the same weights, read only
    return load_fast_rewriter(f32, compute_type="float32"), load_fast_rewriter(i8), torch_rw


def _same(a, b) -> bool:
    """Two engines' rewrite_batch results agree: text, length, validity and problems."""
    def rows(outs):
        return [[(r.prompt, r.words, r.valid, r.problems) for r in g] for g in outs]

    return rows(a) == rows(b)


def test_float32_greedy_equals_pytorch(f32_dir, vocab_engines, tiny_rewriter):
    fast = load_fast_rewriter(f32_dir, compute_type="float32", intra_threads=1)
    assert isinstance(fast, FastRewriter) and fast.version == tiny_rewriter.version
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (fast, tiny_rewriter))
    assert _same(got, want)
    # random weights hardly ever pick <|end|> among 50k tokens: prompts ran to the budget
    assert any("truncated to CLIP's 77-token window" in g[0].problems for g in got)
    for item in ITEMS[:2]:  # batching (and its shared budget) changes nothing
        assert _same(fast.rewrite_batch([item], decoding="greedy"),
                     tiny_rewriter.rewrite_batch([item], decoding="greedy"))

    fast, _, torch_rw = vocab_engines  # these prompts end: <|end|> is one of 7 allowed tokens
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (fast, torch_rw))
    assert _same(got, want) and any(g[0].valid for g in got)


def ranked_model(tokenizer, ranking: list[int], path: Path, output_vocab: list[int],
                 marker_every: int = 0, marker_tail: int = 0):
    """Save at ``path`` a model that ignores its input: fixed logits ranking the ids of
    ``ranking`` first to last, then <|end|> (unless ranked), so greedy prompts are known.

    Returns:
        (the torch model, its saved RewriterMeta)
    """
    import torch

    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir

    model = build_model("scratch", tokenizer, MODEL_PRESETS["tiny"])
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():  # final hidden state = e0, so logits = column 0 of the tied embedding
        ln_f = model.transformer.ln_f
        ln_f.weight.zero_()
        ln_f.bias.zero_()
        ln_f.bias[0] = 1.0
        column = model.transformer.wte.weight[:, 0]
        column.zero_()
        for rank, tok in enumerate([*ranking] + [end_id] * (end_id not in ranking)):
            column[tok] = 8.0 - rank
    meta = save_model_dir(path, model, tokenizer, RewriterMeta(
        version="unsaved", base_model="scratch", model_config={},
        bucket_edges=[0.1, 0.2, 0.3, 0.4], scorer="lexical", marker_every=marker_every,
        marker_tail=marker_tail), output_vocab=output_vocab)
    return model, meta


@pytest.fixture(scope="module")
def ranked_engines(tokenizer, allowed, tmp_path_factory):
    """(float32 fast, PyTorch) engines of a model ranking " red" > " blue" > " green" >
    " cabin" > "," > " snow" > <|end|> whatever the input ("red red red blue red red green ..."
    under the 3-gram ban)."""
    path = tmp_path_factory.mktemp("ranked") / "m"
    model, meta = ranked_model(tokenizer, allowed, path, allowed)
    export_ctranslate2(path, quantization="float32")
    return (load_fast_rewriter(path, compute_type="float32"),
            Rewriter(model, tokenizer, meta, output_vocab=allowed))


def test_query_tails_in_mixed_batches_do_not_change_the_3gram_ban(ranked_engines, monkeypatch):
    # Next to "a", the input "x y red red red" runs its tail "red red red <|prompt|>" through
    # CTranslate2's decoding loop, whose 3-gram ban alone then forbids "red" after "red red":
    # the prompt would start "red red blue". That row is regenerated from that step.
    # (Equal lengths: CTranslate2 batches only inputs whose token budgets are equal.)
    fast, torch_rw = ranked_engines
    items = [("a", Command("template", 9, 4)), ("x y red red red", Command("template", 9, 4))]
    want = torch_rw.rewrite_batch(items, decoding="greedy")
    assert [g[0].prompt.split()[:4] for g in want] == [["red", "red", "red", "blue"]] * 2
    assert _same(fast.rewrite_batch(items, decoding="greedy"), want)
    monkeypatch.setattr(FastRewriter, "_redo_extra_bans", lambda *a: None)
    got = fast.rewrite_batch(items, decoding="greedy")  # what the regeneration fixes:
    assert got[1][0].prompt.startswith("red red blue") and _same(got[:1], want[:1])


def test_first_extra_ban_finds_pairs_inside_the_query_tail():
    import numpy as np

    from rewriters.fast import _first_extra_ban

    banned = np.zeros(20, dtype=bool)
    banned[9] = True
    # 1 = <|prompt|>. Extra bans: 7 after (5,6), 5 after (6,7), 8 after (5,9); none after
    # (7,5) (9 is banned anyway) or (9,8) (<|prompt|> is never emitted)
    tail = [5, 6, 7, 5, 9, 8, 1]
    assert _first_extra_ban(tail, [2, 5, 6, 3], banned) == 3  # choosing seq[3] after "5 6"
    assert _first_extra_ban(tail, [6, 7, 2], banned) == 2
    assert _first_extra_ban(tail, [7, 5, 2, 9, 8, 3], banned) is None
    assert _first_extra_ban(tail, [2, 5, 9, 3], banned) == 3
    assert _first_extra_ban(tail, [5, 6], banned) is None  # nothing chosen after the pair
    assert _first_extra_ban([], [5, 6, 7, 5, 6], banned) is None  # the shortest input


def test_int8_output_obeys_the_commands(vocab_engines, tokenizer, allowed):
    fast = vocab_engines[1]
    assert "int8" in fast.generator.compute_type
    outs = fast.rewrite_batch(ITEMS, n=6, decoding="sample")
    words = set(tokenizer.decode(allowed).replace(",", " ,").split())
    for group in outs:
        assert len(group) == 6
        for r in group:  # ended within the budget, no leaked command token
            assert r.valid or r.problems == ("empty output",), r.problems  # <|end|> came first
            assert "<|" not in r.prompt and "\n" not in r.prompt
            assert set(r.prompt.replace(",", " ,").split()) <= words
            ids = tokenizer.encode(" " + r.prompt)
            grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
            assert len(grams) == len(set(grams)), r.prompt  # the 3-gram ban held
    assert sum(r.valid for g in outs for r in g) >= 15  # of 30; P(<|end|> first) ~ 1/7


def test_strict_length_beam_and_seeds_run_on_pytorch(vocab_engines, small_vocab_dirs):
    _, fast, torch_rw = vocab_engines
    assert fast.fallback_reason(True, "sample") and fast.fallback_reason(False, "beam")
    assert fast.fallback_reason(False, "sample", seed=3)
    assert fast.fallback_reason(False, "greedy", seed=3) is None
    assert fast.fallback_reason(False, "sample") is None
    got = fast.rewrite_batch(ITEMS, strict_length=True, decoding="greedy")
    assert _same(got, torch_rw.rewrite_batch(ITEMS, strict_length=True, decoding="greedy"))
    for (_, cmd), (r,) in zip(ITEMS, got):
        assert r.valid and r.words == cmd.length, r.problems
    assert _same(fast.rewrite_batch(ITEMS[:2], n=2, decoding="beam"),
                 torch_rw.rewrite_batch(ITEMS[:2], n=2, decoding="beam"))
    assert _same(fast.rewrite_batch(ITEMS[:2], n=3, decoding="sample", seed=4),  # reproducible
                 torch_rw.rewrite_batch(ITEMS[:2], n=3, decoding="sample", seed=4))

    no_fallback = load_fast_rewriter(small_vocab_dirs[1], fallback=False)
    with pytest.raises(ConfigError, match="needs the PyTorch engine"):
        no_fallback.rewrite("cabin", "image", 5, strict_length=True)
    with pytest.raises(ConfigError, match="unknown decoding 'topk'"):  # checked before routing
        no_fallback.rewrite("cabin", "image", 5, strict_length=True, decoding="topk")


def test_sampling_draws_from_the_pytorch_distribution(vocab_engines, tokenizer, allowed):
    """First-token frequencies from CTranslate2 vs the exact masked, warped PyTorch softmax."""
    import torch

    fast, _, torch_rw = vocab_engines
    item = ("x", Command("template", 5, 4))
    with torch.no_grad():
        logits = torch_rw.model(torch.tensor([torch_rw.encode_input(*item)])).logits[0, -1]
    probs = torch.softmax(logits.masked_fill(torch_rw.banned, float("-inf")) / 0.8, -1)
    # top_p=1 keeps every allowed token; 600 draws give each frequency a std below 0.02
    outs = fast.rewrite_batch([item], n=600, decoding="sample", temperature=0.8, top_p=1.0)[0]
    texts = {t: tokenizer.decode([t]).strip() for t in allowed}  # no text prefixes another
    first = [next((t for t, text in texts.items() if r.prompt.startswith(text)), torch_rw.end_id)
             for r in outs]
    for tok, p in enumerate(probs.tolist()):
        if p > 0.01:
            assert abs(first.count(tok) / len(first) - p) < 0.08, (tok, p)
    assert set(first) <= set(torch.nonzero(probs).flatten().tolist())


@pytest.fixture
def torch_stub(monkeypatch):
    """The PyTorch loader as seen by the engine choice, replaced by a cheap marker."""
    from rewriters import fast

    monkeypatch.setattr(fast, "load_rewriter", lambda path, **kw: "torch engine")
    return "torch engine"


def test_auto_picks_ctranslate2_only_for_a_current_export(tiny_model_copy, torch_stub, allowed):
    assert load_engine(tiny_model_copy) == torch_stub
    assert export_problem(tiny_model_copy).startswith("no CTranslate2 export")
    out = export_ctranslate2(tiny_model_copy, quantization="int8")
    assert out == tiny_model_copy / EXPORT_DIR and export_problem(tiny_model_copy) is None
    assert isinstance(load_engine(tiny_model_copy), FastRewriter)
    assert load_engine(tiny_model_copy, "torch") == torch_stub
    assert export_ctranslate2(tiny_model_copy) == out  # already current: kept as is

    meta = json.loads((tiny_model_copy / "udrl.json").read_text())
    meta["version"] = "20990101T000000Z-retrained"  # the model changed after the export
    (tiny_model_copy / "udrl.json").write_text(json.dumps(meta))
    assert "stale" in export_problem(tiny_model_copy)
    assert load_engine(tiny_model_copy, "auto") == torch_stub
    with pytest.raises(ModelError, match="stale.*udrl export"):
        load_engine(tiny_model_copy, "ctranslate2")
    with pytest.raises(ModelError, match="not a current int8 export.*force=True"):
        export_ctranslate2(tiny_model_copy)
    export_ctranslate2(tiny_model_copy, force=True)
    assert isinstance(load_engine(tiny_model_copy), FastRewriter)

    # same version, other bans (output_vocab.json edited): the baked-in bans would be wrong
    (tiny_model_copy / "output_vocab.json").write_text(json.dumps(allowed))
    with pytest.raises(ModelError, match="bans other tokens.*udrl export"):
        load_fast_rewriter(tiny_model_copy)
    assert load_engine(tiny_model_copy) == torch_stub


def test_padded_embedding_rows_are_named_and_banned(tokenizer, tmp_path):
    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir

    tok = tokenizer
    model = build_model("scratch", tok, MODEL_PRESETS["tiny"])
    model.resize_token_embeddings(len(tok) + 7)  # e.g. a multiple-of-64 pretrained layout
    meta = save_model_dir(tmp_path, model, tok, RewriterMeta(
        version="unsaved", base_model="scratch", model_config={}, bucket_edges=[0.1, 0.2, 0.3, 0.4],
        scorer="lexical"))
    export_ctranslate2(tmp_path, quantization="float32")
    vocab = json.loads((tmp_path / EXPORT_DIR / "vocabulary.json").read_text())
    assert len(vocab) == len(tok) + 7 and vocab[-1] == f"<|udrl_pad_{len(tok) + 6}|>"
    fast = load_fast_rewriter(tmp_path, compute_type="float32")
    torch_rw = Rewriter(model, tok, meta)
    assert fast.banned[len(tok):].all()
    assert _same(fast.rewrite_batch(ITEMS[:3], decoding="greedy"),
                 torch_rw.rewrite_batch(ITEMS[:3], decoding="greedy"))


def test_failed_export_leaves_nothing_behind(tiny_model_copy, monkeypatch):
    from ctranslate2.converters import TransformersConverter

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(TransformersConverter, "convert", boom)
    with pytest.raises(ModelError, match="conversion of .* failed: RuntimeError: disk full"):
        export_ctranslate2(tiny_model_copy)
    assert not [p for p in tiny_model_copy.iterdir() if "ctranslate2" in p.name]


def test_bad_options_list_the_allowed_values(tiny_model_copy, tmp_path):
    with pytest.raises(ConfigError, match="engine 'tvm'; allowed: auto, onnx, ctranslate2, torch"):
        load_engine(tiny_model_copy, "tvm")
    with pytest.raises(ConfigError, match="unknown quantization 'int4'; allowed: int8"):
        export_ctranslate2(tiny_model_copy, quantization="int4")
    with pytest.raises(ConfigError, match="unknown compute_type 'fp8'; allowed: default"):
        load_fast_rewriter(tiny_model_copy, compute_type="fp8")
    with pytest.raises(ModelError, match="no CTranslate2 export .*udrl export"):
        load_fast_rewriter(tiny_model_copy)
    with pytest.raises(ModelError, match="does not exist"):
        load_engine(tmp_path / "nope")


def test_clip_count_without_torch_matches_open_clip(tokenizer):
    rng = random.Random(0)
    texts = ["a cozy cabin", "<start_of_text> hi", "Caf\u00e9 &amp; cr\u00e8me br\u00fbl\u00e9e",
             "2024-12-31 at 10:45pm!!", "emoji \U0001f600\U0001f3d4 snow", "  spaced\tout\n",
             "don't they'll we're", "HTML &lt;b&gt; bold", "\u4e2d\u6587 \u0440\u0443\u0441"]
    texts += [tokenizer.decode([rng.randrange(50257) for _ in range(rng.randint(1, 40))])
              for _ in range(300)]  # what random weights emit: odd pieces, bytes, unicode
    assert [clip_token_count_light(t) for t in texts] == [clip_token_count(t) for t in texts]


def test_serving_path_never_imports_torch(f32_dir):
    code = (
        "import sys; from rewriters.fast import load_fast_rewriter\n"
        f"rw = load_fast_rewriter({str(f32_dir)!r}, intra_threads=1)\n"
        "out = rw.rewrite('snowy cabin', 'image', 40, n=2)\n"
        "assert len(out) == 2 and 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def marker_model(src: Path, dst: Path, tokenizer, allowed) -> list[int]:
    """Copy ``src`` to ``dst`` as a model with length markers (every 5, last 4) that may emit
    ``allowed`` and the markers; returns the markers' ids."""
    from rewriters.commands import MARKER_TOKENS

    shutil.copytree(src, dst)
    meta = json.loads((dst / "udrl.json").read_text())
    meta["marker_every"], meta["marker_tail"] = 5, 4
    (dst / "udrl.json").write_text(json.dumps(meta))
    marks = tokenizer.convert_tokens_to_ids(list(MARKER_TOKENS))
    (dst / "output_vocab.json").write_text(json.dumps(sorted(set(allowed) | set(marks))))
    return marks


def _all_engines_greedy(tokenizer, ranking: list[int], path: Path, every: int, tail: int,
                        items) -> tuple[list, list, list, list]:
    """A ranked marker model on all three engines (float32 exports): greedy results of
    PyTorch, CTranslate2, ONNX Runtime, and of CTranslate2 without its redraw of missed bans."""
    from rewriters.generate import load_rewriter
    from rewriters.onnx_engine import export_onnx, load_onnx_rewriter

    ranked_model(tokenizer, ranking, path, ranking, marker_every=every, marker_tail=tail)
    export_ctranslate2(path, quantization="float32")
    export_onnx(path, quantization="float32")
    fast = load_fast_rewriter(path, compute_type="float32")
    outs = [e.rewrite_batch(items, decoding="greedy")
            for e in (load_rewriter(path), fast, load_onnx_rewriter(path))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FastRewriter, "_redo_missed_bans", lambda *a: None)
        outs.append(fast.rewrite_batch(items, decoding="greedy"))
    return tuple(outs)


def test_a_marker_inside_a_repeated_phrase_is_banned_alike_by_every_engine(tokenizer, allowed,
                                                                            tmp_path):
    """CTranslate2's own 3-gram ban counts length markers, so "red red red <|r=5|> red" passes
    it; PyTorch and ONNX Runtime ban the repeat on the text, and CTranslate2 redraws that step."""
    marker = tokenizer.convert_tokens_to_ids("<|r=5|>")
    ranking = [allowed[0], marker, *allowed[1:]]  # " red" > <|r=5|> > " blue" > ...
    items = [("a", Command("template", 9, 4)), ("snowy cabin", Command("image", 14, 2))]
    want, fast, onnx, no_redraw = _all_engines_greedy(tokenizer, ranking, tmp_path / "m", 5, 4,
                                                      items)
    assert want[0][0].prompt.startswith("red red red blue")  # not "red red red red"
    assert _same(fast, want) and _same(onnx, want)
    assert no_redraw[0][0].prompt.startswith("red red red red")  # what the redraw fixes


def test_the_marker_grammar_is_kept_alike_by_every_engine(tokenizer, allowed, tmp_path):
    """A model ranking " red" > <|end|> > <|r=3|> > <|r=2|> > <|r=1|> > " blue": it would stop
    once the 3-gram ban forbids a fourth "red", but <|end|> must wait for <|r=1|> and its word,
    and markers follow the scheme's order."""
    end_id, r3, r2, r1 = tokenizer.convert_tokens_to_ids(["<|end|>", "<|r=3|>", "<|r=2|>",
                                                           "<|r=1|>"])
    ranking = [allowed[0], end_id, r3, r2, r1, *allowed[1:]]
    items = [("a", Command("template", 4, 4)), ("snowy cabin", Command("image", 30, 0))]
    want, fast, onnx, no_redraw = _all_engines_greedy(tokenizer, ranking, tmp_path / "m", 3, 3,
                                                      items)
    # red red red <|r=3|> <|r=2|> <|r=1|> blue red red <|end|>: a third "red" after "red red"
    # would repeat a 3-gram, and after "<|r=1|>" no marker may follow
    assert [g[0].prompt for g in want] == ["red red red blue red red"] * 2
    assert _same(fast, want) and _same(onnx, want)
    assert [g[0].prompt for g in no_redraw] == ["red red red"] * 2  # CTranslate2 alone ends early


def test_length_markers_are_handled_the_same_by_both_engines(tiny_model_dir, tmp_path,
                                                             tokenizer, allowed):
    """A model that writes <|r=k|> markers: both engines may emit them and strip them alike."""
    from rewriters.generate import load_rewriter

    dst = tmp_path / "m"
    marker_model(tiny_model_dir, dst, tokenizer, allowed)
    export_ctranslate2(dst, quantization="float32")
    fast = load_fast_rewriter(dst, compute_type="float32")
    torch_rw = load_rewriter(dst)
    got, want = (e.rewrite_batch(ITEMS, decoding="greedy") for e in (fast, torch_rw))
    assert _same(got, want)
    texts = [r.prompt for g in got for r in g]
    assert not any("<|" in t for t in texts)  # stripped, never leaked
