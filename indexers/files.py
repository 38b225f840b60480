"""File modes of an index version: readable by other users, as the umask allows.

Some writers leave owner-only files behind (tantivy's ``meta.json``, ``tempfile``'s 0600 files
and 0700 folders), and a service running as another user (the container's non-root user on a
bind-mounted workspace) could not open them. ``share_tree`` gives a finished version the modes a
plain ``open()`` or ``mkdir()`` would have: 0666 / 0777 less the process umask. (The rewriter
package keeps its own ``rewriters.files`` for single files; the two packages never import each
other.)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["share_tree"]


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, so racy)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_tree(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and everything below it its umask mode (symlinks are left alone)."""
    root = Path(root)
    mask = _umask()
    fmode, dmode = 0o666 & ~mask, 0o777 & ~mask
    if not root.is_dir():
        os.chmod(root, fmode)
        return
    os.chmod(root, dmode)
    for base, dirs, files in os.walk(root):
        for name in dirs:
            if not os.path.islink(os.path.join(base, name)):
                os.chmod(os.path.join(base, name), dmode)
        for name in files:
            if not os.path.islink(os.path.join(base, name)):
                os.chmod(os.path.join(base, name), fmode)
