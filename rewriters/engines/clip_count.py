"""Tokens a text takes in CLIP's 77-token window, with and without open_clip's tokenizer.

Image prompts are cut to CLIP's window. :func:`clip_token_count` asks open_clip's own
tokenizer; its module imports torch (~0.5 GB resident), so the engines that serve without torch
use :func:`clip_token_count_light`, which re-runs CLIP's text cleaning and BPE over open_clip's
merge table (checked against open_clip in the tests).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelError

__all__ = ["CLIP_CONTEXT", "clip_token_count", "clip_token_count_light"]

CLIP_CONTEXT = 77  # CLIP's text window, start and end tokens included


@lru_cache(maxsize=1)
def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """Tokens ``text`` takes in CLIP's window, start and end tokens included."""
    return len(_clip_tokenizer().encode(text)) + 2



_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[tuple[str, str], int], dict[int, str], Any]:
    import regex

    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("open_clip is not installed; it ships CLIP's BPE merge table")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as fh:  # CLIP keeps the first 49152 - 256 - 2 merges
        lines = fh.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))  # GPT-2/CLIP byte-to-unicode table
    byte_chars = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    pattern = regex.compile("|".join(_CLIP_SPECIALS)
                            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                            regex.IGNORECASE)
    return ranks, byte_chars, pattern


@lru_cache(maxsize=65536)
def _clip_pieces(word: str) -> int:
    """BPE pieces of one pre-tokenised word: merge the best-ranked adjacent pair until none."""
    ranks = _clip_bpe()[0]
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda q: ranks.get(q, len(ranks)))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return len(parts)


def clip_token_count_light(text: str) -> int:
    """:func:`clip_token_count` without importing torch: tokens in CLIP's window."""
    import ftfy

    _, byte_chars, pattern = _clip_bpe()
    clean = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
    count = 2  # start and end tokens
    for token in pattern.findall(clean):
        if token in _CLIP_SPECIALS:
            count += 1
        else:
            count += _clip_pieces("".join(byte_chars[b] for b in token.encode("utf-8")))
    return count