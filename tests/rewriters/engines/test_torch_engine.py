import numpy as np
import pytest

from rewriters.commands import Command
from rewriters.errors import ConfigError, ModelError
from rewriters.engines.clip_count import CLIP_CONTEXT, clip_token_count
from rewriters.engines.torch_engine import load_rewriter


@pytest.mark.parametrize("decoding", ["greedy", "sample", "beam"])
def test_strict_length_hits_every_target(tiny_rewriter, decoding):
    # A random-weight model has no idea of length: only the constraint can make this exact.
    # (Template prompts: image prompts may additionally be cut to CLIP's window, tested below.)
    items = [("cozy cabin", Command("template", n, 4)) for n in (3, 7, 12, 25, 40)]
    n = 1 if decoding == "greedy" else 2
    outs = tiny_rewriter.rewrite_batch(items, n=n, strict_length=True, decoding=decoding, seed=0)
    for (_, cmd), group in zip(items, outs):
        assert len(group) == n
        for r in group:
            assert r.valid, r.problems
            assert r.words == cmd.length == len(r.prompt.split())


def test_no_command_tokens_or_newlines_leak(tiny_rewriter):
    outs = tiny_rewriter.rewrite("holiday sale", "template", 20, 1, n=4, decoding="sample", seed=1)
    for r in outs:
        assert "<|" not in r.prompt and "\n" not in r.prompt
        if r.valid:
            assert r.prompt.strip() == r.prompt and r.words >= 1


def test_batch_and_single_greedy_agree_despite_left_padding(tiny_rewriter):
    items = [("a", Command("image", 6, 4)),
             ("a much longer query about a snowy mountain cabin", Command("template", 9, 2))]
    batch = tiny_rewriter.rewrite_batch(items, decoding="greedy", strict_length=True)
    for item, got in zip(items, batch):
        single = tiny_rewriter.rewrite_batch([item], decoding="greedy", strict_length=True)
        assert single[0][0].prompt == got[0].prompt


def test_output_vocabulary_restriction_is_obeyed(tiny_model_dir, tokenizer):
    from rewriters.engines.torch_engine import Rewriter
    from rewriters.model import load_model_dir

    model, tok, meta, _ = load_model_dir(tiny_model_dir)
    allowed = tok.encode(" red blue green cabin, snow")
    rw = Rewriter(model, tok, meta, output_vocab=allowed)
    for r in rw.rewrite("x", "image", 10, n=4, strict_length=True, seed=2):
        assert set(r.prompt.replace(",", " ,").split()) <= {"red", "blue", "green", "cabin", ",", "snow"}


def test_bad_requests_raise_config_errors(tiny_rewriter):
    with pytest.raises(ConfigError, match="query is empty"):
        tiny_rewriter.rewrite("   ", "image", 10)
    with pytest.raises(ConfigError, match="unknown decoding 'topk'"):
        tiny_rewriter.rewrite("cabin", "image", 10, decoding="topk")
    with pytest.raises(ConfigError, match="unknown task"):
        tiny_rewriter.rewrite("cabin", "video", 10)
    with pytest.raises(ConfigError, match="too long"):
        tiny_rewriter.rewrite("word " * 200, "image", 10)


def test_missing_or_incomplete_model_dir(tmp_path, tiny_model_copy):
    with pytest.raises(ModelError, match="does not exist"):
        load_rewriter(tmp_path / "nope")
    (tiny_model_copy / "udrl.json").unlink()
    with pytest.raises(ModelError, match="udrl.json is missing"):
        load_rewriter(tiny_model_copy)


def test_a_model_of_an_older_format_asks_to_be_retrained(tiny_model_copy):
    import json

    meta_file = tiny_model_copy / "udrl.json"
    meta = json.loads(meta_file.read_text())
    meta.pop("marker_every", None), meta.pop("marker_tail", None)
    meta.update(format_version=1, progress_every=5)  # a model with count-up progress tokens
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model format 1 .* not supported.*retrain"):
        load_rewriter(tiny_model_copy)


def test_clip_window_is_measured_with_clips_own_tokenizer():
    assert clip_token_count("a cozy cabin") == 5  # <start> a cozy cabin <end>
    assert clip_token_count("word " * 100) > CLIP_CONTEXT


def test_image_prompts_are_cut_to_clip_window(tiny_rewriter):
    # Force a 40-word image prompt whose pieces are long: the output must fit CLIP's window.
    outs = tiny_rewriter.rewrite("x", "image", 40, n=4, strict_length=True, seed=5)
    for r in outs:
        assert r.valid and clip_token_count(r.prompt) <= CLIP_CONTEXT
    # random weights emit rare multi-piece tokens, so at least one needed cutting
    assert any("truncated to CLIP's 77-token window" in r.problems for r in outs)


def test_repeated_trigrams_are_banned_but_the_query_may_be_copied():
    import torch

    from rewriters.engines.torch_logits import _ban_repeated_trigrams

    gen = torch.tensor([[5, 6, 7, 5, 6],    # "5 6" seen before, followed by 7 → 7 banned
                        [1, 2, 3, 4, 5]])   # no repeated pair → nothing banned
    scores = torch.zeros(2, 10)
    _ban_repeated_trigrams(gen, scores)
    assert torch.isinf(scores[0, 7]) and torch.isfinite(scores[0]).sum() == 9
    assert torch.isfinite(scores[1]).all()


