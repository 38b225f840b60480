"""Errors raised by the index package.

Hierarchy (a root of its own: ``indexers`` never imports ``rewriters``; ``plugin.errors`` maps
both families to exit and HTTP statuses)::

    IndexerError
    ├── ConfigError            bad option (unknown index type, k < 1); also a ValueError
    ├── DataError              unreadable catalogue, bad records
    ├── ModelError             an encoder's weights or checkpoint cannot be loaded
    └── IndexStoreError        an index on disk or in Elasticsearch is missing or unusable
        ├── EncoderMismatchError   the index was built by another encoder than the one given
        └── PublishRefusedError    a build failed the publish checks; the live version stays

Every message names the bad value and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "EncoderMismatchError",
    "IndexStoreError",
    "IndexerError",
    "ModelError",
    "PublishRefusedError",
]


class IndexerError(Exception):
    """Base class of every error the index package raises on purpose."""


class ConfigError(IndexerError, ValueError):
    """A caller-supplied option or value is invalid."""


class DataError(IndexerError):
    """A catalogue, manifest or log cannot be read or does not validate."""


class ModelError(IndexerError):
    """An encoder's weights or checkpoint are missing, incomplete or incompatible."""


class IndexStoreError(IndexerError):
    """An index is missing, incomplete, corrupt, or its backend refused an operation."""


class EncoderMismatchError(IndexStoreError):
    """Opening an index with an encoder (name or dimension) other than the one that built it."""


class PublishRefusedError(IndexStoreError):
    """A build lost too many documents against the live version, or rejected too many
    records; nothing was published. ``check`` holds the numbers (``indexers.publish``)."""

    def __init__(self, message: str, check: object):
        super().__init__(message)
        self.check = check
