"""The encode runners by name: where an image build's batches are encoded.

    local   this process: decode of batch b+1 in a loader thread overlaps encode of batch b
            (``image_encode.LocalRunner``)
    ray     a pool of encoder actors on a Ray cluster (``image_ray.RayRunner``; needs Ray)

The interface (``image_encode.EncodeRunner``) lives beside the per-batch functions both runners
use; this registry is the only module that knows every runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .image_encode import EncodeRunner, LocalRunner

__all__ = ["RUNNERS", "make_runner"]


def _ray_runner(**options: Any) -> EncodeRunner:
    from .image_ray import RayRunner  # imports Ray: load on use

    return RayRunner(**options)


RUNNERS: dict[str, Callable[..., EncodeRunner]] = {
    "local": lambda **options: LocalRunner(**options),
    "ray": _ray_runner,
}


def make_runner(name: str, **options: Any) -> EncodeRunner:
    """The runner registered as ``name``, built with ``options`` (see each runner's class)."""
    factory = RUNNERS.get(name)
    if factory is None:
        raise ConfigError(f"unknown encode runner {name!r}; allowed: {', '.join(RUNNERS)}")
    return factory(**options)
