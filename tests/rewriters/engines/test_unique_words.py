"""Models whose training prompts never repeat a word (``RewriterMeta.unique_words``, set by
``train`` for the catalogue teacher's prompts) are banned from repeating one, alike in all three
engines.

The model: ``helpers.ranked_model``, which ignores its input and ranks " red" > " blue" >
" green" > " cabin" > "," > " snow" > <|end|>. Without the ban, greedy decoding repeats " red"
(up to the 3-gram ban: "red red red blue ..."); with it each word appears once.
"""

from __future__ import annotations

import json

import pytest

from rewriters.commands import Command
from rewriters.engines import export_engine, load_engine
from rewriters.engines.torch_engine import load_rewriter

from .helpers import ALLOWED_TEXT, ranked_model, same

ITEMS = [("a", Command("template", 5, 4)), ("snowy cabin", Command("image", 9, 2)),
         ("red red", Command("template", 12, 1))]


def _engines(path):
    for engine in ("ctranslate2", "onnx"):
        export_engine(engine, path, quantization="float32")
    return tuple(load_engine(path, e) for e in ("torch", "ctranslate2", "onnx"))


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
    torch_rw, ct2, onnx = _engines(ranked_dirs[True])
    want = torch_rw.rewrite_batch(ITEMS, decoding="greedy")
    for outs in want:
        words = _words(outs[0].prompt)
        assert words and len(set(words)) == len(words), outs[0].prompt
    assert want[0][0].prompt.split()[:3] == ["red", "blue", "green"]
    assert same(ct2.rewrite_batch(ITEMS, decoding="greedy"), want)
    assert same(onnx.rewrite_batch(ITEMS, decoding="greedy"), want)


def test_without_the_flag_the_same_model_repeats(ranked_dirs):
    torch_rw = load_rewriter(ranked_dirs[False])
    got = torch_rw.rewrite_batch(ITEMS[:1], decoding="greedy")[0][0].prompt
    assert got.split()[:3] == ["red", "red", "red"]
