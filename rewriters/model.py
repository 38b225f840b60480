"""The rewriter model directory: GPT-2 architecture config, build, save and load.

A model directory is self-contained and loading never guesses::

    model.safetensors, config.json    GPT-2 weights and HF architecture config
    tokenizer files                   GPT-2 BPE plus the command tokens
    udrl.json                         RewriterMeta: version, base model, ModelConfig, command
                                      vocabulary, relevance bucket edges, scorer, train config
    output_vocab.json                 token ids the prompt softmax was trained over (optional)
    heldout.jsonl                     held-out examples for `udrl eval-rewriter`
    metrics.json, loss_curve.png      training report
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .commands import END_TOKEN, command_tokens
from .errors import ConfigError, ModelError
from .files import share
from .tokenizer import BUILTIN_TOKENIZER, load_tokenizer

__all__ = [
    "ModelConfig",
    "MODEL_PRESETS",
    "RewriterMeta",
    "SCRATCH",
    "build_model",
    "save_model_dir",
    "load_model_dir",
    "read_model_dir",
]

log = logging.getLogger(__name__)

SCRATCH = "scratch"  # base_model value for a randomly initialised GPT-2
FORMAT_VERSION = 2  # 2: countdown length markers <|r=k|> replace progress tokens <|w=k|>


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 architecture for a model trained from scratch (ignored for a pretrained base)."""

    n_layer: int = 4  # transformer blocks; 1..48 (GPT-2 small: 12)
    n_head: int = 4  # attention heads; must divide n_embd (GPT-2 small: 12)
    n_embd: int = 192  # hidden width; 16..1600 (GPT-2 small: 768)
    n_positions: int = 128  # max tokens of command + query + prompt; 64..1024
    dropout: float = 0.0  # residual, embedding and attention dropout; 0.0..0.3

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 1 <= self.n_layer <= 48:
            raise ConfigError(f"n_layer {self.n_layer} is out of range 1-48")
        if not 64 <= self.n_positions <= 1024:
            raise ConfigError(f"n_positions {self.n_positions} is out of range 64-1024")


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128),  # tests
    "small": ModelConfig(n_layer=4, n_head=4, n_embd=192, n_positions=128),  # offline demo
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768, n_positions=1024),  # GPT-2 small
}


@dataclass
class RewriterMeta:
    """Everything besides weights that generation needs; saved as udrl.json."""

    version: str  # "<UTC timestamp>-<weights sha256 prefix>", part of cache keys
    base_model: str  # "scratch", a pretrained name, or a local directory
    model_config: dict[str, Any]  # ModelConfig as a dict (scratch) or the HF config summary
    # relevance bucket edges: rewards.BucketEdges.to_json() (per length band); older models
    # stored one flat list (RELEVANCE_BUCKETS - 1 values), which BucketEdges.from_json reads
    bucket_edges: dict[str, Any] | list[float]
    scorer: str  # relevance scorer used for relabelling ("minilm", "lexical")
    train_config: dict[str, Any] = field(default_factory=dict)
    command_tokens: list[str] = field(default_factory=command_tokens)
    marker_every: int = 0  # length markers where the words still to come are a multiple of this
    marker_tail: int = 0  # ... and before each of the last this many words; both 0: no markers
    # catalogue neighbours' titles the input carries after <|ctx|> (0: the query alone); the
    # server must give the engine a ``context`` function when this is > 0
    context_items: int = 0
    # the training prompts opened with the query's words (catalogue teacher): generation puts
    # the query's own words in that slot (commands.restore_query_slot)
    query_first: bool = False
    # no training prompt repeated a word (catalogue teacher): decoding bans repeating one
    unique_words: bool = False
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def build_model(base_model: str, tokenizer, cfg: ModelConfig | None = None):
    """A GPT-2 LM whose embedding covers the tokenizer (GPT-2 vocab + command tokens).

    Args:
        base_model: "scratch" for random weights with ``cfg``; otherwise a pretrained name or
            local directory loaded with ``GPT2LMHeadModel.from_pretrained``.
        tokenizer: from :func:`rewriters.tokenizer.load_tokenizer`.
        cfg: architecture for scratch models.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    if base_model == SCRATCH:
        cfg = cfg or MODEL_PRESETS["small"]
        hf = GPT2Config(
            vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, bos_token_id=end_id,
            eos_token_id=end_id, pad_token_id=end_id,
        )
        return GPT2LMHeadModel(hf)
    try:
        model = GPT2LMHeadModel.from_pretrained(base_model)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load pretrained GPT-2 {base_model!r} ({e.__class__.__name__}); "
            "pass a local directory, or 'scratch' to train offline"
        ) from e
    model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id = model.config.pad_token_id = end_id
    return model


def _weights_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


def save_model_dir(
    out_dir: str | Path,
    model,
    tokenizer,
    meta: RewriterMeta,
    output_vocab: list[int] | None = None,
) -> RewriterMeta:
    """Write a self-contained model directory; returns meta with its final version string."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    weights = out / "model.safetensors"
    share(weights)  # safetensors writes it owner-only (0600)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    meta.version = f"{stamp}-{_weights_digest(weights)}"
    (out / "udrl.json").write_text(json.dumps(asdict(meta), indent=2) + "\n")
    vocab_file = out / "output_vocab.json"
    if output_vocab is not None:
        vocab_file.write_text(json.dumps(sorted(output_vocab)))
    else:
        vocab_file.unlink(missing_ok=True)
    return meta


