"""tevia.files: atomic writes (nothing half-written, nothing left behind) and file hashing."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tevia.files import atomic_path, atomic_write_text, sha256_file

REPO = Path(__file__).resolve().parents[2]


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic_write_text(target, "new\r\nline ünïcode")
    assert target.read_bytes() == "new\r\nline ünïcode".encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "cases.csv"
    target.write_text("the user's data")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            assert temporary.parent == tmp_path and temporary.name.endswith(".csv")
            raise RuntimeError("disk full")
    assert target.read_text() == "the user's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_the_temporary_has_the_suffix_a_writer_needs(tmp_path):
    with atomic_path(tmp_path / "mask.nii.gz", ".nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.name.startswith(".mask.nii.gz.")
        temporary.write_bytes(b"x")
    assert (tmp_path / "mask.nii.gz").read_bytes() == b"x"


def test_private_files_are_readable_by_the_owner_only_and_others_follow_the_umask(tmp_path):
    atomic_write_text(tmp_path / "settings.json", "{}", private=True)
    atomic_write_text(tmp_path / "model.json", "{}")
    assert stat.S_IMODE((tmp_path / "settings.json").stat().st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == 0o666 & ~umask


def test_sha256_file_matches_hashlib_on_a_file_larger_than_a_chunk(tmp_path):
    data = os.urandom((1 << 20) + 12345)
    (tmp_path / "weights.bin").write_bytes(data)
    assert sha256_file(tmp_path / "weights.bin") == hashlib.sha256(data).hexdigest()


def test_importing_tevia_files_imports_no_torch():
    code = "import sys, tevia.files; sys.exit(1 if {'torch', 'numpy'} & set(sys.modules) else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "TeViASegment", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
