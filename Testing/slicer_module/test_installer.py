"""Requirements check and install: real package metadata, a real offline pip install."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from TeViASegmentLib import installer


def _write_wheel(folder: Path, name: str = "tevia_offline_probe", version: str = "0.1.0") -> Path:
    """A minimal pure-Python wheel (PEP 427), built by hand so no network or build backend is needed."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def test_missing_requirements_reads_installed_metadata():
    import numpy

    assert installer.missing_requirements(["numpy>=1.0,<99"]) == []
    assert installer.missing_requirements(["numpy<1.0"]) == [f"numpy<1.0 (installed: {numpy.__version__})"]
    assert installer.missing_requirements(["tevia-no-such-package>=1"]) == ["tevia-no-such-package>=1 (not installed)"]


def test_torch_version_comes_from_metadata_without_importing_torch():
    before = "torch" in sys.modules
    version = installer.torch_version()
    assert version is None or version[0].isdigit()
    assert ("torch" in sys.modules) == before


def test_install_torch_without_the_pytorch_extension_says_what_to_do(monkeypatch):
    monkeypatch.setattr(installer, "TORCH_REQUIREMENT", ">=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="install 'PyTorch' from the Extensions Manager"):
        installer.install_torch()


def test_offline_install_from_a_local_wheel_folder(tmp_path):
    wheels = tmp_path / "wheels"
    _write_wheel(wheels)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# offline test\ntevia-offline-probe>=0.1,<1\n")
    command = installer.pip_command(requirements, wheel_dir=wheels, target=tmp_path / "site", python=sys.executable)
    assert "--no-index" in command and str(wheels) in command
    pip = installer.PipProcess(command)
    assert pip.wait() == 0, "\n".join(pip.output)
    assert (tmp_path / "site" / "tevia_offline_probe" / "__init__.py").read_text() == "VALUE = 42\n"


def test_offline_install_without_the_wheel_fails_clearly(tmp_path):
    (tmp_path / "wheels").mkdir()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tevia-offline-probe>=0.1,<1\n")
    pip = installer.PipProcess(installer.pip_command(requirements, tmp_path / "wheels", tmp_path / "site", sys.executable))
    assert pip.wait() != 0
    assert any("tevia-offline-probe" in line for line in pip.output)
    with pytest.raises(ValueError, match="wheel_dir must be an existing folder"):
        installer.pip_command(requirements, tmp_path / "nope")


def test_install_requirements_falls_back_to_a_background_pip_without_pip_ensure(tmp_path, monkeypatch):
    import slicer

    monkeypatch.delattr(slicer, "packaging", raising=False)
    monkeypatch.delattr(slicer, "pydeps", raising=False)
    monkeypatch.setattr(installer, "default_python", lambda: sys.executable)
    wheels = tmp_path / "wheels"
    _write_wheel(wheels)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tevia-offline-probe>=0.1,<1\n")
    monkeypatch.setattr(installer, "pip_command",
                        lambda path, wheel_dir=None: [sys.executable, "-m", "pip", "download", "--no-index",
                                                      "--find-links", str(wheels), "-d", str(tmp_path / "dl"), "-r", str(path)])
    pip = installer.install_requirements(requirements)
    assert isinstance(pip, installer.PipProcess) and pip.wait() == 0
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["tevia_offline_probe-0.1.0-py3-none-any.whl"]


def test_install_requirements_uses_pip_ensure_where_slicer_has_it(monkeypatch):
    import types

    import slicer

    calls = []
    monkeypatch.setattr(slicer, "packaging", types.SimpleNamespace(
        pip_ensure=lambda requirements, requester: calls.append((requirements, requester))), raising=False)
    assert installer.install_requirements() is None
    (requirements, requester), = calls
    assert requester == "TeViA"
    assert [str(r) for r in requirements] == [str(__import__("packaging.requirements").requirements.Requirement(line))
                                              for line in installer.read_requirements()]
