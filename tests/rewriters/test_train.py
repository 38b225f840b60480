import json

import pytest

from rewriters.data import read_examples
from rewriters.errors import ConfigError, DataError
from rewriters.engines.torch_engine import load_rewriter
from rewriters.model import MODEL_PRESETS
from rewriters.rewards import LexicalScorer
from rewriters.train import TrainConfig, train_rewriter
from tests.conftest import make_examples


@pytest.fixture(scope="module")
def trained_and_rows(tmp_path_factory):
    """One training run, and every example it encoded as a training row (distilled or
    explored), recorded by wrapping ``rewriters.train.encode_example``."""
    import rewriters.train as train_module

    cfg = TrainConfig(model=MODEL_PRESETS["tiny"], steps=40, batch_size=8, eval_commands=20,
                      rounds=1, round_steps=10, explore_per_round=24, warmup_steps=5)
    out = tmp_path_factory.mktemp("trained")
    rows, encode = [], train_module.encode_example

    def recording(rewriter, ex):
        rows.append(ex)
        return encode(rewriter, ex)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "encode_example", recording)
        result = train_rewriter(make_examples(80), LexicalScorer(), out, cfg, progress=False)
    return result, cfg, rows


@pytest.fixture(scope="module")
def trained(trained_and_rows):
    return trained_and_rows[:2]


