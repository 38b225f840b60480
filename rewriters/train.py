"""UDRL training of the GPT-2 rewriter.

Every example is relabelled with the return it achieved (task, words, relevance bucket) and fed
as command tokens; the loss covers prompt tokens only. With ``rounds > 0`` the upside-down RL
loop runs: sample exploratory commands from the best part of the return distribution, generate,
score what the samples actually achieved, relabel, add to the data and train on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .commands import LENGTH_MAX, LENGTH_MIN, Command, marker_positions, starts_with_query
from .data import Example, split_by_query, write_examples
from .errors import ConfigError, DataError
from .evaluate import evaluate_rewriter, held_out_commands
from .explore import explore_round
from .engines.torch_engine import Rewriter
from .model import MODEL_PRESETS, SCRATCH, ModelConfig, RewriterMeta, build_model, save_model_dir
from .rewards import Scorer, relabel
from .tokenizer import BUILTIN_TOKENIZER, load_tokenizer

__all__ = ["TrainConfig", "TrainResult", "train_rewriter", "encode_example"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train the rewriter; saved in the model directory and rebuilt on load."""

    base_model: str = SCRATCH  # "scratch", a pretrained GPT-2 name, or a local directory
    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["small"])  # scratch only
    steps: int = 1500  # optimiser steps before the first UDRL round; 10..100k
    batch_size: int = 32  # examples per step; 4..512
    lr: float = 2e-3  # peak AdamW learning rate (scratch ~1e-3..3e-3, pretrained ~5e-5..3e-4)
    min_lr_ratio: float = 0.1  # cosine decay floor as a share of lr; 0..1
    warmup_steps: int = 50  # linear warm-up steps; 0..steps
    weight_decay: float = 0.01  # AdamW weight decay; 0..0.1
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    held_out: float = 0.1  # share of queries held out for evaluation; 0.02..0.5
    restrict_vocab: bool | None = None  # softmax over tokens seen in prompts (None: scratch only)
    rounds: int = 0  # UDRL rounds after the initial fit; 0..20
    round_steps: int = 300  # optimiser steps per round on the grown data; 10..100k
    round_lr_ratio: float = 0.3  # rounds fine-tune at this share of lr; 0.05..1
    explore_per_round: int = 512  # exploratory commands sampled per round; 16..100k
    top_share: float = 0.25  # "best part" of the return distribution explored; 0.05..0.5
    eval_commands: int = 200  # held-out commands measured after each round; 20..10k
    marker_every: int = 3  # length markers where the words still to come are a multiple of this
    marker_tail: int = 3  # ... and before each of the last this many words; both 0: no markers
    # grounding titles after <|ctx|> in the input (needs a ``context`` function); 0: none; 0..20
    context_items: int = 0
    seed: int = 0  # seeds data split, sampling and initialisation

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be at least 1")
        if not 0.0 < self.held_out < 1.0:
            raise ConfigError(f"held_out {self.held_out} must be between 0 and 1")
        if self.rounds < 0:
            raise ConfigError(f"rounds {self.rounds} must be 0 or more")
        if not (0 <= self.marker_every < LENGTH_MAX and 0 <= self.marker_tail < LENGTH_MAX):
            raise ConfigError(f"marker_every {self.marker_every} and marker_tail "
                              f"{self.marker_tail} must be between 0 and {LENGTH_MAX - 1}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig(**d["model"])
        elif isinstance(d.get("model"), str):
            if d["model"] not in MODEL_PRESETS:
                raise ConfigError(
                    f"unknown model preset {d['model']!r}; allowed: {', '.join(MODEL_PRESETS)}")
            d["model"] = MODEL_PRESETS[d["model"]]
        return cls(**d)

    @property
    def use_restricted_vocab(self) -> bool:
        return self.base_model == SCRATCH if self.restrict_vocab is None else self.restrict_vocab


@dataclass
class TrainResult:
    """What training produced."""

    model_dir: Path
    version: str
    metrics: dict[str, Any]


def encode_example(rewriter: Rewriter, ex: Example) -> tuple[list[int], int]:
    """Token ids of a training example and the index of its first prompt token.

    Models with length markers (``meta.marker_every`` / ``marker_tail``) get ``<|r=k|>`` between
    words as :func:`rewriters.commands.marker_positions` places them (before the token that opens
    the next word).
    """
    cmd = Command(ex.task, ex.words, ex.bucket if ex.bucket is not None else 0)
    head = rewriter.encode_input(ex.query, cmd)
    body = rewriter.tokenizer.encode(" " + " ".join(ex.prompt.split()))
    if rewriter.marker_ids:
        at = marker_positions(ex.words, rewriter.meta.marker_every, rewriter.meta.marker_tail)
        marked, words, starts = [], 0, rewriter._word_start  # (V,) bool numpy
        for t in body:
            if starts[t]:
                if words in at:
                    marked.append(rewriter.marker_ids[at[words]])
                words += 1
            marked.append(t)
        body = marked
    return head + body + [rewriter.end_id], len(head)


QUERY_FIRST_SHARE = 0.9  # share of training prompts opening with their query that marks it


def _query_first(examples: list[Example]) -> bool:
    """True when the training prompts open with their query's words (catalogue teacher)."""
    hits = sum(starts_with_query(e.query, e.prompt) for e in examples)
    return bool(examples) and hits >= QUERY_FIRST_SHARE * len(examples)


def _unique_words(examples: list[Example]) -> bool:
    """True when no training prompt repeats a word (case-insensitive)."""
    def unique(p: str) -> bool:
        words = p.casefold().split()
        return len(set(words)) == len(words)

    return bool(examples) and all(unique(e.prompt) for e in examples)


def _usable(examples: list[Example]) -> tuple[list[Example], int]:
    keep = [e for e in examples if LENGTH_MIN <= e.words <= LENGTH_MAX]
    return keep, len(examples) - len(keep)


class _Batches:
    """Batches of examples sampled uniformly with replacement, packed into shared rows.

    Each step still sees ``b`` independent examples, but several short ones share a row: every
    example keeps its own positions (0, 1, ...) and a block-diagonal causal mask stops it from
    attending to its row neighbours, so the hidden states are exactly those of unpacked
    examples while about half the padding compute disappears.
    (Grouping batches by length cuts padding too, but puts similar length commands together,
    which hurt length control in our runs: within ±2 words fell from 95% to 83%.)
    """

    def __init__(self, encoded: list[tuple[list[int], int]], pad_id: int, seed: int,
                 row_width: int = 128):
        self.encoded = encoded  # grows in place when UDRL rounds add examples
        self.pad_id = pad_id
        self.row_width = row_width
        self.rng = random.Random(seed)

    def sample(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.encoded[self.rng.randrange(len(self.encoded))] for _ in range(b)]
        return pack_examples(rows, self.pad_id, self.row_width)


def pack_examples(rows: list[tuple[list[int], int]], pad_id: int, row_width: int = 128
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack (token ids, prompt start) examples into rows, first fit by decreasing length.

    Returns:
        ids (R, W), position_ids (R, W), attention mask (R, 1, W, W) bool (True = may attend),
        loss mask (R, W) bool: position t is trained to predict token t+1 (a prompt token).
    """
    width = max(row_width, max(len(ids) for ids, _ in rows))
    bins: list[list[tuple[list[int], int]]] = []
    free: list[int] = []
    for row in sorted(rows, key=lambda r: -len(r[0])):
        at = next((i for i, f in enumerate(free) if f >= len(row[0])), None)
        if at is None:
            bins.append([]), free.append(width)
            at = len(bins) - 1
        bins[at].append(row)
        free[at] -= len(row[0])
    width = max(width - f for f in free)  # trim the common tail of padding
    n = len(bins)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)  # example number within the row
    loss_mask = torch.zeros((n, width), dtype=torch.bool)
    for r, members in enumerate(bins):
        at = 0
        for j, (seq, start) in enumerate(members):
            end = at + len(seq)
            ids[r, at:end] = torch.tensor(seq)
            pos[r, at:end] = torch.arange(len(seq))
            seg[r, at:end] = j
            loss_mask[r, at + start - 1 : end - 1] = True
            at = end
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    mask = (same & causal) | torch.eye(width, dtype=torch.bool)  # padding attends to itself
    return ids, pos, mask[:, None], loss_mask


def _lr_at(step: int, total: int, cfg: TrainConfig, peak: float) -> float:
    warmup = min(cfg.warmup_steps, total // 5)
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _fit(model, batches: _Batches, steps: int, cfg: TrainConfig, lr: float,
         vocab_ids: torch.Tensor | None, remap: torch.Tensor | None, desc: str,
         progress: bool) -> list[float]:
    """Run ``steps`` optimiser steps; returns the loss per step."""
    from tqdm import tqdm

    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=True)  # one kernel per step: ~4x faster updates on CPU
    head = model.get_output_embeddings()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, cfg, lr)
        ids, pos, mask, loss_mask = batches.sample(cfg.batch_size)
        hidden = model.transformer(input_ids=ids, position_ids=pos,
                                   attention_mask=mask).last_hidden_state  # (R, W, C)
        h = hidden[loss_mask]  # (N, C): only positions that predict a prompt token
        target = ids[:, 1:][loss_mask[:, :-1]]  # (N,)
        if vocab_ids is not None:  # softmax over the prompt vocabulary only (K << V)
            logits = h @ head.weight[vocab_ids].T  # (N, K)
            target = remap[target]
        else:
            logits = head(h)  # (N, V)
        loss = F.cross_entropy(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    model.eval()
    return losses


def _plot_losses(curve: list[float], bounds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    y = np.asarray(curve)
    ax.plot(y, alpha=0.3, label="per step")
    w = max(1, len(y) // 50)
    if len(y) >= w:
        ax.plot(np.arange(w - 1, len(y)), np.convolve(y, np.ones(w) / w, mode="valid"),
                label=f"moving mean ({w})")
    for b in bounds:
        ax.axvline(b, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("optimiser step (dashed: UDRL round starts)")
    ax.set_ylabel("prompt-token cross-entropy")
    ax.set_title("Rewriter training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_rewriter(
    examples: list[Example], scorer: Scorer, out_dir: str | Path, cfg: TrainConfig,
    tokenizer_source: str = BUILTIN_TOKENIZER, progress: bool = True,
    context: Callable[[str], str] | None = None, vocab_texts: Sequence[str] = (),
) -> TrainResult:
    """Train (and, with ``cfg.rounds``, UDRL-improve) a rewriter and save its directory.

    Args:
        examples: distilled examples; missing relevance scores are computed with ``scorer``.
        scorer: relevance scorer; its buckets' edges are computed on the training split.
        out_dir: model directory to write.
        cfg: training configuration.
        tokenizer_source: "builtin" GPT-2 files, or the pretrained base's own tokenizer.
        context: query -> grounding context (catalogue neighbours' titles) for models trained
            with ``cfg.context_items``; it must not see a training query's own clicks.
        vocab_texts: texts whose tokens the output vocabulary must also cover (the catalogue's
            and the queries' words), beyond the distilled prompts' tokens.
    """
    if cfg.context_items and context is None:
        raise ConfigError(f"context_items={cfg.context_items} needs a context function (the "
                          "catalogue's neighbours); pass one or set context_items = 0")
    torch.manual_seed(cfg.seed)
    examples, out_of_range = _usable(list(examples))
    if out_of_range:
        log.warning("%d examples have lengths outside %d-%d words and are not used",
                    out_of_range, LENGTH_MIN, LENGTH_MAX)
    if len(examples) < 10:
        raise DataError(f"only {len(examples)} usable examples; distil more data first")
    train, test = split_by_query(examples, cfg.held_out, cfg.seed)
    if not train or not test:
        raise DataError("too few distinct queries to hold some out; distil more queries")
    train, edges = relabel(train, scorer, progress=progress)  # edges: quantiles of train only
    test, _ = relabel(test, scorer, edges=edges, progress=progress)

    src = tokenizer_source if cfg.base_model == SCRATCH else cfg.base_model
    tokenizer = load_tokenizer(src if src != SCRATCH else BUILTIN_TOKENIZER)
    model = build_model(cfg.base_model, tokenizer, cfg.model)
    meta = RewriterMeta(version="unsaved", base_model=cfg.base_model,
                        model_config=asdict(cfg.model) if cfg.base_model == SCRATCH
                        else {"n_positions": model.config.n_positions},
                        bucket_edges=edges.to_json(), scorer=scorer.name, train_config=asdict(cfg),
                        marker_every=cfg.marker_every, marker_tail=cfg.marker_tail,
                        context_items=cfg.context_items, query_first=_query_first(train),
                        unique_words=_unique_words(train))
    rewriter = Rewriter(model, tokenizer, meta)
    rewriter.context = context if cfg.context_items else None
    n_pos = model.config.n_positions
    encoded, too_long = [], 0
    for e in train:
        seq = encode_example(rewriter, e)
        if len(seq[0]) <= n_pos:
            encoded.append(seq)
        else:
            too_long += 1
    vocab_ids = remap = output_vocab = None
    if cfg.use_restricted_vocab:
        extra = {t for text in vocab_texts for t in tokenizer.encode(" " + " ".join(text.split()))}
        special = set(tokenizer.convert_tokens_to_ids(meta.command_tokens))
        output_vocab = sorted({t for seq, s in encoded for t in seq[s:]} | {rewriter.end_id}
                              | (extra - special))
        vocab_ids = torch.tensor(output_vocab)
        remap = torch.full((len(tokenizer),), -100, dtype=torch.long)
        remap[vocab_ids] = torch.arange(len(output_vocab))
        rewriter.set_output_vocab(output_vocab)
    log.info("training on %d examples (%d too long), %d held-out", len(encoded), too_long, len(test))

    eval_cmds = held_out_commands(test, cfg.eval_commands, cfg.seed)
    curve, bounds, rounds = [], [], []
    batches = _Batches(encoded, rewriter.end_id, cfg.seed)
    t0 = time.perf_counter()
    curve += _fit(model, batches, cfg.steps, cfg, cfg.lr, vocab_ids, remap, "training", progress)
    metrics, _ = evaluate_rewriter(rewriter, scorer, eval_cmds, decoding="greedy")
    rounds.append({"round": 0, "examples": len(encoded), "seconds": time.perf_counter() - t0, **metrics})
    _log_round(rounds[-1])
    data = list(train)
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        new, stats = explore_round(rewriter, scorer, data, edges, cfg, r)
        data += new
        for e in new:
            seq = encode_example(rewriter, e)
            if len(seq[0]) <= n_pos and (remap is None or all(remap[t] >= 0 for t in seq[0][seq[1]:])):
                encoded.append(seq)
        bounds.append(len(curve))
        curve += _fit(model, batches, cfg.round_steps, cfg, cfg.lr * cfg.round_lr_ratio,
                      vocab_ids, remap, f"round {r}", progress)
        metrics, _ = evaluate_rewriter(rewriter, scorer, eval_cmds, decoding="greedy")
        rounds.append({"round": r, "examples": len(encoded), "seconds": time.perf_counter() - t0,
                       **stats, **metrics})
        _log_round(rounds[-1])

    out = Path(out_dir)
    meta = save_model_dir(out, model, tokenizer, meta, output_vocab)
    write_examples(out / "heldout.jsonl", test)
    if cfg.rounds:
        write_examples(out / "udrl_explored.jsonl", data[len(train):])
    _plot_losses(curve, bounds, out / "loss_curve.png")
    report = {"version": meta.version, "train_examples": len(encoded), "too_long": too_long,
              "out_of_range": out_of_range, "heldout_examples": len(test),
              "bucket_edges": edges.to_json(), "final_loss": float(np.mean(curve[-20:])),
              "rounds": rounds, "loss_curve": [round(x, 4) for x in curve]}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return TrainResult(out, meta.version, report)


def _log_round(r: dict[str, Any]) -> None:
    log.info("round %d: length MSE %.2f, within±2 %.1f%%, relevance by bucket %s",
             r["round"], r["length_mse"], 100 * r["within_2"], r["relevance_by_bucket"])
