"""Requests a serving engine cannot answer identically run on the PyTorch ``Rewriter``.

Mixed in before ``RewriterBase`` by the engines that serve without torch (ONNX Runtime,
CTranslate2): each says which requests leave it (``fallback_reason``); those run on the PyTorch
engine of the same model directory, built on first need (logged once), or are refused with a
ConfigError when there is none. The request is checked once, by ``RewriterBase.rewrite_batch``;
the PyTorch engine receives it checked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..commands import Command
from ..errors import ConfigError, ModelError
from .base import Decoding, Rewrite, RewriterBase
from .clip_count import clip_token_count_light

__all__ = ["TorchFallback", "torch_fallback"]

log = logging.getLogger(__name__)


def torch_fallback(path: Path, enabled: bool, device: str = "cpu", batch_size: int = 32
                   ) -> Callable[[], RewriterBase] | None:
    """What a serving engine's loader hands its engine: a builder of the PyTorch engine of the
    same model directory (loaded on first need), or None when ``enabled`` is off."""
    if not enabled:
        return None

    def load() -> RewriterBase:
        from .torch_engine import load_rewriter

        return load_rewriter(path, device=device, batch_size=batch_size)

    return load


class TorchFallback:
    """Routes what ``fallback_reason`` names to the PyTorch engine; see the module docstring."""

    _loader = "the engine's loader"  # named in the error when no fallback is configured

    def _init_fallback(self, fallback: Callable[[], RewriterBase] | None) -> None:
        self._make_fallback = fallback
        self._fallback: RewriterBase | None = None
        self._fallback_lock = threading.Lock()

    @staticmethod
    def fallback_reason(opts: Decoding) -> str | None:
        """Why a request runs on the PyTorch engine, or None when this engine serves it."""
        raise NotImplementedError

    def torch_engine(self) -> RewriterBase:
        """The PyTorch ``Rewriter`` of the same model directory, loaded on first use."""
        with self._fallback_lock:  # one load even when requests arrive together
            if self._fallback is None:
                if self._make_fallback is None:
                    raise ConfigError("this request needs the PyTorch engine and none is "
                                      "configured; load with engine='torch' or "
                                      f"{self._loader}(fallback=True)")
                engine = self._make_fallback()
                if engine.version != self.version:
                    raise ModelError(f"fallback model version {engine.version} is not "
                                     f"{self.version}")
                self._fallback = engine
            self._fallback.context = getattr(self, "context", None)  # the same input
        return self._fallback

    def run_checked(self, items: list[tuple[str, Command]], opts: Decoding,
                    progress: bool = False) -> list[list[Rewrite]]:
        """As ``RewriterBase.run_checked``; ``fallback_reason`` says what runs on PyTorch."""
        reason = self.fallback_reason(opts)
        if reason is not None:
            if self._fallback is None:
                log.info("running on the PyTorch engine (%s)", reason)
            return self.torch_engine().run_checked(items, opts, progress)
        return super().run_checked(items, opts, progress)

    def _release_fallback(self) -> None:
        with self._fallback_lock:
            if self._fallback is not None:
                self._fallback.close()
                self._fallback = None
            self._make_fallback = None

    def _clip_tokens(self, text: str) -> int:
        return clip_token_count_light(text)  # open_clip's tokenizer would import torch
