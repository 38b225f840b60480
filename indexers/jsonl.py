"""Reading line files with line-numbered rejects, and the one-line form of a validation error.

Every reader of a catalogue, manifest or log walks its file the same way: numbered lines, a
``DataError`` naming the file when it is missing or unreadable, blank lines skipped, and a bad
line turned into a reject reason rather than an exception::

    for n, obj, reason in json_objects(numbered_lines(path, "catalogue")):
        if reason is not None:
            rejects.append((path, n, reason))     # "not JSON: ... at column 3"
            continue
        try:
            rec = Record.model_validate(obj)
        except ValidationError as e:
            rejects.append((path, n, first_error(e)))   # "title: Field required"

This is the project's one generic implementation (``plugin`` uses it too, passing its own
``error`` class); ``rewriters`` cannot import it, so ``rewriters.data`` keeps its own reading
of the examples file and the same short formatter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["first_error", "json_objects", "numbered_lines"]


def numbered_lines(path: str | os.PathLike[str], what: str, *, encoding_errors: str = "strict",
                   undecodable: str = "cannot be read",
                   error: type[Exception] = DataError) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its line end) of a UTF-8 text file, read lazily.

    Args:
        path: the file.
        what: what the file is, for messages ("catalogue", "query log", "manifest").
        encoding_errors: ``open``'s ``errors``; "replace" reads undecodable bytes as U+FFFD.
        undecodable: the message's words for a file that is not UTF-8 (after its path).
        error: the class raised; a caller outside this package passes its own ``DataError``.

    Raises:
        error: "<what> <path> does not exist", "<what> <path> <undecodable>: <why>" or
            "<what> <path> cannot be read: <why>" (raised where the iteration reaches it).
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8", errors=encoding_errors) as fh:
            yield from enumerate(fh, start=1)
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} {undecodable}: {e}") from e
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e}") from e


def json_objects(lines: Iterable[tuple[int, str]], bad_json: str = "not JSON"
                 ) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, JSON object or None, reject reason or None) per non-blank line.

    Args:
        lines: numbered lines (``numbered_lines``).
        bad_json: the reason's first words for a line that does not parse.

    Yields:
        ``(n, obj, None)`` for a JSON object; ``(n, None, "<bad_json>: <msg> at column <c>")``
        or ``(n, None, "expected a JSON object, got <type>")`` otherwise.
    """
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"{bad_json}: {e.msg} at column {e.colno}"
            continue
        if not isinstance(obj, dict):
            yield n, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        yield n, obj, None


def first_error(e: Any, *, drop: Collection[Any] = (), empty: str | None = "record",
                missing: str | None = None) -> str:
    """``"<loc>: <msg>"`` of the first error a pydantic (or FastAPI) validation reports.

    Args:
        e: a ``ValidationError`` or FastAPI ``RequestValidationError`` (anything with
            ``errors()``), or such an ``errors()`` list.
        drop: location parts left out (FastAPI's ``"body"``).
        empty: the location written when none is left (a whole-record error); None writes
            the message alone.
        missing: the words written instead of pydantic's message for a missing field.

    Returns:
        The one line, e.g. ``"tags.0: Input should be a valid string"``; "" without errors.
    """
    errors: Sequence[Mapping[str, Any]] = e.errors() if hasattr(e, "errors") else e
    if not errors:
        return ""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in drop)
    msg = missing if missing is not None and first.get("type") == "missing" else first["msg"]
    if not where and empty is None:
        return msg
    return f"{where or empty}: {msg}"
