"""Versioned index directories with an atomic live pointer, a publish history and rollback.

Layout under ``root``::

    root/
      versions/v-20261121T101500-3f2a/   one complete build per directory
      versions/v-.../                    a build in progress (no BUILD_COMPLETE marker yet)
      CURRENT                            one line: the live version's directory name
      HISTORY                            the versions published, oldest first (rollback pops it)

A build writes into a fresh version directory, marks it complete, then ``publish`` replaces
``CURRENT`` with ``os.replace`` (atomic on POSIX). A crash at any point before that leaves the
previous version serving and intact; ``open_current`` never sees a half-built index.

``previous`` is the version that was live before the live one (the last good version):
``prune`` never deletes it and ``rollback`` makes it live again. A running build holds an
``flock`` on ``<version>/.lock``; ``clean_unfinished`` removes the unfinished builds that are
older than the newest complete one and that no process is writing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

from .errors import IndexStoreError
from .files import share_tree

__all__ = ["COMPLETE_MARKER", "HISTORY_FILE", "LOCK_FILE", "IndexStore"]

log = logging.getLogger(__name__)

COMPLETE_MARKER = "BUILD_COMPLETE"
HISTORY_FILE = "HISTORY"
LOCK_FILE = ".lock"
_HISTORY_KEEP = 1000  # entries kept in HISTORY (one line per publish or rollback)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class IndexStore:
    """A directory holding versions of one index and a pointer to the live one."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.versions = self.root / "versions"

    def new_version(self) -> Path:
        """Create and return an empty directory for a new build (lock it with ``lock``)."""
        self.versions.mkdir(parents=True, exist_ok=True)
        while True:  # names sort by creation time (microseconds), the hex breaks ties
            now = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            name = f"v-{stamp}{int(now % 1 * 1e6):06d}-{uuid.uuid4().hex[:6]}"
            path = self.versions / name
            if not path.exists() and all(name > p.name for p in self.versions.iterdir()):
                path.mkdir()
                return path
            time.sleep(0.001)

    @staticmethod
    def lock(version: Path) -> IO[str]:
        """Hold ``version`` for one build until the returned file is closed.

        Raises:
            IndexStoreError: another process holds it.
        """
        fh = (Path(version) / LOCK_FILE).open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise IndexStoreError(f"another build is writing {version}; wait or stop it") from None
        return fh

    def _dirs(self) -> list[Path]:
        if not self.versions.is_dir():
            return []
        return sorted((p for p in self.versions.iterdir() if p.is_dir()), key=lambda p: p.name)

    def complete_versions(self) -> list[Path]:
        """Finished builds, oldest first."""
        return [p for p in self._dirs() if (p / COMPLETE_MARKER).exists()]

    def incomplete_versions(self) -> list[Path]:
        """Builds that were started but never marked complete (newest last), for resuming."""
        return [p for p in self._dirs() if not (p / COMPLETE_MARKER).exists()]

    @staticmethod
    def mark_complete(version: Path) -> None:
        """Record that ``version`` holds a finished build (written last, fsynced); its files
        get their umask modes first (some writers leave them owner-only, see indexers.files)."""
        share_tree(version)
        marker = version / COMPLETE_MARKER
        with marker.open("w") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def version(self, name: str) -> Path:
        """The complete version called ``name``.

        Raises:
            IndexStoreError: there is no such complete version (the message lists them).
        """
        path = self.versions / name
        if "/" in name or name in ("", ".", "..") or not (path / COMPLETE_MARKER).exists():
            have = ", ".join(p.name for p in self.complete_versions()) or "none"
            raise IndexStoreError(f"no complete version {name!r} under {self.root}; "
                                  f"complete versions: {have}")
        return path

    def history(self) -> list[str]:
        """Names of the versions published, oldest first (as rollback left them)."""
        try:
            return (self.root / HISTORY_FILE).read_text().split()
        except FileNotFoundError:
            return []

    def _point(self, version: Path, history: list[str]) -> None:
        _write_atomic(self.root / "CURRENT", version.name + "\n")  # the switch itself
        _write_atomic(self.root / HISTORY_FILE, "".join(n + "\n" for n in
                                                        history[-_HISTORY_KEEP:]))

    def publish(self, version: Path) -> None:
        """Atomically make ``version`` the live index (the one live before becomes
        ``previous``)."""
        version = Path(version)
        if version.parent.resolve() != self.versions.resolve():
            raise IndexStoreError(f"{version} is not a version of the store at {self.root}")
        if not (version / COMPLETE_MARKER).exists():
            raise IndexStoreError(f"refusing to publish incomplete build {version}")
        history, live = self.history(), self._live_name()
        if live is not None and live != version.name and (not history or history[-1] != live):
            history.append(live)  # a store published before HISTORY existed, or a torn write
        self._point(version, [*history, version.name])

    def _live_name(self) -> str | None:
        try:
            return (self.root / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def current(self) -> Path | None:
        """The live version directory, or None when nothing was ever published."""
        name = self._live_name()
        if name is None:
            return None
        path = self.versions / name
        if not (path / COMPLETE_MARKER).exists():
            raise IndexStoreError(f"CURRENT points at {name}, which is missing or incomplete")
        return path

    def open_current(self) -> Path:
        """The live version directory; raise with the fix when there is none."""
        cur = self.current()
        if cur is None:
            raise IndexStoreError(f"no index has been published under {self.root}; build one first")
        return cur

    def previous(self) -> Path | None:
        """The complete version that was live before the live one (the last good version).

        Read from HISTORY; a store without one falls back to the newest complete version older
        than the live one. None when there is none.
        """
        live = self._live_name()
        history = self.history()
        if live in history:
            history = history[: len(history) - 1 - history[::-1].index(live)]
        elif not history and live is not None:
            history = [p.name for p in self.complete_versions() if p.name < live]
        for name in reversed(history):
            if name != live and (self.versions / name / COMPLETE_MARKER).exists():
                return self.versions / name
        return None

    def rollback(self, to: str | None = None) -> tuple[Path, Path]:
        """Make an earlier version live again, atomically.

        Args:
            to: a complete version's name; None = ``previous()``. Rolling back again goes one
                more step back (HISTORY is popped down to the target).

        Returns:
            (the version now live, the version that was live).

        Raises:
            IndexStoreError: nothing was published, there is nothing to roll back to, or ``to``
                is not a complete version (or is the live one).
        """
        live = self.current()
        if live is None:
            raise IndexStoreError(f"nothing to roll back to under {self.root}: no version has "
                                  "been published yet")
        history = self.history()
        if to is None:
            target = self.previous()
            if target is None:
                have = ", ".join(p.name for p in self.complete_versions()) or "none"
                raise IndexStoreError(f"nothing to roll back to under {self.root}: no complete "
                                      f"version was live before {live.name}; name one with "
                                      f"--to (complete versions: {have})")
            if target.name in history:
                history = history[: len(history) - history[::-1].index(target.name)]
            else:
                history.append(target.name)
        else:
            target = self.version(to)
            if target.name == live.name:
                raise IndexStoreError(f"{to} is already the live version under {self.root}")
            if not history or history[-1] != live.name:
                history.append(live.name)
            history.append(target.name)
        self._point(target, history)
        return target, live

    def prune(self, keep: int = 2) -> list[Path]:
        """Delete old complete versions beyond the ``keep`` newest; the live one and the one
        live before it (``previous``) are always kept."""
        live, last_good = self.current(), self.previous()
        protected = {p.name for p in (live, last_good) if p is not None}
        done = self.complete_versions()
        removed = []
        for p in done[: max(0, len(done) - keep)]:
            if p.name not in protected:
                shutil.rmtree(p)
                removed.append(p)
        return removed

    def clean_unfinished(self) -> list[Path]:
        """Delete unfinished builds older than the newest complete version, except those a
        running build holds (see ``lock``). Returns what was removed."""
        done = self.complete_versions()
        if not done:
            return []
        removed = []
        for p in self.incomplete_versions():
            if p.name > done[-1].name:
                continue  # newer than every complete build: may still be resumed
            try:
                held = self.lock(p)
            except (IndexStoreError, FileNotFoundError):
                continue  # being written right now (or gone already)
            try:
                shutil.rmtree(p)
            finally:
                held.close()
            removed.append(p)
        if removed:
            log.info("removed %d unfinished build(s) under %s: %s", len(removed), self.root,
                     [p.name for p in removed])
        return removed
