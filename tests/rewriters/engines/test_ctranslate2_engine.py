"""What only the CTranslate2 engine has: the repair of its bans, padded rows, its options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rewriters.commands import Command
from rewriters.engines import Decoding, export_engine
from rewriters.engines.bans import first_extra_ban
from rewriters.engines.ctranslate2_engine import (
    CT2_DIR,
    CTranslate2Rewriter,
    load_ctranslate2_rewriter,
)
from rewriters.engines.torch_engine import Rewriter
from rewriters.errors import ConfigError

from .helpers import ITEMS, ranked_model, same


@pytest.fixture(scope="module")
def ranked_engines(tokenizer, allowed, tmp_path_factory):
    """(float32 CTranslate2, PyTorch) engines of a model ranking " red" > " blue" > " green" >
    " cabin" > "," > " snow" > <|end|> whatever the input ("red red red blue red red green ..."
    under the 3-gram ban)."""
    path = tmp_path_factory.mktemp("ranked") / "m"
    model, meta = ranked_model(tokenizer, allowed, path, allowed)
    export_engine("ctranslate2", path, quantization="float32")
    return (load_ctranslate2_rewriter(path, compute_type="float32"),
            Rewriter(model, tokenizer, meta, output_vocab=allowed))


def test_query_tails_in_mixed_batches_do_not_change_the_3gram_ban(ranked_engines, monkeypatch):
    # Next to "a", the input "x y red red red" runs its tail "red red red <|prompt|>" through
    # CTranslate2's decoding loop, whose 3-gram ban alone then forbids "red" after "red red":
    # the prompt would start "red red blue". That row is regenerated from that step.
    # (Equal lengths: CTranslate2 batches only inputs whose token budgets are equal.)
    ct2, torch_rw = ranked_engines
    items = [("a", Command("template", 9, 4)), ("x y red red red", Command("template", 9, 4))]
    want = torch_rw.rewrite_batch(items, decoding="greedy")
    assert same(ct2.rewrite_batch(items, decoding="greedy"), want)
    monkeypatch.setattr(CTranslate2Rewriter, "_redo_extra_bans", lambda *a: None)
    got = ct2.rewrite_batch(items, decoding="greedy")  # what the regeneration fixes:
    assert got[1][0].prompt.startswith("red red blue") and same(got[:1], want[:1])


def test_first_extra_ban_finds_pairs_inside_the_query_tail():
    banned = np.zeros(20, dtype=bool)
    banned[9] = True
    # 1 = <|prompt|>. Extra bans: 7 after (5,6), 5 after (6,7), 8 after (5,9); none after
    # (7,5) (9 is banned anyway) or (9,8) (<|prompt|> is never emitted)
    tail = [5, 6, 7, 5, 9, 8, 1]
    assert first_extra_ban(tail, [2, 5, 6, 3], banned) == 3  # choosing seq[3] after "5 6"
    assert first_extra_ban(tail, [6, 7, 2], banned) == 2
    assert first_extra_ban(tail, [7, 5, 2, 9, 8, 3], banned) is None
    assert first_extra_ban(tail, [2, 5, 9, 3], banned) == 3
    assert first_extra_ban(tail, [5, 6], banned) is None  # nothing chosen after the pair
    assert first_extra_ban([], [5, 6, 7, 5, 6], banned) is None  # the shortest input


@pytest.mark.parametrize("marker_every, tail, ranking_of, redrawn, alone", [
    (5, 4, "repeat", "red red red blue", "red red red red"),
    (3, 3, "grammar", "red red red blue red red", "red red red"),
])
def test_bans_beyond_ctranslate2_are_redrawn(tokenizer, allowed, tmp_path, monkeypatch,
                                             marker_every, tail, ranking_of, redrawn, alone):
    """Without its redraw of missed bans, CTranslate2 alone repeats "red" across a marker or
    ends before <|r=1|>; with it the prompt is PyTorch's (tested in test_parity)."""
    ids = tokenizer.convert_tokens_to_ids(["<|end|>", "<|r=5|>", "<|r=3|>", "<|r=2|>",
                                           "<|r=1|>"])
    ranking = ([allowed[0], ids[1], *allowed[1:]] if ranking_of == "repeat"
               else [allowed[0], ids[0], *ids[2:], *allowed[1:]])
    path = tmp_path / "m"
    ranked_model(tokenizer, ranking, path, ranking, marker_every=marker_every, marker_tail=tail)
    export_engine("ctranslate2", path, quantization="float32")
    ct2 = load_ctranslate2_rewriter(path, compute_type="float32")
    items = [("a", Command("template", 9 if ranking_of == "repeat" else 4, 4))]
    assert ct2.rewrite_batch(items, decoding="greedy")[0][0].prompt.startswith(redrawn)
    monkeypatch.setattr(CTranslate2Rewriter, "_redo_missed_bans", lambda *a: None)
    got = ct2.rewrite_batch(items, decoding="greedy")[0][0].prompt
    assert got.startswith(alone) and not got.startswith(redrawn)


def test_seeded_sampling_runs_on_pytorch(vocab_dirs, torch_vocab):
    ct2 = load_ctranslate2_rewriter(vocab_dirs["int8"])  # its own: it loads the fallback
    assert ct2.fallback_reason(Decoding(seed=3))  # CTranslate2 cannot reseed a generator
    assert same(ct2.rewrite_batch(ITEMS[:2], n=3, decoding="sample", seed=4),  # reproducible
                torch_vocab.rewrite_batch(ITEMS[:2], n=3, decoding="sample", seed=4))
    assert "int8" in ct2.generator.compute_type


def test_padded_embedding_rows_are_named_and_banned(tokenizer, tmp_path):
    from rewriters.model import MODEL_PRESETS, RewriterMeta, build_model, save_model_dir

    model = build_model("scratch", tokenizer, MODEL_PRESETS["tiny"])
    model.resize_token_embeddings(len(tokenizer) + 7)  # e.g. a multiple-of-64 pretrained layout
    meta = save_model_dir(tmp_path, model, tokenizer, RewriterMeta(
        version="unsaved", base_model="scratch", model_config={}, bucket_edges=[0.1, 0.2, 0.3, 0.4],
        scorer="lexical"))
    export_engine("ctranslate2", tmp_path, quantization="float32")
    vocab = json.loads((tmp_path / CT2_DIR / "vocabulary.json").read_text())
    assert len(vocab) == len(tokenizer) + 7
    assert vocab[-1] == f"<|udrl_pad_{len(tokenizer) + 6}|>"
    ct2 = load_ctranslate2_rewriter(tmp_path, compute_type="float32")
    assert ct2.banned[len(tokenizer):].all()
    assert same(ct2.rewrite_batch(ITEMS[:3], decoding="greedy"),
                Rewriter(model, tokenizer, meta).rewrite_batch(ITEMS[:3], decoding="greedy"))


def test_bad_options_list_the_allowed_values(f32_dir):
    with pytest.raises(ConfigError, match="unknown compute_type 'fp8'; allowed: default"):
        load_ctranslate2_rewriter(f32_dir, compute_type="fp8")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        load_ctranslate2_rewriter(f32_dir, device="tpu")
    with pytest.raises(ConfigError, match="inter_threads 0 >= 1"):
        load_ctranslate2_rewriter(f32_dir, inter_threads=0)

