"""The module panel's "Correct with clicks" section: its buttons, keys and state, on a ClickEditor.

The Widget builds the UI and hands this panel the widgets it needs; the panel does the rest:
it connects the segment selector and the buttons, keeps the buttons' checked state in step with
Slicer's placement mode (observing the interaction and selection nodes, so a mode changed
elsewhere, by the toolbar or a right-click, shows too), installs the P / N / Esc / Ctrl+Z keys
while the module is shown, and calls `ClickEditor` (which calls `logic.refineAsync`).

Qt is imported only inside `connect_widgets` and `install_shortcuts`: the rest runs on any
object with the widgets' Python properties (`checked`) and a real MRML scene, as the tests do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import slicer
from TeViASegmentLib import clicks
from TeViASegmentLib.click_editor import ClickEditor

__all__ = ["ClickPanel", "SHORTCUTS"]

logger = logging.getLogger(__name__)

SHORTCUTS = {"P": "place_positive", "N": "place_negative", "Escape": "stop_placement", "Ctrl+Z": "undo"}
"""Key sequence (Qt's QKeySequence text) -> the ClickPanel method it calls."""


class ClickPanel:
    """Positive / negative point placement and undo for the segment chosen in the panel.

    Args:
        logic: the module's `TeViASegmentLogic`.
        ui: the Widget's `ui` namespace: `clickSegmentSelector` (qMRMLSegmentSelectorWidget),
            `positiveClickButton`, `negativeClickButton` (checkable), `undoClickButton`.
        target_settings: called when placement starts: the volume node and refineAsync's run
            settings (model, device, options, precision) as (volume, settings), after the
            Widget applied its server choice; None when the user declined (nothing starts).
        on_message: called with each message for the user.
        on_busy: called when a re-run is queued (start the poll timer: `editor.poll`).
        app_logic: the application logic (interaction and selection nodes);
            `slicer.app.applicationLogic()` when None.
    """

    def __init__(self, logic, ui, target_settings: Callable[[], tuple[object, dict] | None],
                 on_message: Callable[[str], None], on_busy: Callable[[], None], app_logic=None) -> None:
        self.ui = ui
        self.target_settings = target_settings
        self.on_message = on_message
        self.editor = ClickEditor(logic, app_logic, on_message=on_message, on_busy=on_busy)
        self.shortcuts: list = []
        interaction, selection = self.editor.app_logic.GetInteractionNode(), self.editor.app_logic.GetSelectionNode()
        self._observed: list[tuple[object, int]] = [
            (interaction, interaction.AddObserver(interaction.InteractionModeChangedEvent, self.update_buttons)),
            (selection, selection.AddObserver(selection.ActivePlaceNodeIDChangedEvent, self.update_buttons))]

    # -- the actions (buttons and keys) ------------------------------------------------------
    def place_positive(self) -> None:
        self.toggle_placement(True)

    def place_negative(self) -> None:
        self.toggle_placement(False)

    def toggle_placement(self, positive: bool) -> None:
        """Start placing positive (True) or negative points on the chosen segment; pressed
        again while placing that kind: stop.

        Raises:
            ValueError: no volume or no segment chosen (nothing changes).
        """
        try:
            if clicks.placing(self.editor.app_logic) == positive:
                self.editor.stop_placement()
                return
            chosen = self.target_settings()
            if chosen is None:
                return
            volume, settings = chosen
            selector = self.ui.clickSegmentSelector
            self.editor.set_target(volume, selector.currentNode(), selector.currentSegmentID(), **settings)
            self.editor.start_placement(positive)
        finally:
            self.update_buttons()

    def stop_placement(self) -> None:
        self.editor.stop_placement()

    def undo(self) -> None:
        """Remove the chosen segment's last click (its voxels come back: ClickEditor.undo)."""
        if not self.editor.undo():
            self.on_message("No click to undo on this segment.")

    def update_buttons(self, _caller=None, _event=None) -> None:
        """Check the button of the kind of point being placed (none outside Place mode)."""
        placing = clicks.placing(self.editor.app_logic)
        self.ui.positiveClickButton.checked = placing is True
        self.ui.negativeClickButton.checked = placing is False

    def shortcut_actions(self) -> dict[str, Callable[[], None]]:
        """Key sequence -> the action it triggers (SHORTCUTS)."""
        return {key: getattr(self, name) for key, name in SHORTCUTS.items()}

    # -- Qt --------------------------------------------------------------------------------
    def connect_widgets(self, segmentation_selector) -> None:
        """Connect the buttons, and follow `segmentation_selector` (the output segmentation)
        with the click segment selector."""
        segmentation_selector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.clickSegmentSelector.setCurrentNode)
        self.ui.positiveClickButton.clicked.connect(lambda: self._reporting(self.place_positive))
        self.ui.negativeClickButton.clicked.connect(lambda: self._reporting(self.place_negative))
        self.ui.undoClickButton.clicked.connect(self.undo)

    def install_shortcuts(self, parent) -> None:
        """The keys, on `parent` (the main window) while the module is shown; text fields
        keep their own keys (Qt gives a focused text field its keys first)."""
        import qt

        self.remove_shortcuts()
        for key, action in self.shortcut_actions().items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), parent)
            shortcut.connect("activated()", lambda action=action: self._reporting(action))
            self.shortcuts.append(shortcut)

    def remove_shortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.shortcuts = []

    def _reporting(self, action: Callable[[], None]) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start placing clicks.", waitCursor=True):
            action()

    # -- life cycle ------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the clicks' undo history (the scene closes); the point lists stay."""
        self.editor.clear()

    def cleanup(self) -> None:
        """Remove the keys and observers, cancel a running re-run (the module is removed)."""
        self.remove_shortcuts()
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []
        self.editor.clear()
