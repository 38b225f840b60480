"""Errors at the plugin boundary.

Hierarchy::

    UdrlError                      (rewriters.errors)
    ├── ConfigError, DataError, ModelError, TeacherError   (rewriters.errors)
    ├── IndexStoreError → EncoderMismatchError             (indexers.errors)
    └── ServiceError               a request the service cannot serve (mapped to HTTP 4xx/5xx)
        └── QueueFullError         the micro-batcher's queue is full (HTTP 503 under
                                   service.queue_full = "503")

The CLI turns any UdrlError into one ``error: ...`` line and exit status 2; the HTTP service maps
them to status codes at its edge only.
"""

from __future__ import annotations

from indexers.errors import EncoderMismatchError, IndexStoreError
from rewriters.errors import ConfigError, DataError, ModelError, TeacherError, UdrlError

__all__ = [
    "UdrlError", "ConfigError", "DataError", "ModelError", "TeacherError",
    "IndexStoreError", "EncoderMismatchError", "ServiceError", "QueueFullError",
]


class ServiceError(UdrlError):
    """A request the service cannot serve."""


class QueueFullError(ServiceError):
    """``service.max_queue`` jobs already wait for the model; the request was not queued."""
