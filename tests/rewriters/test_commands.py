import pytest

from rewriters.commands import (
    CONTEXT_TOKEN, MARKER_TOKENS,
    END_TOKEN, LENGTH_MAX, LENGTH_MIN, PROMPT_TOKEN, Command, command_tokens, count_words,
)
from rewriters.errors import ConfigError


def test_command_serialises_as_three_tokens():
    c = Command("image", 12, 4)
    assert c.tokens() == ["<|task=image|>", "<|len=12|>", "<|rel=4|>"]
    assert c.prefix() == "<|task=image|><|len=12|><|rel=4|>"


@pytest.mark.parametrize(
    "args, message",
    [
        (("video", 12, 4), "unknown task 'video'; allowed: image, template"),
        (("image", 80, 4), "length 80 is out of range 3-40"),
        (("image", 2, 4), "length 2 is out of range 3-40"),
        (("image", 12, 5), "relevance 5 is out of range 0-4"),
        (("image", 12.5, 4), "must be a whole number"),
    ],
)
def test_bad_commands_name_the_value_and_range(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Command(*args)


def test_every_command_token_is_one_special_token(tokenizer):
    toks = command_tokens()
    # tasks, lengths, relevance buckets, <|prompt|> and <|end|>, <|r=1|> ... <|r=39|>, <|ctx|>
    # (appended last, so the ids of models saved before it existed do not move)
    markers = LENGTH_MAX - 1
    assert len(toks) == len(set(toks)) == 2 + (LENGTH_MAX - LENGTH_MIN + 1) + 5 + 2 + markers + 1
    assert toks[-markers - 3 : -markers - 1] == [PROMPT_TOKEN, END_TOKEN]
    assert toks[-markers - 1 : -1] == list(MARKER_TOKENS)
    assert toks[-1] == CONTEXT_TOKEN
    for t in toks:
        ids = tokenizer.encode(t)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [t]


def test_count_words_splits_on_whitespace():
    assert count_words("  a cozy   cabin,\tsnow ") == 4
    assert count_words("") == 0


def test_restore_query_slot_puts_the_query_first_and_keeps_the_length():
    from rewriters.commands import restore_query_slot, starts_with_query

    # "puppy" was never a training token: the model wrote "able" in its slot
    assert restore_query_slot("puppy", "able dog paw animals") == "puppy dog paw animals"
    # two query words replace the first two; the word count (5) stays
    assert restore_query_slot("Mountain Bike!", "mountainbike map trail volcano hike") == (
        "mountain bike trail volcano hike")
    # an image lead stays in front
    assert restore_query_slot("cozy cabin", "a photo of cosy caban in snow") == (
        "a photo of cozy cabin in snow")
    # a query longer than the prompt keeps its first words only
    assert restore_query_slot("a b c d e", "x y z") == "a b c"
    assert starts_with_query("mountain bike", "Mountain bike, trail map")
    assert starts_with_query("puppy", "a photo of puppy dog")
    assert not starts_with_query("dog", "cat dog")


def test_repeated_word_bans_name_the_words_a_row_already_opened():
    import numpy as np

    from rewriters.engines.bans import repeated_word_bans

    word_start = np.array([False, True, True, False, True])  # ids 1, 2 and 4 open a word
    gen = np.array([[1, 3, 2], [3, 3, 3]])  # row 0 opened words 1 and 2; row 1 none
    rows, ids = repeated_word_bans(gen, word_start)
    assert sorted(zip(rows.tolist(), ids.tolist())) == [(0, 1), (0, 2)]
    assert repeated_word_bans(np.zeros((2, 0), np.int64), word_start)[0].size == 0
