"""Errors raised by the rewriter package.

Hierarchy (``plugin`` extends it; ``indexers`` has a root of its own, ``IndexerError``, and
``plugin.errors`` maps both families to exit and HTTP statuses)::

    UdrlError
    ├── ConfigError     bad option or value given by the caller (unknown task, length out of range)
    │   └── QueryTooLongError   the query leaves too little of the model's window for the prompt
    ├── DataError       unreadable or invalid input data (missing file, bad JSONL line)
    ├── ModelError      missing, incomplete or incompatible model directory
    └── TeacherError    the teacher endpoint failed or replied with something unusable

Every message names the bad value and, where there is one, the fix.
"""

from __future__ import annotations

__all__ = ["UdrlError", "ConfigError", "QueryTooLongError", "DataError", "ModelError",
           "TeacherError"]


class UdrlError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(UdrlError, ValueError):
    """A caller-supplied option or value is invalid."""


class QueryTooLongError(ConfigError):
    """The query, with its command, leaves too few tokens of the model's window for the prompt."""


class DataError(UdrlError):
    """Input data cannot be read or does not validate."""


class ModelError(UdrlError):
    """A model directory is missing, incomplete or incompatible."""


class TeacherError(UdrlError):
    """The teacher endpoint failed or its reply could not be parsed."""
