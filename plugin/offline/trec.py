"""Evaluation files: query files (TSV/JSONL), TREC qrels, and TREC run files.

Formats (whitespace-separated TREC columns, so ids and tags may not contain whitespace)::

    queries.tsv    qid<TAB>query          optional "qid<TAB>query" header, '#' comments
    queries.jsonl  {"qid": "q1", "query": "red barn at dusk"}
    qrels          qid 0 doc_id grade     grade: integer >= 0, 0 = judged not relevant
    run            qid Q0 doc_id rank score tag

Hand-written files are small and curated, so a bad line raises :class:`DataError` naming the file
and line (as ``rewriters.queries.read_queries`` does) instead of being skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexers.jsonl import numbered_lines
from rewriters.errors import ConfigError, DataError
from rewriters.files import file_mode

__all__ = [
    "EvalQuery",
    "TrecRun",
    "QUERY_FORMATS",
    "read_eval_queries",
    "read_qrels",
    "run_tag",
    "write_trec_run",
    "read_trec_run",
]

QUERY_FORMATS = ("tsv", "jsonl")
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation query."""

    qid: str  # identifier shared with the qrels; non-empty, no whitespace
    query: str  # the user's search text, single line, whitespace-normalised


@dataclass
class TrecRun:
    """A run read back from a TREC run file."""

    tag: str  # the run tag (last column), the same on every line
    hits: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # qid → ranked hits


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory; pass a file")
    for n, line in numbered_lines(path, what, error=DataError):
        yield n, line.rstrip("\r\n")


def _check_id(value: object, where: str, name: str) -> str:
    if not isinstance(value, str) or not value or _SPACE.search(value):
        raise DataError(f"{where}: {name} {value!r} must be a non-empty string without whitespace")
    return value


def _query_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in QUERY_FORMATS:
            raise ConfigError(f"unknown query format {fmt!r}; allowed: {', '.join(QUERY_FORMATS)}")
        return fmt
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        return "tsv"
    for _, line in _lines(path, "query file"):  # unknown suffix: sniff the first record
        if line.strip():
            return "jsonl" if line.lstrip().startswith("{") else "tsv"
    return "tsv"


def _parse_tsv(path: Path, n: int, line: str) -> tuple[str, str] | None:
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(f"{path}:{n}: expected 'qid<TAB>query', got {len(fields)} field(s)")
    return fields[0].strip(), fields[1]


def _parse_jsonl(path: Path, n: int, line: str) -> tuple[str, str] | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: not JSON: {e.msg}") from e
    if not isinstance(rec, dict):
        raise DataError(f"{path}:{n}: expected an object with 'qid' and 'query'")
    qid, query = rec.get("qid"), rec.get("query")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise DataError(f"{path}:{n}: 'qid' must be a string or integer, got {qid!r}")
    if not isinstance(query, str):
        raise DataError(f"{path}:{n}: 'query' must be a string, got {query!r}")
    return str(qid).strip(), query