def read_model_dir(path: str | Path) -> tuple[Path, RewriterMeta, Any, list[int] | None, dict]:
    """(dir, meta, tokenizer, output_vocab, HF config) of a model directory, without weights.

    Every check of ``load_model_dir`` except the weights, so engines that do not use torch
    (the CTranslate2 one) can read a model directory without importing it.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"model directory {p} does not exist; train one with `udrl train`")
    for name in ("udrl.json", "config.json"):
        if not (p / name).is_file():
            raise ModelError(f"model directory {p} is incomplete: {name} is missing")
    try:
        described = json.loads((p / "udrl.json").read_text())
        found = described.get("format_version") if isinstance(described, dict) else None
        if found != FORMAT_VERSION:
            raise ModelError(
                f"model format {found} in {p} is not supported (expected "
                f"{FORMAT_VERSION}); retrain with this version of udrl-search"
            )
        meta = RewriterMeta(**described)
        hf_config = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{p / 'udrl.json'} is not a valid rewriter description: {e}") from e
    has_tok = (p / "tokenizer_config.json").exists()
    if not has_tok:
        log.warning("no tokenizer saved in %s; using the builtin GPT-2 tokenizer", p)
    tokenizer = load_tokenizer(str(p) if has_tok else BUILTIN_TOKENIZER, meta.command_tokens)
    vocab = tokenizer.get_vocab()  # builds a 50k dict: once, not once per token
    missing = [t for t in meta.command_tokens if t not in vocab]
    if missing:
        raise ModelError(f"tokenizer in {p} lacks command tokens {missing[:3]}")
    vocab_file = p / "output_vocab.json"
    output_vocab = json.loads(vocab_file.read_text()) if vocab_file.exists() else None
    return p, meta, tokenizer, output_vocab, hf_config


def load_model_dir(path: str | Path, device: str = "cpu"):
    """Load (model, tokenizer, meta, output_vocab) from a directory written by save_model_dir."""
    from transformers import GPT2LMHeadModel

    p, meta, tokenizer, output_vocab, _ = read_model_dir(path)
    if not (p / "model.safetensors").is_file():
        raise ModelError(f"model directory {p} is incomplete: model.safetensors is missing")
    model = GPT2LMHeadModel.from_pretrained(p).to(device).eval()
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ModelError(f"model in {p} has fewer embeddings than its tokenizer has tokens")
    return model, tokenizer, meta, output_vocab
