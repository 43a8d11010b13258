"""Small file helpers shared by the engine and the Slicer side (no torch: TeViASegmentLib imports it).

A file is written under a temporary name next to its destination and renamed onto it only when
the write succeeded, so a failure never leaves a half-written file under the user's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "sha256_file"]

_CHUNK = 1 << 20


def _new_temporary(destination: Path, suffix: str, mode: int) -> Path:
    """A new empty file next to ``destination`` (created exclusively, permissions ``mode`` less the umask)."""
    for _ in range(100):
        temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        except FileExistsError:
            continue
        return temporary
    raise FileExistsError(f"cannot create a temporary file next to {destination}: clear the folder of "
                          f".{destination.name}.* files")


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str | None = None,
                private: bool = False) -> Iterator[Path]:
    """A temporary path next to ``destination`` that is renamed onto it when the block succeeds.

    Args:
        destination: the final path; its folder must exist.
        suffix: the temporary file's extension (default: the destination's last suffix), for
            writers that choose the format by the extension (".nii.gz" needs it whole).
        private: readable by the owner only (0600), for files that may hold a secret; else
            the permissions of any new file (0666 less the umask).

    Yields:
        The temporary path (an empty file). On an exception it is removed and the
        destination is left as it was.
    """
    destination = Path(destination)
    temporary = _new_temporary(destination, destination.suffix if suffix is None else suffix,
                               0o600 if private else 0o666)
    try:
        yield Path(temporary)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write_text(destination: str | os.PathLike, text: str, private: bool = False) -> None:
    """Write ``text`` as UTF-8 to ``destination`` atomically (temporary file, then rename); newlines as
    given; ``private`` as for `atomic_path`."""
    with atomic_path(destination, private=private) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
