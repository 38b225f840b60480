"""Versioned index directories with an atomic live pointer.

Layout under ``root``::

    root/
      versions/v-20261121T101500-3f2a/   one complete build per directory
      versions/v-.../                    a build in progress (no BUILD_COMPLETE marker yet)
      CURRENT                            one line: the live version's directory name

A build writes into a fresh version directory, marks it complete, then ``publish`` replaces
``CURRENT`` with ``os.replace`` (atomic on POSIX). A crash at any point before that leaves the
previous version serving and intact; ``open_current`` never sees a half-built index.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from .errors import IndexStoreError

__all__ = ["IndexStore", "COMPLETE_MARKER"]

COMPLETE_MARKER = "BUILD_COMPLETE"


class IndexStore:
    """A directory holding versions of one index and a pointer to the live one."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.versions = self.root / "versions"

    def new_version(self) -> Path:
        """Create and return an empty directory for a new build."""
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

    def incomplete_versions(self) -> list[Path]:
        """Builds that were started but never marked complete (newest last), for resuming."""
        if not self.versions.is_dir():
            return []
        return sorted(
            (p for p in self.versions.iterdir() if p.is_dir() and not (p / COMPLETE_MARKER).exists()),
            key=lambda p: p.name,
        )

    @staticmethod
    def mark_complete(version: Path) -> None:
        """Record that ``version`` holds a finished build (written last, fsynced)."""
        marker = version / COMPLETE_MARKER
        with marker.open("w") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def publish(self, version: Path) -> None:
        """Atomically make ``version`` the live index."""
        version = Path(version)
        if version.parent.resolve() != self.versions.resolve():
            raise IndexStoreError(f"{version} is not a version of the store at {self.root}")
        if not (version / COMPLETE_MARKER).exists():
            raise IndexStoreError(f"refusing to publish incomplete build {version}")
        tmp = self.root / f".CURRENT.{uuid.uuid4().hex}"
        with tmp.open("w") as fh:
            fh.write(version.name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / "CURRENT")

    def current(self) -> Path | None:
        """The live version directory, or None when nothing was ever published."""
        pointer = self.root / "CURRENT"
        if not pointer.exists():
            return None
        name = pointer.read_text().strip()
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

    def prune(self, keep: int = 2) -> list[Path]:
        """Delete old complete versions, keeping the live one and the ``keep`` newest."""
        if not self.versions.is_dir():
            return []
        live = self.current()
        done = sorted(
            (p for p in self.versions.iterdir() if (p / COMPLETE_MARKER).exists()),
            key=lambda p: p.name,
        )
        removed = []
        for p in done[: max(0, len(done) - keep)]:
            if live is not None and p.name == live.name:
                continue
            shutil.rmtree(p)
            removed.append(p)
        return removed
