"""MiniLM sentence embeddings in NumPy: the dense channel's query encoder without torch.

Encoding one query with sentence-transformers means importing torch and transformers (seconds);
this is the same BERT forward pass (embeddings, 6 post-LayerNorm encoder layers with erf GELU,
mean pooling over the attention mask, L2 normalisation) in NumPy over the model's own
``model.safetensors`` and ``tokenizer.json``, so a template search from cold loads in well under
a second. Its vectors equal sentence-transformers' to float32 rounding
(``tests/indexers/test_minilm.py``), so indexes built with either search alike.

Reads a sentence-transformers folder of a BERT model with mean pooling (the shipped
all-MiniLM-L6-v2 is one); anything else raises ``ModelError`` and the caller uses
sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ModelError

__all__ = ["NumpyMiniLM", "can_load"]

_BATCH = 64  # texts per forward pass


def can_load(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` is a sentence-transformers BERT folder this module reads."""
    d = Path(model_dir)
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        pooling = json.loads((d / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (cfg.get("model_type") == "bert" and cfg.get("hidden_act") == "gelu"
            and cfg.get("position_embedding_type", "absolute") == "absolute"
            and pooling.get("pooling_mode_mean_tokens") is True
            and not any(pooling.get(k) for k in ("pooling_mode_cls_token",
                                                  "pooling_mode_max_tokens",
                                                  "pooling_mode_mean_sqrt_len_tokens"))
            and (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file())


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 (below float32 resolution near 1)
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                         + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class NumpyMiniLM:
    """A sentence-transformers BERT encoder (mean pooling, normalised) run in NumPy.

    Args:
        model_dir: the sentence-transformers folder (see :func:`can_load`).
        name: the encoder name indexes record (must match the one they were built with).
        cache_size: encoded texts kept in memory (the service sees the same queries again).
    """

    def __init__(self, model_dir: str | Path, name: str, cache_size: int = 100_000):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        d = Path(model_dir)
        if not can_load(d):
            raise ModelError(f"{d} is not a sentence-transformers BERT folder with mean pooling")
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        st_cfg = d / "sentence_bert_config.json"
        max_len = (json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length", 256)
                   if st_cfg.is_file() else 256)
        self.name, self.dim = name, int(cfg["hidden_size"])
        self.heads, self.eps = int(cfg["num_attention_heads"]), float(cfg["layer_norm_eps"])
        self.layers = int(cfg["num_hidden_layers"])
        w = load_file(str(d / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items()}
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(min(int(max_len), int(cfg["max_position_embeddings"])))
        self.cache_size = cache_size
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        for at in range(0, len(todo), _BATCH):
            chunk = todo[at:at + _BATCH]
            fresh.update(zip(chunk, self._forward(chunk)))
        if len(self._cache) + len(fresh) > self.cache_size:
            self._cache.clear()
        self._cache.update(fresh)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])

    def _forward(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(list(texts))
        n = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), n), dtype=np.int64)
        mask = np.zeros((len(enc), n), dtype=np.float32)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, 1.0
        w, eps = self.w, self.eps
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n][None]
             + w["embeddings.token_type_embeddings.weight"][0])  # (B, T, C)
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        b, t, c = x.shape
        h, hd = self.heads, c // self.heads
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # (B, 1, 1, T)

        def dense(v, name):
            return v @ w[f"{name}.weight"].T + w[f"{name}.bias"]

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (dense(x, f"{p}.attention.self.{m}").reshape(b, t, h, hd).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))  # (B, H, T, hd)
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias  # (B, H, T, T)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
            x = _layer_norm(x + dense(ctx, f"{p}.attention.output.dense"),
                            w[f"{p}.attention.output.LayerNorm.weight"],
                            w[f"{p}.attention.output.LayerNorm.bias"], eps)
            mid = dense(x, f"{p}.intermediate.dense")
            mid = 0.5 * mid * (1.0 + _erf(mid / np.sqrt(2.0)))
            x = _layer_norm(x + dense(mid, f"{p}.output.dense"),
                            w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"],
                            eps)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)
