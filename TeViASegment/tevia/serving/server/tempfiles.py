"""The server's temporary folder: a private root, one folder per request, removal that never follows links."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["open_temp_root", "RequestFolder", "remove_path"]

logger = logging.getLogger(__name__)


def open_temp_root(temp_dir: Path | None) -> tuple[Path, bool]:
    """The server's temporary root and whether the server created it (and removes it at exit).

    Args:
        temp_dir: a folder to use (created with mode 0700 when missing), or None for a fresh
            folder in the system's temporary folder.

    Raises:
        ValueError: `temp_dir` is a symbolic link, not a folder, not owned by this user, or
            writable by its group or others (another user could swap request folders there);
            the message says what to do.
    """
    if temp_dir is None:
        return Path(tempfile.mkdtemp(prefix="tevia-serve-")), True
    root = Path(temp_dir)
    created = False
    if not os.path.lexists(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)
        created = True
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(f"--temp-dir {str(root)!r} is a symbolic link; give the real folder "
                         f"({os.path.realpath(root)!r}) or a new one")
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"--temp-dir {str(root)!r} exists and is not a folder")
    if info.st_uid != os.geteuid():
        raise ValueError(f"--temp-dir {str(root)!r} belongs to user id {info.st_uid}, not to the server's "
                         f"user ({os.geteuid()}); give a folder of the server's own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"--temp-dir {str(root)!r} is writable by other users (mode "
                         f"{stat.S_IMODE(info.st_mode):o}); run `chmod 700 {root}` or give a new folder")
    if created:
        logger.info("created the temporary folder %s", root)
    return root, False


class RequestFolder:
    """A fresh folder (mode 0700) inside the server's root for one request's files.

    It remembers the folder's identity (device, inode): if the folder is later replaced (by a
    link to another place, say), `file` refuses to name files in it and `remove` deletes only
    the replacement link, never what it points to.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="request-", dir=root))
        info = os.lstat(self.path)
        self._identity = (info.st_dev, info.st_ino)

    def intact(self) -> bool:
        """Whether the path is still the folder this object created."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) == self._identity

    def file(self, name: str) -> Path:
        """The path of `name` inside the folder.

        Raises:
            RuntimeError: the folder was removed or replaced.
        """
        if not self.intact():
            raise RuntimeError("the request's temporary folder was removed or replaced")
        return self.path / name

    def remove_file(self, name: str) -> None:
        """Delete `name` from the folder if the folder is still the one created."""
        if self.intact():
            remove_path(self.path / name)

    def remove(self) -> None:
        """Delete the folder and its files; a replacement (link or file) is removed, not followed."""
        if not self.intact() and os.path.lexists(self.path):
            logger.warning("the temporary folder %s was replaced; removing the replacement only", self.path.name)
        remove_path(self.path)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree without following symbolic links.

    A link is removed, never its target; links inside a folder are removed as links
    (shutil.rmtree's rule). Missing paths are fine; other failures are logged, not raised.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as error:
        logger.warning("could not remove the temporary %s: %s", path.name, error)
