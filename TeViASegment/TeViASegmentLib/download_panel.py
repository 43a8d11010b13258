"""The module panel's model cache: *Download model* (the chosen catalogue model, in the
background with its progress) and *Clear cache* (every downloaded model).

The Widget builds the UI and hands this panel the widgets it needs; the panel calls
`logic.downloadModelAsync` (a `background.BackgroundCall` the Widget's timer polls) and
`logic.models.clear`, then lets the Widget refresh the model list.

Qt is used only through `connect_widgets` and the error display of a failed download: the rest
runs on any object with the widgets' Python properties and methods, as the tests do.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer.util

__all__ = ["DownloadPanel"]


class DownloadPanel:
    """Downloads the chosen model and clears the downloaded ones.

    Args:
        logic: the module's `TeViASegmentLogic` (`downloadModelAsync`, `models`).
        ui: the Widget's `ui` namespace: `downloadModelButton`, `clearCacheButton`, `progressBar`.
        current_model: returns the model chosen in the model list.
        on_models_changed: called when a download ended or the cache was cleared (refresh the list).
        on_message: called with each message for the user.
        start_call: called with a started `background.BackgroundCall` (the Widget polls it).
    """

    def __init__(self, logic, ui, current_model: Callable[[], str], on_models_changed: Callable[[], None],
                 on_message: Callable[[str], None], start_call: Callable[[object], None]) -> None:
        self.logic = logic
        self.ui = ui
        self.current_model = current_model
        self.on_models_changed = on_models_changed
        self.on_message = on_message
        self.start_call = start_call

    def connect_widgets(self) -> None:
        self.ui.downloadModelButton.clicked.connect(self.download)
        self.ui.clearCacheButton.clicked.connect(self.clear_cache)

    def download(self) -> None:
        """Download the chosen model in the background; the list is refreshed when it ends."""
        model = self.current_model()
        self.ui.downloadModelButton.enabled = False
        self.ui.progressBar.setRange(0, 100)
        self.on_message(f"Downloading model {model}...")

        def done(folder, error) -> None:
            if error is not None:
                slicer.util.errorDisplay(f"Download of model {model} failed: {error}")
            else:
                self.on_message(f"Model {model} downloaded.")
            self.on_models_changed()

        self.start_call(self.logic.downloadModelAsync(model, onProgress=self.show_progress, onDone=done))

    def show_progress(self, received: int, total: int) -> None:
        """Percent received (0 while the size is unknown)."""
        self.ui.progressBar.setValue(int(100 * received / total) if total else 0)

    def clear_cache(self) -> None:
        """Remove every downloaded model (bundled ones stay) and say how much was freed."""
        freed = self.logic.models.clear()
        self.on_message(f"Removed downloaded models ({freed / 1e6:.1f} MB).")
        self.on_models_changed()
