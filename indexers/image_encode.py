"""Encoding one batch of catalogue records, and the runners that feed batches to it.

Every image build turns records into vectors through the same two per-batch functions:

    prepare_batch(records, encoder)    decode + preprocess -> ids, pixels (B, 3, H, W), rejects
    encode_prepared(ids, pixels, enc)  pixels -> (B, D) float32 vectors (shape checked)
    encode_batch(records, encoder)     both in one call (what a remote worker runs)

A runner decides where those run and hands each finished batch to the build's ``commit``
callback, which stores it durably (``image_resume.commit_chunk``) before the next counts.
This module holds the runner interface (``EncodeRunner``) and the ``local`` runner; the runners
are looked up by name in ``image_runners.RUNNERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

import numpy as np
import torch

from .catalog_images import ImageRecord, open_image
from .encoders import ImageEncoder
from .errors import DataError, ModelError

__all__ = ["Commit", "EncodeRunner", "EncodedBatch", "LocalRunner", "encode_batch",
           "encode_prepared", "prepare_batch"]

# commit(ids, vectors (B, D) float32, reject rows, records handled): store one finished batch
Commit = Callable[[list[str], np.ndarray, list[dict], int], None]


class EncodedBatch(NamedTuple):
    """One batch after encoding: the ids that decoded, their vectors, and the reject rows."""

    ids: list[str]
    vectors: np.ndarray  # (len(ids), D) float32, L2-normalised by the encoder
    rejects: list[dict]  # {"file", "line", "id", "reason"} for records that did not decode


class EncodeRunner(Protocol):
    """Where a build's batches are encoded."""

    name: str  # recorded in the build report ("local", "ray")

    def run(self, todo: Sequence[ImageRecord], encoder: ImageEncoder, batch_size: int,
            commit: Commit) -> None:
        """Encode ``todo`` in batches of ``batch_size`` and ``commit`` each finished batch.

        ``encoder`` is the build's encoder: the local runner encodes with it; a remote runner
        checks that its workers' encoders have its name and dim.
        """
        ...


def prepare_batch(records: Sequence[ImageRecord], encoder: ImageEncoder
                  ) -> tuple[list[str], torch.Tensor | None, list[dict]]:
    """Decode and preprocess one batch.

    Returns:
        ids that decoded, their pixels (B, 3, H, W) or None when none did, and reject rows
        ``{"file", "line", "id", "reason"}`` for the rest.
    """
    ids, pixels, bad = [], [], []
    for r in records:
        try:
            pixels.append(encoder.preprocess(open_image(r.path)))
            ids.append(r.id)
        except (DataError, OSError, ValueError, RuntimeError, TypeError) as e:
            # DataError: the file does not decode; others: preprocess failed on a decoded image
            why = str(e) if isinstance(e, DataError) else f"cannot preprocess {r.path}: {e!r}"
            bad.append({"file": r.source, "line": r.line, "id": r.id, "reason": why})
    return ids, (torch.stack(pixels) if pixels else None), bad


def encode_prepared(ids: Sequence[str], pixels: torch.Tensor | None,
                    encoder: ImageEncoder) -> np.ndarray:
    """(len(ids), D) float32 vectors of a prepared batch; raises ModelError on a wrong shape."""
    vecs = np.zeros((0, encoder.dim), np.float32)
    if pixels is not None:
        vecs = np.ascontiguousarray(encoder.encode_pixels(pixels), np.float32)  # (B, D)
    if vecs.shape != (len(ids), encoder.dim):
        raise ModelError(f"encoder {encoder.name} gave {vecs.shape} for {len(ids)} images")
    return vecs


def encode_batch(records: Sequence[ImageRecord], encoder: ImageEncoder) -> EncodedBatch:
    """``prepare_batch`` then ``encode_prepared``: one batch from records to vectors."""
    ids, pixels, bad = prepare_batch(records, encoder)
    return EncodedBatch(ids, encode_prepared(ids, pixels, encoder), bad)


class LocalRunner:
    """Encodes in this process; decode of batch b+1 (loader thread) overlaps encode of b."""

    name = "local"

    def run(self, todo: Sequence[ImageRecord], encoder: ImageEncoder, batch_size: int,
            commit: Commit) -> None:
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-loader") as pool:
            nxt: Future | None = (pool.submit(prepare_batch, batches[0], encoder)
                                  if batches else None)
            try:
                for b in range(len(batches)):
                    ids, pixels, bad = nxt.result()
                    more = b + 1 < len(batches)
                    nxt = pool.submit(prepare_batch, batches[b + 1], encoder) if more else None
                    commit(ids, encode_prepared(ids, pixels, encoder), bad, len(batches[b]))
            finally:
                if nxt is not None:
                    nxt.cancel()

