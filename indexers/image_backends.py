"""The image index backends by name: one registry, and opening the live index through it.

::

    index = open_image_index("faiss", root="ws/indexes/images", encoder_name=clip.name,
                             dim=clip.dim)
    index = open_image_index("elasticsearch", settings=EsSettings(hosts=..., alias="udrl-images"),
                             encoder_name=clip.name, dim=clip.dim)
    hits = index.search(clip.encode_texts(["red bicycle"]), k=10, filters={"license": "cc0"})

Both serve the interface in ``image_search`` (``ImageSearchIndex``, returning
``Hit(id, score = cosine, metadata)`` lists best first for the same vectors), so the pipeline's
channels use either unchanged; this module is the only one that knows every backend, and it
imports each lazily. Builders: ``image_build`` (FAISS store versions) and ``es_image_build`` (an
index per build behind an alias); rollback: ``publish.rollback_images``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError
from .image_search import ImageSearchIndex

__all__ = ["IMAGE_BACKENDS", "ImageSearchIndex", "open_image_index"]


def _open_faiss(root, encoder_name: str | None = None, dim: int | None = None):
    from .images import load_image_index

    return load_image_index(root, encoder_name, dim)


def _open_elasticsearch(settings, encoder_name: str | None = None, dim: int | None = None,
                        config=None, client=None):
    from .es_images import open_es_image_index  # the client: load only when used

    return open_es_image_index(settings, encoder_name, dim, config, client)


# name -> opener of the live version (FAISS: ``root``, the IndexStore directory;
# Elasticsearch: ``settings``, an es_schema.EsSettings with the image alias)
IMAGE_BACKENDS: dict[str, Callable[..., ImageSearchIndex]] = {
    "faiss": _open_faiss,
    "elasticsearch": _open_elasticsearch,
}


def open_image_index(backend: str, **opts: Any) -> ImageSearchIndex:
    """Open the live image index of ``backend`` (see ``IMAGE_BACKENDS`` for its options).

    Raises:
        ConfigError: an unknown backend.
        IndexStoreError: nothing published yet, or it cannot be read.
        EncoderMismatchError: it was built by another encoder than ``encoder_name``/``dim``.
    """
    opener = IMAGE_BACKENDS.get(backend)
    if opener is None:
        raise ConfigError(f"unknown image index backend {backend!r}; allowed: "
                          f"{', '.join(IMAGE_BACKENDS)}")
    return opener(**opts)
