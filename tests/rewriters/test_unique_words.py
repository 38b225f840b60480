"""Models whose training prompts never repeat a word (``RewriterMeta.unique_words``, set by
``train`` for the catalogue teacher's prompts) are banned from repeating one, alike in all three
engines.

The model: ``test_fast.ranked_model``, which ignores its input and ranks " red" > " blue" >
" green" > " cabin" > "," > " snow" > <|end|>. Without the ban, greedy decoding repeats " red"
(up to the 3-gram ban: "red red red blue ..."); with it each word appears once.
"""

from __future__ import annotations

import json

import pytest

from rewriters.commands import Command
from rewriters.fast import export_ctranslate2, load_fast_rewriter
from rewriters.generate import load_rewriter
from rewriters.onnx_engine import export_onnx, load_onnx_rewriter

from .test_fast import ALLOWED_TEXT, _same, ranked_model

ITEMS = [("a", Command("template", 5, 4)), ("snowy cabin", Command("image", 9, 2)),
         ("red red", Command("template", 12, 1))]


def _engines(path):
    export_ctranslate2(path, quantization="float32")
    export_onnx(path, quantization="float32")
    return (load_rewriter(path), load_fast_rewriter(path, compute_type="float32"),
            load_onnx_rewriter(path))


@pytest.fixture(scope="module")
def ranked_dirs(tokenizer, tmp_path_factory):
    allowed = tokenizer.encode(ALLOWED_TEXT)
    dirs = {}
    for unique in (False, True):
        path = tmp_path_factory.mktemp(f"unique-{unique}") / "m"
        ranked_model(tokenizer, allowed, path, allowed)
        meta = json.loads((path / "udrl.json").read_text())
        (path / "udrl.json").write_text(json.dumps({**meta, "unique_words": unique}))
        dirs[unique] = path
    return dirs


def _words(prompt: str) -> list[str]:
    return prompt.replace(",", " ").casefold().split()


def test_no_engine_repeats_a_word_of_a_unique_words_model(ranked_dirs):
    torch_rw, fast, onnx = _engines(ranked_dirs[True])
    want = torch_rw.rewrite_batch(ITEMS, decoding="greedy")
    for outs in want:
        words = _words(outs[0].prompt)
        assert words and len(set(words)) == len(words), outs[0].prompt
    assert want[0][0].prompt.split()[:3] == ["red", "blue", "green"]
    assert _same(fast.rewrite_batch(ITEMS, decoding="greedy"), want)
    assert _same(onnx.rewrite_batch(ITEMS, decoding="greedy"), want)


def test_without_the_flag_the_same_model_repeats(ranked_dirs):
    torch_rw = load_rewriter(ranked_dirs[False])
    got = torch_rw.rewrite_batch(ITEMS[:1], decoding="greedy")[0][0].prompt
    assert got.split()[:3] == ["red", "red", "red"]
