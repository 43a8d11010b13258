"""Install what the worker needs into Slicer's Python: torch, then Resources/requirements.txt.

Everything runs in background processes (`BackgroundInstall`, polled from a QTimer), so
Slicer stays usable while several GB download, shows each step and pip's output, and can
cancel. Nothing here imports torch: what is installed is read from package metadata, and
the worker, not Slicer, is the process that imports torch.

- Online: torch through light-the-torch, the installer of the PyTorch extension, which picks
  the CUDA build for the installed NVIDIA driver (with the extension's own arguments when it
  is installed, plus `TORCH_REQUIREMENT`); then `pip install -r requirements.txt`. Only the
  steps still needed are run.
- Offline: one `pip install --no-index --find-links FOLDER torch... -r requirements.txt`; pip
  looks at nothing but the folder (docs/SLICER.md says how to make one for each OS).
"""

from __future__ import annotations

import importlib.metadata
import logging
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .worker_client import child_environment, child_process_options, default_python, kill_process_tree

__all__ = ["TORCH_REQUIREMENT", "LIGHT_THE_TORCH", "REQUIREMENTS_PATH", "read_requirements", "missing_requirements",
           "missing_dependencies", "torch_version", "torch_install_arguments", "InstallStep", "install_steps",
           "BackgroundInstall"]

logger = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.3,<2.15"
LIGHT_THE_TORCH = "light-the-torch>=0.5"
REQUIREMENTS_PATH = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


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


def missing_dependencies(requirements_path: str | Path = REQUIREMENTS_PATH) -> list[str]:
    """What the local worker still lacks in this Python: torch and the requirements file."""
    return missing_requirements([f"torch{TORCH_REQUIREMENT}", *read_requirements(requirements_path)])


def torch_version() -> str | None:
    """The installed torch version (from its metadata, without importing it), or None."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_install_arguments() -> list[str]:
    """light-the-torch's command-line arguments for torch with `TORCH_REQUIREMENT`.

    The PyTorch extension's own arguments when it is installed (they carry its per-platform
    pins); plain ones without it.
    """
    try:
        import PyTorchUtils

        return list(PyTorchUtils.PyTorchUtilsLogic._getPipInstallArguments(torchVersionRequirement=TORCH_REQUIREMENT))
    except (ImportError, AttributeError, TypeError) as error:
        logger.info("PyTorch extension arguments not available (%s); using plain light-the-torch arguments", error)
        return ["install", f"torch{TORCH_REQUIREMENT}"]


@dataclass(frozen=True)
class InstallStep:
    """One command of an installation and what it installs (shown to the user)."""

    title: str
    command: list[str]


def install_steps(wheel_dir: str | Path | None = None, python: str | None = None,
                  requirements_path: str | Path = REQUIREMENTS_PATH) -> list[InstallStep]:
    """The commands that install what is missing; empty when nothing is.

    Args:
        wheel_dir: a folder of wheels: install torch and the requirements from it only
            (`--no-index`: no network at all).
        python: the interpreter to install into (PythonSlicer inside Slicer by default).
        requirements_path: the requirements file.

    Raises:
        ValueError: `wheel_dir` is not an existing folder.
    """
    python = python or default_python()
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheel_dir is not None:
        if not Path(wheel_dir).is_dir():
            raise ValueError(f"wheel_dir must be an existing folder of wheel files, got {str(wheel_dir)!r}")
        return [InstallStep(f"PyTorch and the requirements from {wheel_dir}",
                            [*pip, "--no-index", "--find-links", str(wheel_dir), f"torch{TORCH_REQUIREMENT}",
                             "-r", str(requirements_path)])]
    steps = []
    if missing_requirements([f"torch{TORCH_REQUIREMENT}"]):
        if missing_requirements([LIGHT_THE_TORCH]):
            steps.append(InstallStep("light-the-torch (chooses the PyTorch build for this computer)",
                                     [*pip, LIGHT_THE_TORCH]))
        steps.append(InstallStep("PyTorch (several GB with CUDA: this can take minutes)",
                                 [python, "-m", "light_the_torch", *torch_install_arguments()]))
    if missing_requirements(read_requirements(requirements_path)):
        steps.append(InstallStep("the TeViA requirements", [*pip, "-r", str(requirements_path)]))
    return steps


class BackgroundInstall:
    """Install steps run one after another, each in a background process.

    Call `poll` from a timer: it collects output lines into `output`, starts the next step
    when one succeeds, and returns the final return code (0 when every step succeeded, the
    failing step's code otherwise, -1 when cancelled) once done. `cancel` ends the running
    step's whole process tree.

    Args:
        steps: what to run (see `install_steps`).
    """

    def __init__(self, steps: list[InstallStep]) -> None:
        self.steps = list(steps)
        self.output: list[str] = []
        self.index = -1
        self.returncode: int | None = None if self.steps else 0
        self._lines: queue.Queue = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._start_next()

    @property
    def current(self) -> InstallStep | None:
        """The step running now, None once done."""
        return self.steps[self.index] if self.returncode is None and 0 <= self.index < len(self.steps) else None

    @property
    def running(self) -> bool:
        return self.returncode is None

    def _start_next(self) -> None:
        self.index += 1
        if self.index >= len(self.steps):
            self.returncode = 0
            return
        step = self.steps[self.index]
        logger.info("Installing %s: %s", step.title, " ".join(step.command))
        self.output.append(f"[{self.index + 1}/{len(self.steps)}] {step.title}")
        try:
            self._process = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                             env=child_environment(), **child_process_options())
        except OSError as error:
            self.output.append(f"Could not start {step.command[0]}: {error}")
            self.returncode = 1
            return
        threading.Thread(target=self._read, args=(self._process, self._lines), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen, lines: queue.Queue) -> None:
        for line in process.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    def poll(self, timeout_s: float = 0.0) -> int | None:
        """Collect new output; the final return code once every step has ended, else None."""
        while self.returncode is None:
            try:
                line = self._lines.get(timeout=timeout_s) if timeout_s > 0 else self._lines.get_nowait()
            except queue.Empty:
                return None
            if line is not None:
                self.output.append(line)
                continue
            code = self._process.wait()
            if code != 0:
                self.output.append(f"{self.steps[self.index].title} failed (exit code {code}).")
                self.returncode = code
            else:
                self._start_next()
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until every step has ended (or `timeout_s` passed: TimeoutError); the return code."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := self.poll(timeout_s=0.5)) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the installation did not end in {timeout_s} s")
        return code

    def cancel(self) -> None:
        """Stop the installation: end the running step's process tree; no further step starts."""
        if self.returncode is not None:
            return
        self.returncode = -1
        if self._process is not None:
            kill_process_tree(self._process)
        self.output.append("Installation cancelled.")
