"""Files with personal data or secrets are owner-only from the moment they exist."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import run_listsync
from worker.files import create_private, private_dir, replace_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_listsync_creates_its_sqlite_database_and_directories_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "data" / "listsync.db"
    env = {
        "LISTSYNC_DATABASE_URL": f"sqlite:///{database}",
        "LISTSYNC_VAR_DIR": str(tmp_path / "fresh" / "var"),
    }
    old = os.umask(0o022)  # as a typical login shell has it
    try:
        done = run_listsync("db", "upgrade", env=env)
    finally:
        os.umask(old)

    assert done.returncode == 0, done.stderr
    assert mode(tmp_path / "fresh") == 0o700
    assert mode(database.parent) == 0o700
    assert mode(database) & 0o077 == 0


def test_private_dir_narrows_only_when_asked(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    ours = tmp_path / "var"
    ours.mkdir()
    ours.chmod(0o755)

    private_dir(shared)
    private_dir(ours, narrow=True)

    assert mode(shared) == 0o755
    assert mode(ours) == 0o700


def test_replace_private_is_0600_from_creation_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "run.env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    old = os.umask(0o000)  # nothing narrows it by accident: the mode is the file's own
    try:
        replace_private(path, "NEW=1\n")
    finally:
        os.umask(old)

    assert path.read_text() == "NEW=1\n"
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["run.env"]


@pytest.mark.parametrize("existing", ["file", "symlink", "dangling symlink"])
def test_create_private_refuses_anything_already_there(tmp_path: Path, existing: str) -> None:
    path = tmp_path / "out.json"
    target = tmp_path / "target"
    if existing == "file":
        path.write_text("keep")
    else:
        path.symlink_to(target)
        if existing == "symlink":
            target.write_text("keep")

    with pytest.raises(FileExistsError):
        create_private(path, "personal data")

    assert not target.exists() or target.read_text() == "keep"
    assert path.is_symlink() or path.read_text() == "keep"
