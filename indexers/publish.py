"""Publish checks and rollback: a build that would replace a good index with a broken one is
refused, and an earlier version can be made live again.

Before a template build (``reindex_templates``) and before an image build or merge marks its
version complete, ``check_publish`` compares it with the live version::

    count / live count  <  PublishPolicy.min_count_ratio   -> refused (the catalogue shrank)
    rejected / (count + rejected)  >  max_reject_rate      -> refused (the catalogue is broken)

A refused build publishes nothing and raises ``PublishRefusedError`` with one line that names
both numbers and the fix; the live version keeps serving. ``force=True`` publishes anyway and
logs what it overrode. Every job report carries the check (``PublishCheck.as_dict``).

``rollback_store``, ``rollback_templates`` and ``rollback_images`` make the version that was
live before the live one (or a named one) live again: a pointer swap for a store directory,
one alias update for Elasticsearch.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, IndexStoreError, PublishRefusedError
from .store import IndexStore

__all__ = [
    "DEFAULT_POLICY",
    "PublishCheck",
    "PublishPolicy",
    "check_publish",
    "enforce",
    "rollback_images",
    "rollback_store",
    "rollback_templates",
    "store_live_version",
]

log = logging.getLogger(__name__)

META_FILE = "index_meta.json"  # both the template and the image versions write one


@dataclass(frozen=True)
class PublishPolicy:
    """When a new version may replace the live one."""

    # Refuse when the new document count is below this share of the live version's count:
    # 0.5 refuses a build that loses more than half of the catalogue. 0 turns the check off;
    # sane range 0.3-0.9.
    min_count_ratio: float = 0.5
    # Refuse when more than this share of the catalogue's records were rejected (bad lines,
    # missing fields, duplicate ids, unreadable images). 1 turns the check off; sane 0.05-0.5.
    max_reject_rate: float = 0.2
    # Publish even when a check fails (the report and a warning still say which).
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("min_count_ratio", "max_reject_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise ConfigError(f"{name}={value!r} is out of range 0-1; e.g. 0.5")


DEFAULT_POLICY = PublishPolicy()  # frozen: one shared default for every build


@dataclass(frozen=True)
class PublishCheck:
    """The numbers a publish decision was made on, and the reasons to refuse (if any)."""

    count: int  # documents (templates or image vectors) the new version would serve
    rejected: int  # catalogue records skipped (bad lines, duplicates, unreadable images)
    live_version: str | None  # what serves now; None on a first build
    live_count: int | None  # its document count
    policy: PublishPolicy
    reasons: list[str] = field(default_factory=list)  # empty: every check passed

    @property
    def reject_rate(self) -> float:
        total = self.count + self.rejected
        return self.rejected / total if total else 0.0

    @property
    def count_ratio(self) -> float | None:
        return self.count / self.live_count if self.live_count else None

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def publishes(self) -> bool:
        """True when the version may be published (the checks passed, or ``force``)."""
        return self.passed or self.policy.force

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for job reports."""
        ratio = self.count_ratio
        return {
            "passed": self.passed,
            "forced": self.policy.force and not self.passed,
            "count": self.count,
            "live_version": self.live_version,
            "live_count": self.live_count,
            "count_ratio": None if ratio is None else round(ratio, 4),
            "min_count_ratio": self.policy.min_count_ratio,
            "rejected": self.rejected,
            "reject_rate": round(self.reject_rate, 4),
            "max_reject_rate": self.policy.max_reject_rate,
            "reasons": list(self.reasons),
        }


def check_publish(count: int, rejected: int, live_version: str | None,
                  live_count: int | None, policy: PublishPolicy) -> PublishCheck:
    """Compare a build with the live version under ``policy``.

    Args:
        count: documents the new version holds.
        rejected: catalogue records that were skipped.
        live_version, live_count: the version serving now and its count (None: nothing live;
            the count check is skipped).

    Returns:
        A ``PublishCheck``; its ``reasons`` name each failed check with its numbers.
    """
    reasons = []
    if live_count and policy.min_count_ratio > 0 and count < policy.min_count_ratio * live_count:
        reasons.append(f"{count} documents is {count / live_count:.1%} of the {live_count} in "
                       f"live version {live_version}, below min_count_ratio "
                       f"{policy.min_count_ratio:g}")
    total = count + rejected
    if total and rejected / total > policy.max_reject_rate:
        reasons.append(f"{rejected} of {total} records were rejected ({rejected / total:.1%}), "
                       f"above max_reject_rate {policy.max_reject_rate:g}")
    return PublishCheck(count, rejected, live_version, live_count, policy, reasons)


