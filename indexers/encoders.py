"""CLIP image/text encoders (open_clip) that return L2-normalised float32 vectors.

``ClipEncoder`` wraps one open_clip model. Weights come from a pretrained tag
(``"laion2b_s34b_b79k"``, downloaded by open_clip into its cache), a local checkpoint file,
or nowhere (``pretrained=None``: random weights, seeded so that every process builds the same
model; only good for tests and the offline demo).

``register_tiny_clip()`` adds a very small architecture, ``"udrl-tiny-clip"`` (32-pixel images,
one transformer layer per tower, the real 49,408-token BPE vocabulary), to open_clip's model
registry so that tests run in seconds without any download.

The build pipeline uses the two halves of ``encode_images`` separately: ``preprocess`` (one PIL
image to a tensor; runs in a loader thread) and ``encode_pixels`` (a batch of tensors to vectors).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError, ModelError

__all__ = [
    "RANDOM_INIT_SEED",
    "TINY_CLIP_CONFIG",
    "TINY_CLIP_NAME",
    "ClipEncoder",
    "ImageEncoder",
    "register_tiny_clip",
]

log = logging.getLogger(__name__)

TINY_CLIP_NAME = "udrl-tiny-clip"

# Smallest ViT-CLIP that still exercises the real code path: 2x2 patches of 16 px, one layer
# per tower, width 32 (vision heads = width / head_width = 2), real vocabulary and context.
TINY_CLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "head_width": 16, "layers": 1},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# Random-weight models are initialised under this torch seed so that two processes (a killed
# build and its resume, a build and a search service) get identical vectors for "<arch>/random".
RANDOM_INIT_SEED = 0


class ImageEncoder(Protocol):
    """What ``build_image_index`` needs from an encoder (``ClipEncoder`` or a test wrapper)."""

    name: str  # identifies architecture + weights; stored in index_meta.json
    dim: int  # embedding width D

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...  # (3, H, W)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray: ...  # (B, 3, H, W) -> (B, D)


def register_tiny_clip(name: str = TINY_CLIP_NAME) -> str:
    """Make the tiny test architecture available to open_clip under ``name``.

    open_clip resolves architectures from a module-level registry filled from JSON files;
    adding a dict entry is the file-free equivalent of ``open_clip.add_model_config``.

    Args:
        name: registry key to use.

    Returns:
        The registered name (pass it as ``ClipEncoder(model_name=...)``).
    """
    open_clip.factory._MODEL_CONFIGS[name] = copy.deepcopy(TINY_CLIP_CONFIG)
    return name


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _file_digest(path: Path, n_hex: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n_hex]


class ClipEncoder:
    """An open_clip model that maps images and texts into one L2-normalised space.

    Args:
        model_name: open_clip architecture (``open_clip.list_models()``), e.g. ``"ViT-B-32"``,
            or ``TINY_CLIP_NAME`` (registered automatically).
        pretrained: a pretrained tag known to open_clip (downloaded on first use), a path to a
            local checkpoint file, or None for random weights (a loud warning is logged).
        device: torch device string, e.g. ``"cpu"`` or ``"cuda"``.

    Attributes:
        name: ``"<model_name>/<tag>"``, ``"<model_name>/random"`` or
            ``"<model_name>/file:<stem>-<sha256[:12]>"``; indexes record it and refuse to be
            searched with another encoder.
        dim: embedding width D.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | os.PathLike[str] | None = "laion2b_s34b_b79k",
        device: str = "cpu",
    ):
        if model_name == TINY_CLIP_NAME:
            register_tiny_clip()
        self.model_name = model_name
        self.device = torch.device(device)
        pretrained = os.fspath(pretrained) if pretrained is not None else None
        if pretrained is None:
            weights = "random"
            log.warning(
                "ClipEncoder(%s): NO PRETRAINED WEIGHTS - the model is randomly initialised "
                "(seed %d); its embeddings carry no meaning and search results are noise. "
                "Pass pretrained=<tag or checkpoint path> for real use.",
                model_name,
                RANDOM_INIT_SEED,
            )
        elif _looks_like_path(pretrained) or Path(pretrained).is_file():
            path = Path(pretrained)
            if not path.is_file():
                raise ModelError(
                    f"checkpoint file {path} does not exist; pass an existing file or a tag"
                )
            weights = f"file:{path.stem}-{_file_digest(path)}"
        else:
            weights = pretrained
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=self.device
                )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
            raise ModelError(
                f"cannot load open_clip model {model_name!r} with pretrained={pretrained!r}: {e}. "
                f"Check the name against open_clip.list_models() and the tag against "
                f"open_clip.list_pretrained_tags_by_model({model_name!r})."
            ) from e
        self.model = model.eval()
        self._preprocess = preprocess
        self.name = f"{model_name}/{weights}"
        self.context_length = int(getattr(self.tokenizer, "context_length", 77) or 77)
        self.dim = int(self.encode_texts([""]).shape[1])

    def __repr__(self) -> str:
        return f"ClipEncoder(name={self.name!r}, dim={self.dim}, device={str(self.device)!r})"

    # ---- images ---------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Resize, crop and normalise one PIL image for the model.

        Returns:
            Tensor (3, H, W) float32, H = W = the model's image size.
        """
        return self._preprocess(image.convert("RGB"))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a batch of preprocessed images.

        Args:
            pixels: (B, 3, H, W) output of ``preprocess`` stacked.

        Returns:
            (B, D) float32, each row L2-normalised.
        """
        if pixels.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        feats = self.model.encode_image(pixels.to(self.device))  # (B, D)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode PIL images (any mode or size).

        Returns:
            (N, D) float32, each row L2-normalised.
        """
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))

    # ---- texts ----------------------------------------------------------------------------

    def _clip_text(self, text: str) -> str:
        """Cut ``text`` to a whole-word prefix that still fills the context window.

        open_clip's BPE tokenizer truncates only after encoding the whole string, which takes
        seconds for long texts (quadratic in word length). Encoding a growing prefix until it
        yields at least ``context_length`` tokens gives the same tokens, fast.
        """
        encode = getattr(self.tokenizer, "encode", None)
        if not callable(encode) or not hasattr(self.tokenizer, "sot_token_id"):
            return text  # HF tokenizers truncate efficiently themselves
        limit = self.context_length * 8
        while len(text) > limit:
            head = text[:limit]
            m = re.search(r"\s\S*$", head)  # cut at the last whitespace: no half word
            prefix = head[: m.start()] if m and m.start() > 0 else head
            if len(encode(prefix)) + 2 >= self.context_length:  # + start/end tokens
                return prefix
            limit *= 4
        return text

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts; anything beyond the model's context window is dropped, never an error.

        Returns:
            (N, D) float32, each row L2-normalised.
        """
        if isinstance(texts, str):
            raise ConfigError(
                "encode_texts takes a list of strings; wrap the single text in a list"
            )
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        tokens = self.tokenizer([self._clip_text(t) for t in texts])  # (N, context_length)
        feats = self.model.encode_text(tokens.to(self.device))  # (N, D)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()
