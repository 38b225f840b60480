"""Logging of the ``udrl`` commands and the service: text or one JSON object per line.

The project's own loggers (``plugin``, ``rewriters``, ``indexers``, ``uvicorn``) log at INFO;
everything else at WARNING, so libraries that announce each step at INFO (open_clip logs every
model it builds on the root logger) stay quiet unless ``--verbose`` is given.

A JSON line::

    {"ts": "2026-05-02T10:00:00.123Z", "level": "WARNING", "logger": "plugin.service",
     "message": "POST /v1/rewrite -> 422 invalid_request: length: ..."}

with ``exc`` (the traceback) when there is one, and ``client``, ``method``, ``path``,
``status`` on uvicorn's access lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Literal

__all__ = ["JsonFormatter", "configure_logging", "udrl_version"]

OWN = ("plugin", "rewriters", "indexers", "bench", "udrl", "uvicorn")
# chatty even at --verbose: their DEBUG lines bury ours
NOISY = ("httpx", "httpcore", "urllib3", "matplotlib", "PIL", "filelock", "fsspec",
         "elastic_transport", "faiss.loader", "sentence_transformers", "transformers")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def udrl_version() -> str:
    """The installed udrl-search version (``udrl --version``, ``udrl_build_info``)."""
    try:
        return package_version("udrl-search")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and \
                len(record.args) == 5:
            client, method, path, _, status = record.args
            out.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of the record
    (test runners and daemons swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool = False, fmt: Literal["text", "json"] = "text") -> None:
    """Send log records to stderr as ``fmt``; INFO for the project, WARNING for the rest.

    Calling it again replaces the handler it installed before (``serve --log-format json``
    after the command line's text setup); handlers others installed stay.
    """
    if fmt not in ("text", "json"):
        from rewriters.errors import ConfigError

        raise ConfigError(f"unknown log format {fmt!r}; allowed: text, json")
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_udrl", False)]:
        root.removeHandler(h)
    handler = _Stderr()
    handler._udrl = True
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in OWN:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
