"""Files that hold personal data or secrets: readable by their owner only, from creation.

The SQLite database, the embedded Redis's files, beat's schedule, `run.env` (this run's
secrets) and exports all live in places these helpers make. A file is never created wider
and narrowed afterwards: between the two, another local user could open it and keep the
descriptor.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: What every `listsync` command runs with (and passes to the processes it starts).
PRIVATE_UMASK = 0o077


def private_dir(path: Path, *, narrow: bool = False) -> Path:
    """Create path (and missing parents) as owner-only directories. With narrow, an existing
    directory of ours that others can enter is made owner-only too (for listsync's own
    var/, never for a directory the operator chose to share, such as a home directory)."""
    old_umask = os.umask(PRIVATE_UMASK)  # the parents mkdir makes get 0700 as well
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old_umask)
    info = path.stat()
    if narrow and info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def create_private(path: Path, text: str) -> None:
    """Write text to a new file at path, mode 0600. Refuses (FileExistsError) when anything is
    already there, a symbolic link included, dangling or not: nothing is written over or
    through it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def replace_private(path: Path, text: str) -> None:
    """Put text at path atomically, mode 0600 from creation, replacing what was there (a
    reader sees the old file or the new one, never half of one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    create_private(temporary, text)
    os.replace(temporary, path)
