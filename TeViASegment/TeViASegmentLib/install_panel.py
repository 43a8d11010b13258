"""The module panel's dependency installation: the Install button, its progress and cancel, and
the offer to install what the local worker lacks before a Segment.

The Widget builds the UI and hands this panel the widgets it needs; the panel runs
`installer.BackgroundInstall` (polled from the Widget's timer through `poll`), shows each step
and pip's output, and asks before installing (through `confirm`, the Widget's Yes / No dialog).

Qt is used only through `connect_widgets` and the error display of `toggle`: the rest runs on
any object with the widgets' Python properties and methods, as the tests do.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer.util
from TeViASegmentLib import installer, parameters

__all__ = ["InstallPanel"]


class InstallPanel:
    """Installs torch and the requirements in the background, and cancels on request.

    Args:
        logic: the module's `TeViASegmentLogic` (`missingDependencies`).
        ui: the Widget's `ui` namespace: `installButton`, `offlineCheckBox`, `wheelFolderButton`
            (ctkDirectoryButton), `progressBar` (QProgressBar), `statusLog` (QPlainTextEdit).
        confirm: asks the user a Yes / No question (title, text); True for Yes.
        on_message: called with each message for the user.
        on_busy: called when an installation starts (start the poll timer: `poll`).
    """

    def __init__(self, logic, ui, confirm: Callable[[str, str], bool], on_message: Callable[[str], None],
                 on_busy: Callable[[], None]) -> None:
        self.logic = logic
        self.ui = ui
        self.confirm = confirm
        self.on_message = on_message
        self.on_busy = on_busy
        self.install: installer.BackgroundInstall | None = None

    def connect_widgets(self) -> None:
        """Show the default wheel folder and connect the Install button."""
        self.ui.wheelFolderButton.directory = str(parameters.user_folder("wheels"))
        self.ui.installButton.clicked.connect(self.toggle)

    def toggle(self) -> None:
        """Install (or, while installing, cancel) torch and the requirements in the background."""
        if self.install is not None:
            self.install.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the installation.", waitCursor=True):
            self.start()

    def start(self) -> None:
        """Start installing what is missing (from the wheel folder when offline is checked).

        Raises:
            ValueError: offline with a wheel folder that does not exist (nothing starts).
        """
        wheels = self.ui.wheelFolderButton.directory if self.ui.offlineCheckBox.checked else None
        steps = installer.install_steps(wheel_dir=wheels)
        if not steps:
            self.on_message("Everything TeViA needs is installed.")
            return
        self.install = installer.BackgroundInstall(steps)
        self.ui.installButton.text = "Cancel installation"
        self.ui.progressBar.setRange(0, len(steps))
        self.on_busy()

    def dependencies_ready(self) -> bool:
        """Whether the local worker can run; if not, offer to install what it lacks."""
        if self.install is not None:
            self.on_message("TeViA's dependencies are still being installed: Segment works once that has finished.")
            return False
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if self.confirm(
                "Install TeViA's dependencies?",
                "Segmenting on this computer needs Python packages that are not installed yet:\n\n"
                + "\n".join(missing) + "\n\nInstall them now? They download in the background (PyTorch with CUDA "
                "is several GB); Slicer stays usable, and Segment works once the installation has finished."):
            self.toggle()
        return False

    def poll(self) -> bool:
        """Show the installation's new output and progress; whether it is still running."""
        if self.install is None:
            return False
        code = self.install.poll()
        for line in self.install.output:
            self.ui.statusLog.appendPlainText(line)
        self.install.output.clear()
        if code is None:
            self.ui.progressBar.setValue(self.install.index)
            self.ui.progressBar.setFormat(
                f"Installing {self.install.current.title} ({self.install.index + 1}/{len(self.install.steps)})")
            return True
        self.ui.progressBar.setValue(self.ui.progressBar.maximum if code == 0 else 0)
        self.ui.progressBar.setFormat("%p%")
        self.ui.installButton.text = "Install dependencies"
        self.install = None
        if code == 0:
            self.on_message("TeViA's dependencies are installed: press Segment.")
        return False

    def cleanup(self) -> None:
        """Cancel a running installation (the module is removed)."""
        if self.install is not None:
            self.install.cancel()
