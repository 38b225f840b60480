from rewriters.commands import Command


def test_builtin_tokenizer_is_the_real_gpt2_bpe(tokenizer):
    # Reference ids from OpenAI's GPT-2 vocabulary.
    assert tokenizer.encode(" Hello world") == [18435, 995]
    assert tokenizer.encode("Hello world") == [15496, 995]
    # GPT-2 vocab + 47 command tokens + 39 length markers + <|ctx|>
    assert len(tokenizer) == 50257 + 87


def test_command_prefix_and_text_round_trip(tokenizer):
    text = Command("template", 9, 2).prefix() + " holiday sale<|prompt|> bold red banner<|end|>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[:3] == ["<|task=template|>", "<|len=9|>", "<|rel=2|>"]
    assert pieces[-1] == "<|end|>"