def test_a_length_marker_inside_a_repeated_phrase_does_not_hide_the_repeat():
    import torch

    from rewriters.engines.bans import repeated_trigram_bans
    from rewriters.engines.torch_logits import _ban_repeated_trigrams

    skip = np.zeros(10, dtype=bool)
    skip[9] = True  # id 9 is a length marker
    # "5 6 7 ... 5 <marker> 6": without the marker the last two text tokens are "5 6" again
    gen = np.array([[5, 6, 7, 8, 5, 9, 6],
                    [5, 6, 7, 8, 9, 9, 9]])  # a row ending in markers keeps its last text pair
    def bans(gen, skip):
        return sorted(set(zip(*map(np.ndarray.tolist, repeated_trigram_bans(gen, skip)))))

    # row 1: "9 9" followed by 9 is a repeat of the tokens themselves, banned either way
    assert bans(gen, skip) == [(0, 7), (1, 9)]
    assert bans(gen, None) == [(1, 9)]  # counted with the marker, row 0 repeats nothing
    gen[1, 4:] = [5, 9, 6]  # the same phrase with the marker elsewhere
    assert bans(gen, skip) == [(0, 7), (1, 7)]
    scores = torch.zeros(2, 10)
    _ban_repeated_trigrams(torch.from_numpy(gen), scores, skip)  # the torch processor's wrapper
    assert torch.isinf(scores[:, 7]).all() and torch.isfinite(scores).sum() == 18
    short = np.array([[9, 5, 9, 6]])  # two text tokens only: nothing to repeat yet
    assert repeated_trigram_bans(short, skip)[0].size == 0


def test_the_countdown_starts_where_the_length_says_and_counts_down_in_the_schemes_order():
    from rewriters.engines.bans import Countdown

    cd = Countdown({k: 100 + k for k in range(1, 40)}, 200, every=3, tail=3)  # r=k is id 100+k
    gen = np.array([[5, 6, 7], [5, 109, 6], [5, 6, 101]])  # no marker yet; after r=9; after r=1
    no_end, no_marker = cd.bans(gen, False, np.array([12, 12, 12]))
    assert [cd.values[~row].tolist() for row in no_marker] == [[9], [6], []]
    assert no_end.tolist() == [True, True, True]  # <|r=1|> written, but not its word yet
    assert cd.bans(np.array([[5, 101, 7]]), False, np.array([12]))[0].tolist() == [False]
    assert cd.bans(gen[:1], True, np.array([12]))[0].tolist() == [False]  # last budget step
    for length, first in ((3, 2), (4, 3), (5, 3), (40, 39), (38, 36)):
        _, no_marker = cd.bans(gen[:1], False, np.array([length]))
        assert cd.values[~no_marker[0]].tolist() == [first], length
    # a model whose <|r=1|> it may not emit has no grammar: no prompt could end by it
    from rewriters.model import RewriterMeta

    meta = RewriterMeta(version="v", base_model="scratch", model_config={}, bucket_edges=[],
                        scorer="lexical", marker_every=3, marker_tail=3)
    assert Countdown.for_model(meta, {2: 102, 3: 103}, 200) is None
    assert Countdown.for_model(meta, {1: 101, 2: 102}, 200) is not None


def test_no_generated_prompt_repeats_a_trigram(tiny_rewriter):
    outs = tiny_rewriter.rewrite_batch([("holiday sale", Command("template", 30, 4))], n=4,
                                       strict_length=True, decoding="sample", seed=3)[0]
    for r in outs:
        ids = tiny_rewriter.tokenizer.encode(" " + r.prompt)
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        assert len(grams) == len(set(grams)), r.prompt


def test_strict_length_never_counts_a_length_marker_as_a_word():
    """A marker written before the first word must not make strict decoding end a word early."""
    import torch

    from rewriters.engines.torch_logits import _CommandLogits

    V, end, marker = 8, 0, 1
    word_start = torch.tensor([False, False, True, True, False, False, False, False])
    markers = torch.zeros(V, dtype=torch.bool)
    markers[marker] = True
    banned = torch.zeros(V, dtype=torch.bool)
    proc = _CommandLogits(2, banned, word_start, end, torch.tensor([3, 3]), 50, markers)
    # row 0: <|r=9|> " a" " b" "x" -> 2 words; row 1: "y" " a" " b" -> 3 words ("y" opens one)
    ids = torch.tensor([[7, 7, marker, 2, 3, 4], [7, 7, 4, 2, 3, 5]])
    scores = proc(ids, torch.zeros(2, V))
    assert scores[0, end] == float("-inf")  # 2 of 3 words: may not end yet
    assert scores[1, end] == 0.0 and (scores[1, word_start] == float("-inf")).all()  # 3 of 3


def test_inputs_are_tokenized_as_the_tokenizer_does(tiny_rewriter):
    """The Rust tokenizer behind the input encoding gives the ids ``tokenizer.encode`` gives,
    command and context tokens written in the text included."""
    tok = tiny_rewriter.tokenizer
    for text in (" summer sale poster", " café crème brûlée 🍰", " a  b\tc", " <|ctx|> two titles",
                 " <|task=image|><|len=12|> raw", " word " * 60, ""):
        assert tiny_rewriter._encode(text) == tok.encode(text)
    cmd = Command("image", 12, 4)
    want = (tok.convert_tokens_to_ids(cmd.tokens()) + tok.encode(" cozy cabin")
            + [tiny_rewriter.prompt_id])
    assert tiny_rewriter.encode_input("cozy cabin", cmd) == want
    assert tiny_rewriter.encode_input("cozy cabin", cmd) == want  # the command's ids, kept
