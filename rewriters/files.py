"""File modes of what the project writes: readable by other users, as the umask allows.

Temporary files made for atomic writes (``tempfile.mkstemp``: 0600, ``mkdtemp``: 0700) and
files some libraries write the same way (safetensors weights) would otherwise keep owner-only
modes after the rename, and a service running as another user (the container's non-root user
reading a bind-mounted workspace) could not open them. (The index package gives whole index
versions the same modes with ``indexers.files.share_tree``.) Everything
written gets the mode a plain ``open()`` or ``mkdir()`` would have given it: 0666 / 0777 less
the process umask (0644 / 0755 with the usual 022; a umask of 077 keeps files private).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["dir_mode", "file_mode", "share"]


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


def file_mode() -> int:
    """0666 less the umask: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0777 less the umask: the mode ``mkdir`` gives a new folder."""
    return 0o777 & ~_umask()


def share(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file or a folder, not what is inside) its umask mode."""
    p = Path(path)
    os.chmod(p, dir_mode() if p.is_dir() else file_mode())
