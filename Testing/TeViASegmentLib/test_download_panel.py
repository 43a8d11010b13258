"""The model cache panel (TeViASegmentLib.download_panel): a real download from a real HTTP
server on 127.0.0.1 into a real model cache, then Clear cache. Only the Qt widgets are
stand-ins: objects with the Python properties and methods the panel uses."""

from __future__ import annotations

import time
import types

import pytest
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)
from test_models import _catalogue, _model_zip, served  # noqa: F401 (fixture)

from TeViASegmentLib import models, settings
from TeViASegmentLib.download_panel import DownloadPanel


class _ProgressBar:
    """QProgressBar's setRange and setValue, recording each value."""

    def __init__(self) -> None:
        self.range, self.values = (0, 1), []

    def setRange(self, minimum: int, maximum: int) -> None:  # noqa: N802 (Qt API)
        self.range = (minimum, maximum)

    def setValue(self, value: int) -> None:  # noqa: N802 (Qt API)
        self.values.append(value)


@pytest.fixture
def setup(slicer_scene, served, tmp_path):  # noqa: F811 (fixture)
    """(panel, ui, events): the panel on a catalogue whose "chest-ct" is served on 127.0.0.1."""
    import TeViASegment

    folder, base = served
    sha = _model_zip(folder / "chest-ct.zip")
    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    logic.models = models.ModelStore(_catalogue(tmp_path, f"{base}/chest-ct.zip", sha), tmp_path / "cache")
    ui = types.SimpleNamespace(downloadModelButton=types.SimpleNamespace(enabled=True), progressBar=_ProgressBar())
    events = types.SimpleNamespace(messages=[], calls=[], refreshed=0)

    def refreshed() -> None:
        events.refreshed += 1

    panel = DownloadPanel(logic, ui, lambda: "chest-ct", refreshed, events.messages.append, events.calls.append)
    yield panel, ui, events
    logic.shutdown()


def test_download_shows_its_progress_then_refreshes_the_list_and_clear_cache_removes_it(setup):
    panel, ui, events = setup
    panel.download()
    assert not ui.downloadModelButton.enabled and ui.progressBar.range == (0, 100)
    assert events.messages == ["Downloading model chest-ct..."] and events.refreshed == 0
    (call,) = events.calls
    start = time.monotonic()
    while call.poll(0.05):
        assert time.monotonic() - start < 60, "the download did not end"
    values = ui.progressBar.values
    assert values and values[-1] == 100 and values == sorted(values), "rising to 100 %"
    assert events.messages[-1] == "Model chest-ct downloaded." and events.refreshed == 1
    assert panel.logic.models.available("chest-ct")
    size = panel.logic.models.cache_size()
    panel.clear_cache()
    assert events.messages[-1] == f"Removed downloaded models ({size / 1e6:.1f} MB)." and size > 0
    assert not panel.logic.models.available("chest-ct") and events.refreshed == 2


def test_progress_of_an_unknown_size_shows_zero(setup):
    panel, ui, _ = setup
    panel.show_progress(5000, 0)
    panel.show_progress(1, 3)
    assert ui.progressBar.values == [0, 33]
