"""Stand-ins for a build that dies midway: ``Wrapped`` delegates to a real image encoder,
counts what it encoded, and raises ``Killed`` before a chosen batch (shared by the build,
resume, Ray and publish-reliability tests)."""

from __future__ import annotations

__all__ = ["Killed", "Wrapped"]


class Killed(Exception):
    """Stands in for SIGKILL/Ctrl-C in the middle of a build."""


class Wrapped:
    """Delegates to a real encoder, counts images, and dies before batch ``die_at`` (0-based)."""

    def __init__(self, enc, die_at: int | None = None, name: str | None = None):
        self.enc, self.die_at, self.batches, self.images = enc, die_at, 0, 0
        self.name, self.dim = name or enc.name, enc.dim

    def preprocess(self, image):
        return self.enc.preprocess(image)

    def encode_pixels(self, pixels):
        if self.die_at is not None and self.batches >= self.die_at:
            raise Killed
        self.batches += 1
        self.images += len(pixels)
        return self.enc.encode_pixels(pixels)