def enforce(check: PublishCheck, what: str, rejects: str | os.PathLike[str] | None = None,
            kept: str = "") -> None:
    """Raise ``PublishRefusedError`` when ``check`` refuses; log a warning when forced.

    Args:
        what: what was to be published, for the message (e.g. the catalogue's path).
        rejects: where the rejected records were written, if anywhere.
        kept: a sentence on work kept for a forced re-run (e.g. encoded vectors).
    """
    if check.passed:
        return
    why = "; ".join(check.reasons)
    if check.policy.force:
        log.warning("publishing %s despite the publish checks (--force): %s", what, why)
        return
    live = (f"{check.live_version} stays live" if check.live_version
            else "no version is live yet")
    see = f" (rejects: {rejects})" if rejects else ""
    raise PublishRefusedError(
        f"refusing to publish {what}: {why}; nothing was published and {live}. "
        f"Fix the catalogue{see}, or publish anyway with --force{kept}", check)


def store_live_version(root: str | os.PathLike[str]) -> tuple[str | None, int | None]:
    """(live version name, its document count) of a store directory; (None, None) when
    nothing is live or the pointer is broken (a rebuild repairs it)."""
    try:
        cur = IndexStore(root).current()
    except IndexStoreError:
        return None, None
    if cur is None:
        return None, None
    try:
        meta = json.loads((cur / META_FILE).read_text())
    except (OSError, ValueError):
        return cur.name, None
    count = meta.get("doc_count", meta.get("count"))  # template / image meta
    return cur.name, int(count) if isinstance(count, int) else None


def rollback_store(root: str | os.PathLike[str], to: str | None = None) -> dict[str, Any]:
    """Make the version live before the live one (or ``to``) live again in a store directory.

    Returns:
        ``{"store_root", "version", "previous_version", "count"}``: the version now live, the
        one that was, and the live document count.

    Raises:
        IndexStoreError: nothing to roll back to, or ``to`` is not a complete version.
    """
    target, was = IndexStore(root).rollback(to)
    return {"store_root": str(Path(root)), "version": target.name,
            "previous_version": was.name, "count": store_live_version(root)[1]}


def rollback_templates(backend: str, root: str | os.PathLike[str] | None = None,
                       es: Any = None, to: str | None = None) -> dict[str, Any]:
    """Roll the template index back: a store pointer swap (tantivy) or an alias move.

    Args:
        backend: "tantivy" (give ``root``) or "elasticsearch" (give ``es``, an
            ``es_schema.EsSettings``).
        to: a version or index name; None = the one live before the live one.

    Returns:
        ``{"backend", "version", "previous_version", "count"}``.

    Raises:
        ConfigError: an unknown backend, or its location is missing.
        IndexStoreError: nothing to roll back to, or ``to`` is not a version of this index.
    """
    return _rollback(backend, "tantivy", root, es, to)


def rollback_images(backend: str, root: str | os.PathLike[str] | None = None,
                    es: Any = None, to: str | None = None) -> dict[str, Any]:
    """Roll the image index back: a store pointer swap (faiss) or an alias move.

    Args:
        backend: "faiss" (give ``root``) or "elasticsearch" (give ``es``, an
            ``es_schema.EsSettings`` whose alias is the image index's).
        to: a version or index name; None = the one live before the live one.

    Returns:
        ``{"backend", "version", "previous_version", "count"}``.

    Raises:
        ConfigError: an unknown backend, or its location is missing.
        IndexStoreError: nothing to roll back to, or ``to`` is not a version of this index.
    """
    return _rollback(backend, "faiss", root, es, to)


def _rollback(backend: str, local: str, root, es, to: str | None) -> dict[str, Any]:
    """A pointer swap in the ``local`` backend's store at ``root``, or an alias move."""
    if backend == local and root is not None:
        out = rollback_store(root, to)
        return {"backend": backend, **{k: out[k] for k in ("version", "previous_version",
                                                           "count")}}
    if backend == "elasticsearch" and es is not None:
        from .es_build import es_live_version, rollback_es_alias  # the client: load on use

        target, was = rollback_es_alias(es, to)
        return {"backend": backend, "version": target, "previous_version": was,
                "count": es_live_version(es)[1]}
    raise ConfigError(f"cannot roll back backend {backend!r}: give root for {local} or es "
                      "settings for elasticsearch")
