"""Requirements check and install: real package metadata, real pip and light-the-torch command lines,
real background processes (offline installs from a hand-built wheel, failure, cancel)."""

from __future__ import annotations

import base64
import hashlib
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest

from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)
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


def test_torch_version_comes_from_metadata_without_importing_torch(monkeypatch, tmp_path):
    before = "torch" in sys.modules
    version = installer.torch_version()
    assert ("torch" in sys.modules) == before
    import torch  # the test environment has torch (the engine's tests need it)

    assert version == torch.__version__
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # an environment without torch
    assert installer.torch_version() is None


def test_missing_dependencies_names_torch_and_each_missing_requirement(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0\ntevia-offline-probe>=0.1,<1\n")
    assert installer.missing_dependencies(requirements) == ["tevia-offline-probe>=0.1,<1 (not installed)"]
    monkeypatch.setattr(installer, "TORCH_REQUIREMENT", ">=999")
    assert installer.missing_dependencies(requirements)[0].startswith("torch>=999 (installed: ")


def test_offline_install_is_one_pip_command_that_uses_only_the_folder(tmp_path):
    (tmp_path / "wheels").mkdir()
    steps = installer.install_steps(tmp_path / "wheels", python="PythonSlicer", requirements_path=tmp_path / "r.txt")
    assert len(steps) == 1, "no light-the-torch, no index: nothing before the folder is used"
    command = steps[0].command
    assert command[:4] == ["PythonSlicer", "-m", "pip", "install"]
    assert command[command.index("--find-links") + 1] == str(tmp_path / "wheels") and "--no-index" in command
    assert f"torch{installer.TORCH_REQUIREMENT}" in command and command[-2:] == ["-r", str(tmp_path / "r.txt")]
    with pytest.raises(ValueError, match="wheel_dir must be an existing folder"):
        installer.install_steps(tmp_path / "nope")


def test_online_install_runs_only_the_missing_steps(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.0\n")
    assert installer.install_steps(python="py", requirements_path=requirements) == [], "torch and numpy are here"
    requirements.write_text("tevia-offline-probe>=0.1,<1\n")
    monkeypatch.setattr(installer, "TORCH_REQUIREMENT", ">=999")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    steps = installer.install_steps(python="py", requirements_path=requirements)
    commands = [step.command for step in steps]
    assert commands[0][-1] == installer.LIGHT_THE_TORCH
    assert commands[1] == ["py", "-m", "light_the_torch", "install", "torch>=999"]
    assert commands[2][-2:] == ["-r", str(requirements)]


def test_torch_arguments_come_from_the_pytorch_extension_when_installed(monkeypatch):
    """PyTorchUtils (the PyTorch extension, a Slicer module) cannot exist here: a stand-in with its signature."""
    asked = []

    def arguments(forceComputationBackend=None, torchVersionRequirement=None, torchvisionVersionRequirement=None):
        asked.append(torchVersionRequirement)
        return ["install", f"torch{torchVersionRequirement}", "torchvision"]

    logic = types.SimpleNamespace(_getPipInstallArguments=arguments)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=logic))
    assert installer.torch_install_arguments() == ["install", f"torch{installer.TORCH_REQUIREMENT}", "torchvision"]
    assert asked == [installer.TORCH_REQUIREMENT]


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def test_background_install_runs_each_step_from_a_local_wheel_folder(tmp_path):
    wheels = tmp_path / "wheels"
    _write_wheel(wheels)
    _write_wheel(wheels, "tevia_offline_second")
    install = installer.BackgroundInstall([
        installer.InstallStep("probe", _pip("install", "--no-index", "--find-links", str(wheels), "--target",
                                            str(tmp_path / "a"), "tevia-offline-probe")),
        installer.InstallStep("second", _pip("install", "--no-index", "--find-links", str(wheels), "--target",
                                             str(tmp_path / "b"), "tevia-offline-second")),
    ])
    assert install.running and install.current.title == "probe"
    assert install.wait(120) == 0, "\n".join(install.output)
    assert install.current is None and not install.running
    assert (tmp_path / "a" / "tevia_offline_probe" / "__init__.py").is_file()
    assert (tmp_path / "b" / "tevia_offline_second" / "__init__.py").is_file()
    assert install.output[0] == "[1/2] probe" and "[2/2] second" in install.output


def test_background_install_stops_at_the_first_failing_step_and_says_which(tmp_path):
    (tmp_path / "wheels").mkdir()
    install = installer.BackgroundInstall([
        installer.InstallStep("missing", _pip("install", "--no-index", "--find-links", str(tmp_path / "wheels"),
                                              "--target", str(tmp_path / "a"), "tevia-offline-probe")),
        installer.InstallStep("never", [sys.executable, "-c", "open(r'%s', 'w')" % (tmp_path / "ran")]),
    ])
    assert install.wait(120) not in (0, None)
    assert any("tevia-offline-probe" in line for line in install.output)
    assert install.output[-1].startswith("missing failed (exit code")
    assert not (tmp_path / "ran").exists()


def test_cancel_ends_the_running_step_at_once_and_starts_no_other(tmp_path):
    install = installer.BackgroundInstall([
        installer.InstallStep("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"]),
        installer.InstallStep("never", [sys.executable, "-c", "open(r'%s', 'w')" % (tmp_path / "ran")]),
    ])
    while "started" not in install.output:
        assert install.poll(timeout_s=0.5) is None
    started = time.monotonic()
    install.cancel()
    assert install.wait(10) == -1 and time.monotonic() - started < 10
    assert install._process.poll() is not None and install.output[-1] == "Installation cancelled."
    assert not (tmp_path / "ran").exists()


def test_nothing_to_install_is_done_at_once():
    install = installer.BackgroundInstall([])
    assert install.poll() == 0 and not install.running


def test_logic_reports_what_the_local_worker_lacks_and_nothing_for_a_remote_server(slicer_scene, tmp_path, monkeypatch):
    import TeViASegment
    from TeViASegmentLib import settings

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    assert logic.missingDependencies() == [], "this test environment holds torch and every requirement"
    monkeypatch.setattr(installer, "TORCH_REQUIREMENT", ">=999")
    assert [m.split(" ")[0] for m in logic.missingDependencies()] == ["torch>=999"]
    logic.setRemoteServer("http://127.0.0.1:9")
    assert logic.missingDependencies() == []