def read_eval_queries(path: str | os.PathLike[str], fmt: str | None = None) -> list[EvalQuery]:
    """Read evaluation queries from TSV (``qid<TAB>query``) or JSONL (``{"qid", "query"}``).

    Args:
        path: a UTF-8 file. TSV may start with a ``qid<TAB>query`` header; blank lines and (TSV
            only) ``#`` comment lines are skipped.
        fmt: "tsv" or "jsonl"; None picks by suffix (.jsonl/.json, .tsv/.txt/.tab) or content.

    Returns:
        The queries in file order.

    Raises:
        DataError: a malformed line, an empty query, a qid with whitespace or a repeated qid,
            naming file and line; or a file with no queries.
    """
    path = Path(path)
    parse = _parse_jsonl if _query_format(path, fmt) == "jsonl" else _parse_tsv
    out: list[EvalQuery] = []
    first_line: dict[str, int] = {}
    for n, line in _lines(path, "query file"):
        rec = parse(path, n, line)
        if rec is None:
            continue
        qid, query = rec
        if not first_line and parse is _parse_tsv and (qid.lower(), query.strip().lower()) == (
                "qid", "query"):
            continue  # header
        _check_id(qid, f"{path}:{n}", "qid")
        query = " ".join(query.split())
        if not query:
            raise DataError(f"{path}:{n}: query {qid!r} is empty")
        if qid in first_line:
            raise DataError(f"{path}:{n}: qid {qid!r} repeats line {first_line[qid]}; "
                            "qids must be unique")
        first_line[qid] = n
        out.append(EvalQuery(qid, query))
    if not out:
        raise DataError(f"query file {path} holds no queries")
    return out


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read graded TREC qrels: ``qid iteration doc_id grade`` per line (iteration is ignored).

    Returns:
        qid → {doc_id: grade}; grade 0 means judged not relevant.

    Raises:
        DataError: a line without 4 columns, a grade that is not an integer >= 0, or a
            (qid, doc_id) pair judged twice, naming file and line; or an empty file.
    """
    path = Path(path)
    out: dict[str, dict[str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    for n, line in _lines(path, "qrels file"):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise DataError(f"{path}:{n}: expected 'qid iteration doc_id grade', "
                            f"got {len(fields)} column(s)")
        qid, _, doc, grade = fields
        try:
            g = int(grade)
        except ValueError:
            g = -1
        if g < 0:
            raise DataError(f"{path}:{n}: grade {grade!r} must be an integer >= 0 "
                            "(map negative 'junk' labels to 0)")
        if (qid, doc) in seen:
            raise DataError(f"{path}:{n}: query {qid!r} judges {doc!r} again "
                            f"(first on line {seen[qid, doc]})")
        seen[qid, doc] = n
        out.setdefault(qid, {})[doc] = g
    if not out:
        raise DataError(f"qrels file {path} holds no judgements")
    return out


def run_tag(mode: str, command: str | None = None, model_version: str | None = None) -> str:
    """A TREC run tag naming mode, rewrite command and model version, e.g.
    ``rewrite|cmd=image,12,4|model=20240501-ab12``; whitespace becomes ``_``."""
    parts = [mode]
    if command:
        parts.append(f"cmd={command}")
    if model_version:
        parts.append(f"model={model_version}")
    return _SPACE.sub("_", "|".join(parts))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_trec_run(path: str | os.PathLike[str], run: Mapping[str, Sequence[tuple[str, float]]],
                   tag: str) -> Path:
    """Write ranked hits as a TREC run file, atomically.

    Args:
        run: qid → hits in rank order (best first); the rank column is the list position from 1
            and the score column the given score. A query with no hits has no lines (TREC has
            no way to say "searched, found nothing"; the evaluation report lists those).
        tag: the run tag; see :func:`run_tag`.

    Raises:
        DataError: a tag, qid or doc id with whitespace, a non-finite score, or a doc id
            repeated within one query (trec_eval would mis-score it).
    """
    path = Path(path)
    _check_id(tag, str(path), "run tag")
    lines = []
    for qid, hits in run.items():
        _check_id(qid, str(path), "qid")
        seen: set[str] = set()
        for rank, (doc, score) in enumerate(hits, start=1):
            _check_id(doc, str(path), f"query {qid!r} doc id")
            if doc in seen:
                raise DataError(f"{path}: query {qid!r} lists doc {doc!r} twice")
            seen.add(doc)
            try:
                s = float(score)
            except (TypeError, ValueError):
                s = math.nan
            if not math.isfinite(s):
                raise DataError(f"{path}: query {qid!r} doc {doc!r} has score {score!r}; "
                                "scores must be finite numbers")
            lines.append(f"{qid} Q0 {doc} {rank} {s!r} {tag}\n")
    _atomic_write(path, "".join(lines))
    return path


def read_trec_run(path: str | os.PathLike[str]) -> TrecRun:
    """Read a TREC run file (one tag per file), hits ordered by the rank column.

    Raises:
        DataError: a line without 6 columns, a bad rank or score, mixed tags or an empty file,
            naming file and line.
    """
    path = Path(path)
    rows: dict[str, list[tuple[int, str, float]]] = {}
    tag = None
    for n, line in _lines(path, "run file"):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataError(f"{path}:{n}: expected 'qid Q0 doc_id rank score tag', "
                            f"got {len(fields)} column(s)")
        qid, _, doc, rank, score, t = fields
        try:
            r, s = int(rank), float(score)
        except ValueError as e:
            raise DataError(f"{path}:{n}: rank {rank!r} / score {score!r} is not a number") from e
        if not math.isfinite(s):
            raise DataError(f"{path}:{n}: score {score!r} is not finite")
        if tag is not None and t != tag:
            raise DataError(f"{path}:{n}: tag {t!r} differs from {tag!r}; one run per file")
        tag = t
        rows.setdefault(qid, []).append((r, doc, s))
    if tag is None:
        raise DataError(f"run file {path} holds no results")
    hits = {q: [(d, s) for _, d, s in sorted(r, key=lambda x: x[0])] for q, r in rows.items()}
    return TrecRun(tag=tag, hits=hits)
