"""Errors at the plugin boundary, and the one table that maps them to statuses.

The two lower packages keep error families of their own (they never import each other)::

    UdrlError                      (rewriters.errors)
    ├── ConfigError → QueryTooLongError, DataError, ModelError, TeacherError
    └── ServiceError               a request the service cannot serve (this module)
        └── QueueFullError         the micro-batcher's queue is full

    IndexerError                   (indexers.errors)
    ├── ConfigError, DataError, ModelError
    └── IndexStoreError → EncoderMismatchError, PublishRefusedError

Code that must catch "any error this project raises on purpose" catches ``UDRL_ERRORS``; the CLI
turns one into an ``error: ...`` line and ``exit_code`` (2), and the HTTP service answers
``http_status`` with ``{"error": {"code": error_code, ...}}`` (plus ``http_headers``). The table
is looked up along the class's MRO, so the most specific row wins:

    ==========================  ====  ====  =================
    class                       exit  HTTP  code
    ==========================  ====  ====  =================
    QueueFullError              2     503   queue_full (Retry-After: 1)
    QueryTooLongError           2     400   query_too_long
    indexers IndexStoreError    2     503   index_unavailable
    UdrlError (everything else) 2     400   bad_request
    IndexerError (the rest)     2     400   bad_request
    ==========================  ====  ====  =================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from indexers import errors as _ix
from indexers.errors import EncoderMismatchError, IndexerError, IndexStoreError
from rewriters.errors import (ConfigError, DataError, ModelError, QueryTooLongError, TeacherError,
                              UdrlError)

__all__ = [
    "UdrlError", "ConfigError", "DataError", "ModelError", "TeacherError", "QueryTooLongError",
    "IndexerError", "IndexStoreError", "EncoderMismatchError", "ServiceError", "QueueFullError",
    "UDRL_ERRORS", "CONFIG_ERRORS", "DATA_ERRORS", "MODEL_ERRORS", "Status", "status_of",
    "exit_code", "http_status", "error_code", "http_headers",
]


class ServiceError(UdrlError):
    """A request the service cannot serve."""


class QueueFullError(ServiceError):
    """``service.max_queue`` jobs already wait for the model; the request was not queued."""


# "either family" tuples, for ``except`` and ``isinstance``
UDRL_ERRORS: tuple[type[Exception], ...] = (UdrlError, IndexerError)
CONFIG_ERRORS: tuple[type[Exception], ...] = (ConfigError, _ix.ConfigError)
DATA_ERRORS: tuple[type[Exception], ...] = (DataError, _ix.DataError)
MODEL_ERRORS: tuple[type[Exception], ...] = (ModelError, _ix.ModelError)


@dataclass(frozen=True)
class Status:
    """How one error class is reported at each edge."""

    exit: int  # the CLI's exit status
    http: int  # the HTTP status the service answers
    code: str  # the ``error.code`` of the service's JSON body
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP response headers


_BAD_REQUEST = Status(2, 400, "bad_request")
_TABLE: dict[type[Exception], Status] = {
    QueueFullError: Status(2, 503, "queue_full", {"Retry-After": "1"}),
    QueryTooLongError: Status(2, 400, "query_too_long"),
    IndexStoreError: Status(2, 503, "index_unavailable"),
    UdrlError: _BAD_REQUEST,
    IndexerError: _BAD_REQUEST,
}


def status_of(exc: BaseException) -> Status | None:
    """The table row for ``exc`` (its most specific class first); None for an error that is not
    the project's (a bug, or an error of a library the project did not translate)."""
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return None


def exit_code(exc: BaseException) -> int:
    """The CLI's exit status for ``exc``: 2 for the project's errors, 1 (as an uncaught
    exception would give) for anything else."""
    got = status_of(exc)
    return got.exit if got else 1


def http_status(exc: BaseException) -> int:
    """The HTTP status for ``exc``: 400 or 503 for the project's errors, 500 otherwise."""
    got = status_of(exc)
    return got.http if got else 500


def error_code(exc: BaseException) -> str:
    """The JSON body's ``error.code`` for ``exc`` (``internal`` for an error not the project's)."""
    got = status_of(exc)
    return got.code if got else "internal"


def http_headers(exc: BaseException) -> dict[str, str]:
    """Extra response headers for ``exc`` (``Retry-After`` when the queue is full)."""
    got = status_of(exc)
    return dict(got.headers) if got else {}
