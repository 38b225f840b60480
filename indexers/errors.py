"""Errors raised by the index package.

Hierarchy (shared root with ``rewriters.errors``)::

    UdrlError
    ├── ConfigError            bad option (unknown index type, k < 1)
    ├── DataError              unreadable catalogue, bad records
    ├── ModelError             an encoder's weights or checkpoint cannot be loaded
    └── IndexStoreError        an index on disk or in Elasticsearch is missing or unusable
        ├── EncoderMismatchError   the index was built by another encoder than the one given
        └── PublishRefusedError    a build failed the publish checks; the live version stays
"""

from __future__ import annotations

from rewriters.errors import ConfigError, DataError, ModelError, UdrlError

__all__ = [
    "ConfigError",
    "DataError",
    "EncoderMismatchError",
    "IndexStoreError",
    "ModelError",
    "PublishRefusedError",
    "UdrlError",
]


class IndexStoreError(UdrlError):
    """An index is missing, incomplete, corrupt, or its backend refused an operation."""


class EncoderMismatchError(IndexStoreError):
    """Opening an index with an encoder (name or dimension) other than the one that built it."""


class PublishRefusedError(IndexStoreError):
    """A build lost too many documents against the live version, or rejected too many
    records; nothing was published. ``check`` holds the numbers (``indexers.publish``)."""

    def __init__(self, message: str, check: object):
        super().__init__(message)
        self.check = check
