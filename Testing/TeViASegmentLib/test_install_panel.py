"""The Install panel (TeViASegmentLib.install_panel): real background installs (real child
processes: Python commands in place of the steps, which would download several GB into this
Python), the real Logic's dependency check. Only the Qt widgets are stand-ins: objects with the
Python properties and methods the panel uses."""

from __future__ import annotations

import sys
import time
import types

import pytest
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import installer, settings
from TeViASegmentLib.install_panel import InstallPanel


class _ProgressBar:
    """QProgressBar's setters the panel calls, and its `maximum` property."""

    def __init__(self) -> None:
        self.minimum, self.maximum, self.value, self.format = 0, 100, 0, "%p%"
        self.formats: list[str] = []

    def setRange(self, minimum: int, maximum: int) -> None:  # noqa: N802 (Qt API)
        self.minimum, self.maximum = minimum, maximum

    def setValue(self, value: int) -> None:  # noqa: N802 (Qt API)
        self.value = value

    def setFormat(self, text: str) -> None:  # noqa: N802 (Qt API)
        self.format = text
        self.formats.append(text)


class _Log:
    """QPlainTextEdit's appendPlainText."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def appendPlainText(self, text: str) -> None:  # noqa: N802 (Qt API)
        self.lines.append(text)


@pytest.fixture
def panel(slicer_scene, tmp_path):
    """(panel, ui, messages, questions, busy): the panel on stand-in widgets, offline unchecked."""
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    ui = types.SimpleNamespace(installButton=types.SimpleNamespace(text="Install dependencies"),
                               offlineCheckBox=types.SimpleNamespace(checked=False),
                               wheelFolderButton=types.SimpleNamespace(directory=str(tmp_path / "wheels")),
                               progressBar=_ProgressBar(), statusLog=_Log())
    messages, questions, busy = [], [], []
    answer = types.SimpleNamespace(yes=False)

    def confirm(title: str, text: str) -> bool:
        questions.append((title, text))
        return answer.yes

    panel = InstallPanel(logic, ui, confirm, messages.append, lambda: busy.append(True))
    yield panel, ui, messages, questions, busy
    panel.cleanup()
    logic.shutdown()


def _poll_until_done(panel: InstallPanel, limit_s: float = 120) -> None:
    start = time.monotonic()
    while panel.poll():
        assert time.monotonic() - start < limit_s, "the installation did not end"
        time.sleep(0.05)


def _python(title: str, code: str) -> installer.InstallStep:
    return installer.InstallStep(title, [sys.executable, "-c", code])


def test_an_installation_shows_each_step_and_its_output_then_says_to_press_segment(panel, monkeypatch):
    panel, ui, messages, _, busy = panel
    steps = [_python("first", "import time; print('one', flush=True); time.sleep(0.5)"),
             _python("second", "print('two')")]
    monkeypatch.setattr(installer, "install_steps", lambda wheel_dir=None: steps)  # instead of several GB from PyPI
    panel.start()
    assert ui.installButton.text == "Cancel installation" and (ui.progressBar.minimum, ui.progressBar.maximum) == (0, 2)
    assert busy == [True] and panel.install is not None
    _poll_until_done(panel)
    assert ui.progressBar.formats[0] == "Installing first (1/2)" and ui.progressBar.format == "%p%"
    assert ui.progressBar.value == 2, "full once every step succeeded"
    assert ["[1/2] first", "one", "[2/2] second", "two"] == [line for line in ui.statusLog.lines if line]
    assert ui.installButton.text == "Install dependencies" and panel.install is None
    assert messages == ["TeViA's dependencies are installed: press Segment."]


def test_offline_installs_from_the_wheel_folder_and_a_failure_gives_no_success_message(panel, tmp_path, monkeypatch):
    panel, ui, messages, _, _ = panel
    asked = []
    failing = _python("broken", "import sys; print('no matching distribution', flush=True); sys.exit(3)")
    monkeypatch.setattr(installer, "install_steps", lambda wheel_dir=None: asked.append(wheel_dir) or [failing])
    ui.offlineCheckBox.checked = True
    panel.start()
    assert asked == [str(tmp_path / "wheels")]
    _poll_until_done(panel)
    assert ui.statusLog.lines[:2] == ["[1/1] broken", "no matching distribution"]
    assert ui.statusLog.lines[-1].startswith("broken failed (exit code 3")
    assert ui.progressBar.value == 0 and ui.installButton.text == "Install dependencies" and messages == []


def test_a_missing_wheel_folder_is_refused_and_nothing_starts(panel, tmp_path):
    panel, ui, messages, _, busy = panel
    ui.offlineCheckBox.checked = True
    with pytest.raises(ValueError, match="wheel_dir must be an existing folder of wheel files"):
        panel.start()
    assert panel.install is None and ui.installButton.text == "Install dependencies" and busy == [] and messages == []


def test_pressing_install_again_cancels_the_running_step(panel, tmp_path, monkeypatch):
    panel, ui, messages, _, _ = panel
    steps = [_python("slow", "import time; print('started', flush=True); time.sleep(120)"),
             _python("never", f"open(r'{tmp_path / 'ran'}', 'w')")]
    monkeypatch.setattr(installer, "install_steps", lambda wheel_dir=None: steps)
    panel.start()
    while "started" not in ui.statusLog.lines:
        assert panel.poll()
        time.sleep(0.05)
    panel.toggle()
    _poll_until_done(panel, limit_s=10)
    assert ui.statusLog.lines[-1] == "Installation cancelled." and not (tmp_path / "ran").exists()
    assert ui.progressBar.value == 0 and ui.installButton.text == "Install dependencies" and messages == []


def test_with_everything_installed_nothing_runs(panel):
    panel, ui, messages, questions, busy = panel
    assert panel.dependencies_ready() and questions == [], "this test environment holds torch and every requirement"
    panel.start()
    assert messages == ["Everything TeViA needs is installed."] and panel.install is None and busy == []


def test_segment_offers_to_install_what_is_missing_and_declined_starts_nothing(panel, monkeypatch):
    panel, ui, messages, questions, busy = panel
    monkeypatch.setattr(installer, "TORCH_REQUIREMENT", ">=999")
    assert not panel.dependencies_ready()
    ((title, text),) = questions
    assert title == "Install TeViA's dependencies?" and "torch>=999" in text
    assert panel.install is None and busy == []


def test_segment_waits_while_an_installation_runs(panel, monkeypatch):
    panel, ui, messages, questions, _ = panel
    slow = _python("slow", "import time; time.sleep(120)")
    monkeypatch.setattr(installer, "install_steps", lambda wheel_dir=None: [slow])
    panel.start()
    assert not panel.dependencies_ready() and questions == []
    assert messages == ["TeViA's dependencies are still being installed: Segment works once that has finished."]