def test_model_directory_is_self_contained(trained):
    result, cfg = trained
    d = result.model_dir
    for name in ("model.safetensors", "config.json", "udrl.json", "tokenizer_config.json",
                 "output_vocab.json", "heldout.jsonl", "metrics.json", "loss_curve.png",
                 "udrl_explored.jsonl"):
        assert (d / name).is_file(), name
    meta = json.loads((d / "udrl.json").read_text())
    assert meta["version"] == result.version and all(len(e) == 4 for e in meta["bucket_edges"]["edges"])
    assert TrainConfig.from_dict(meta["train_config"]) == cfg  # rebuilt exactly from disk
    assert (d / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_falls_and_rounds_are_reported(trained):
    result, _ = trained
    m = result.metrics
    curve = m["loss_curve"]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    assert [r["round"] for r in m["rounds"]] == [0, 1]
    r1 = m["rounds"][1]
    for key in ("explored", "added", "length_mse", "within_2", "relevance_by_bucket"):
        assert key in r1
    assert r1["explored"] == 24


def test_explored_examples_are_relabelled_with_what_they_achieved(trained):
    result, _ = trained
    explored = read_examples(result.model_dir / "udrl_explored.jsonl")
    assert not explored.rejects
    for e in explored.examples:
        assert e.teacher == "udrl:round-1"
        assert e.words == len(e.prompt.split())  # achieved length, not the commanded one
        assert e.bucket is not None and e.relevance is not None


def test_trained_model_loads_and_obeys_strict_length(trained):
    rw = load_rewriter(trained[0].model_dir)
    outs = rw.rewrite("red cabin item1", "image", 9, 4, n=3, strict_length=True, seed=0)
    assert [o.words for o in outs] == [9, 9, 9]


def test_heldout_queries_are_unseen(trained_and_rows):
    result, _, rows = trained_and_rows
    held = {e.query for e in read_examples(result.model_dir / "heldout.jsonl").examples}
    assert len(held) == 8  # 10% of 80 queries
    trained_on = {e.query for e in rows}
    explored = {e.query for e in read_examples(result.model_dir / "udrl_explored.jsonl").examples}
    assert len(trained_on) == 72 and explored <= trained_on  # the other 90%, and only those
    assert not held & trained_on, f"held-out queries were trained on: {held & trained_on}"


def test_too_little_data_and_bad_config():
    with pytest.raises(DataError, match="usable examples"):
        train_rewriter(make_examples(2), LexicalScorer(), "/tmp/unused", TrainConfig())
    with pytest.raises(ConfigError, match="held_out"):
        TrainConfig(held_out=1.5)
    with pytest.raises(ConfigError, match="unknown model preset"):
        TrainConfig.from_dict({"model": "huge"})


def test_pretrained_base_from_a_local_directory(tiny_model_dir, tmp_path):
    # Any local GPT-2 directory works as a base (here the tiny fixture model); pretrained bases
    # train over the full vocabulary, so no output_vocab.json is written.
    cfg = TrainConfig(base_model=str(tiny_model_dir), steps=3, batch_size=4, eval_commands=10,
                      warmup_steps=1)
    result = train_rewriter(make_examples(30), LexicalScorer(), tmp_path / "ft", cfg,
                            progress=False)
    meta = json.loads((result.model_dir / "udrl.json").read_text())
    assert meta["base_model"] == str(tiny_model_dir)
    assert not (result.model_dir / "output_vocab.json").exists()
    rw = load_rewriter(result.model_dir)
    assert rw.rewrite("cabin", "template", 5, strict_length=True, seed=0)[0].words == 5


def test_unknown_pretrained_name_is_a_model_error(tmp_path, monkeypatch):
    from rewriters.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TrainConfig(base_model=str(tmp_path / "no-such-gpt2"), steps=1)
    with pytest.raises(ModelError, match="cannot load"):
        train_rewriter(make_examples(30), LexicalScorer(), tmp_path / "x", cfg, progress=False)


def test_packed_rows_give_the_hidden_states_of_unpacked_examples(tiny_rewriter):
    """Packing is exact: each example's hidden states equal those of the example alone."""
    import torch

    from rewriters.train import encode_example, pack_examples

    from ..conftest import make_examples

    rows = [encode_example(tiny_rewriter, ex) for ex in make_examples(6)[:9]]
    ids, pos, mask, loss_mask = pack_examples(rows, tiny_rewriter.end_id, row_width=64)
    assert len(ids) < len(rows)  # some rows hold several examples
    assert int(loss_mask.sum()) == sum(len(seq) - start for seq, start in rows)
    model = tiny_rewriter.model
    with torch.no_grad():
        packed = model.transformer(input_ids=ids, position_ids=pos,
                                   attention_mask=mask).last_hidden_state
        for seq, _ in rows:
            alone = model.transformer(input_ids=torch.tensor([seq])).last_hidden_state[0]
            found = False
            for r in range(len(ids)):
                row = ids[r].tolist()
                for at in range(len(row) - len(seq) + 1):
                    if row[at : at + len(seq)] == seq and pos[r, at] == 0:
                        assert torch.allclose(packed[r, at : at + len(seq)], alone, atol=1e-5)
                        found = True
                        break
                if found:
                    break
            assert found


def test_length_markers_count_down_the_words_still_to_come(tiny_model_dir):
    """Training targets carry <|r=k|> between words (k % 5 == 0, or k <= 4); decoding strips them."""
    from dataclasses import replace

    from rewriters.commands import Command
    from rewriters.data import Example
    from rewriters.engines.torch_engine import load_rewriter
    from rewriters.train import encode_example

    rw = load_rewriter(tiny_model_dir)
    rw_marked = type(rw)(rw.model, rw.tokenizer, replace(rw.meta, marker_every=5, marker_tail=4))
    words = "a1 b2, c3-x d4 e5 f6 g7 h8 i9 j10 k11 l12".split()
    ex = Example.make("q", "image", " ".join(words), "test", "image")
    seq, start = encode_example(rw_marked, ex)
    body = seq[start:]
    text = rw.tokenizer.decode(body, skip_special_tokens=False)
    assert text == (" a1 b2,<|r=10|> c3-x d4 e5 f6 g7<|r=5|> h8<|r=4|> i9<|r=3|> j10<|r=2|>"
                    " k11<|r=1|> l12<|end|>")
    plain, _ = encode_example(rw, ex)
    assert len(seq) == len(plain) + 6  # the model without markers gets none
    out = rw_marked._finish(body, Command("image", 12))
    assert out.prompt == " ".join(words) and out.words == 12 and out.valid
    ids = list(rw_marked.marker_ids.values())
    assert not rw_marked._always_banned[ids].any() and rw._always_banned[ids].all()


def test_marker_positions_follow_the_scheme():
    from rewriters.commands import marker_positions

    assert marker_positions(12, 5, 4) == {2: 10, 7: 5, 8: 4, 9: 3, 10: 2, 11: 1}
    assert marker_positions(12, 5, 0) == {2: 10, 7: 5}
    assert marker_positions(4, 1, 0) == {1: 3, 2: 2, 3: 1}
    assert marker_positions(3, 0, 0) == {} and marker_positions(1, 5, 4) == {}


@pytest.fixture(scope="module")
def trained_with_context(tmp_path_factory):
    # every query reads the same two catalogue titles as its context; "zanzibar" and
    # "quokka" occur only there and in vocab_texts, never in a distilled prompt
    seen: list[str] = []

    def context(query: str) -> str:
        seen.append(query)
        return "zanzibar lantern; quokka badge"

    cfg = TrainConfig(model=MODEL_PRESETS["tiny"], steps=20, batch_size=8, eval_commands=20,
                      warmup_steps=5, context_items=2)
    out = tmp_path_factory.mktemp("trained-ctx")
    result = train_rewriter(make_examples(40), LexicalScorer(), out, cfg, progress=False,
                            context=context, vocab_texts=["zanzibar lantern", "quokka badge"])
    return result, seen


def test_context_is_read_after_the_ctx_token_and_saved_in_the_meta(trained_with_context):
    result, seen = trained_with_context
    assert seen  # the training inputs asked for it
    meta = json.loads((result.model_dir / "udrl.json").read_text())
    assert meta["context_items"] == 2
    rw = load_rewriter(result.model_dir)
    rw.context = lambda q: "zanzibar lantern"
    ids = rw.encode_input("red cabin", rw_command())
    text = rw.tokenizer.decode(ids)
    assert text.endswith("red cabin <|ctx|> zanzibar lantern<|prompt|>")
    rw.context = None  # no grounding given: the query alone
    assert "<|ctx|>" not in rw.tokenizer.decode(rw.encode_input("red cabin", rw_command()))


def test_context_is_cut_only_as_far_as_the_prompt_needs(trained_with_context):
    # training kept whole contexts wherever the example fit the window, so a 40-word request
    # keeps as much context as leaves the prompt its least budget (2 x words + markers + 1)
    from rewriters.engines.budget import least_budget
    from rewriters.commands import Command

    rw = load_rewriter(trained_with_context[0].model_dir)
    long = Command("template", 40, 4)
    need = least_budget(40, rw._marker_count(40))
    rw.context = lambda q: "zanzibar lantern"
    assert "<|ctx|> zanzibar lantern<|prompt|>" in rw.tokenizer.decode(
        rw.encode_input("red cabin", long))
    rw.context = lambda q: " ".join(["zanzibar lantern"] * 60)  # far more than the window
    ids = rw.encode_input("red cabin", long)
    assert len(ids) == rw.n_positions - need  # cut to exactly what the prompt leaves
    assert "red cabin <|ctx|> zanzibar" in rw.tokenizer.decode(ids)
    assert ids[-1] == rw.prompt_id


def test_output_vocabulary_covers_catalogue_words(trained_with_context):
    result, _ = trained_with_context
    rw = load_rewriter(result.model_dir)
    vocab = set(json.loads((result.model_dir / "output_vocab.json").read_text()))
    for word in (" zanzibar", " quokka", " lantern"):
        assert set(rw.tokenizer.encode(word)) <= vocab, word


def test_context_items_without_a_context_function_is_refused(tmp_path):
    cfg = TrainConfig(model=MODEL_PRESETS["tiny"], steps=5, batch_size=8, eval_commands=20,
                      warmup_steps=1, context_items=3)
    with pytest.raises(ConfigError, match="context function"):
        train_rewriter(make_examples(40), LexicalScorer(), tmp_path, cfg, progress=False)


def rw_command():
    from rewriters.commands import Command

    return Command("template", 6, 4)


def test_query_first_is_read_off_the_training_prompts():
    from rewriters.data import Example
    from rewriters.train import _query_first

    first = [Example.make(q, "template", f"{q} icon outline", "catalog", "both")
             for q in ("dog", "red car", "cloud")]
    assert _query_first(first)
    assert not _query_first([*first, *(Example.make("dog", "template", "a happy puppy", "b",
                                                     "both") for _ in range(3))])
