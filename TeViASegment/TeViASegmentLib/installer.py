"""Install what the worker needs into Slicer's Python: torch, then Resources/requirements.txt.

- torch comes only through the PyTorch extension (`PyTorchUtilsLogic.installTorch` with the
  version requirement `TORCH_REQUIREMENT`), which picks the CUDA build for the installed driver.
- The rest comes from `Resources/requirements.txt` (lower and upper bounds, no torch) through
  `slicer.packaging.pip_ensure` (Slicer >= 5.12; `slicer.pydeps` in 5.11), which asks for
  confirmation and shows progress. On Slicer 5.10, and for an offline install from a local
  wheel folder, pip runs as a background process (`PipProcess`) that the caller polls.
Nothing here imports torch: versions are read from the installed packages' metadata.
"""

from __future__ import annotations

import importlib.metadata
import logging
import queue
import subprocess
import threading
from pathlib import Path

import slicer

from .worker_client import default_python

__all__ = ["TORCH_REQUIREMENT", "REQUIREMENTS_PATH", "read_requirements", "missing_requirements",
           "torch_version", "install_torch", "pip_command", "PipProcess", "install_requirements"]

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.3,<2.15"
REQUIREMENTS_PATH = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
REQUESTER = "TeViA"


def read_requirements(path: str | Path = REQUIREMENTS_PATH) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements not satisfied by the packages installed in this Python.

    Args:
        requirements: PEP 508 strings such as "safetensors>=0.4,<1".

    Returns:
        Each unsatisfied requirement with what is installed, e.g. "pillow>=10,<14 (installed: 9.5)".
    """
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (installed: {installed})")
    return missing


def torch_version() -> str | None:
    """The installed torch version (from its metadata, without importing it), or None."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def install_torch(ask_confirmation: bool = True) -> str:
    """Install torch through the PyTorch extension, with `TORCH_REQUIREMENT`.

    Returns:
        The installed torch version.

    Raises:
        RuntimeError: the PyTorch extension is missing, or the user declined the install.
    """
    if not missing_requirements([f"torch{TORCH_REQUIREMENT}"]):
        return torch_version()
    try:
        import PyTorchUtils
    except ImportError as error:
        raise RuntimeError("TeViA needs the PyTorch extension to install torch: install 'PyTorch' from the "
                           "Extensions Manager, restart Slicer and try again.") from error
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=ask_confirmation, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise RuntimeError("PyTorch was not installed (the installation was declined or failed).")
    return torch_version()


def pip_command(requirements_path: str | Path = REQUIREMENTS_PATH, wheel_dir: str | Path | None = None,
                target: str | Path | None = None, python: str | None = None) -> list[str]:
    """The pip command line that installs a requirements file.

    Args:
        requirements_path: the requirements file.
        wheel_dir: a local folder of wheels: install offline from it only (--no-index).
        target: install into this folder instead of the interpreter's site-packages.
        python: the interpreter (PythonSlicer inside Slicer by default).
    """
    command = [python or default_python(), "-m", "pip", "install", "--disable-pip-version-check",
               "-r", str(requirements_path)]
    if wheel_dir is not None:
        if not Path(wheel_dir).is_dir():
            raise ValueError(f"wheel_dir must be an existing folder of wheel files, got {str(wheel_dir)!r}")
        command += ["--no-index", "--find-links", str(wheel_dir)]
    if target is not None:
        command += ["--target", str(target)]
    return command


class PipProcess:
    """A pip run in the background: output lines on a queue, drained by `poll`.

    Args:
        command: the command line (see `pip_command`).
    """

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.output: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, encoding="utf-8", errors="replace")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip())
        self._lines.put(None)

    def poll(self, timeout_s: float = 0.0) -> int | None:
        """Collect new output lines into `output`; the return code once pip has ended, else None."""
        ended = False
        try:
            while True:
                line = self._lines.get(timeout=timeout_s) if timeout_s > 0 else self._lines.get_nowait()
                timeout_s = 0.0
                if line is None:
                    ended = True
                    break
                self.output.append(line)
        except queue.Empty:
            pass
        return self._process.wait() if ended else None

    def wait(self) -> int:
        """Block until pip ends; its return code."""
        while (code := self.poll(timeout_s=0.5)) is None:
            pass
        return code


def install_requirements(requirements_path: str | Path = REQUIREMENTS_PATH,
                         wheel_dir: str | Path | None = None) -> PipProcess | None:
    """Install the requirements the way this Slicer supports best.

    With `wheel_dir`, or on a Slicer without `pip_ensure` (5.10), pip starts in the background
    and the returned `PipProcess` must be polled. Otherwise `pip_ensure` runs (it shows its own
    confirmation and progress) and None is returned.
    """
    packaging_module = getattr(slicer, "packaging", None) or getattr(slicer, "pydeps", None)
    if wheel_dir is None and packaging_module is not None and hasattr(packaging_module, "pip_ensure"):
        from packaging.requirements import Requirement

        packaging_module.pip_ensure([Requirement(r) for r in read_requirements(requirements_path)],
                                    requester=REQUESTER)
        return None
    command = pip_command(requirements_path, wheel_dir)
    logger.info("Installing TeViA requirements: %s", " ".join(command))
    return PipProcess(command)
