"""The web app: trame-slicer's SlicerApp, its views and segment editor, and the TeViA workflow.

One process holds one scene (every tab connected to it shares it): run one per annotator
(docs/WEB.md shows trame's launcher doing so).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from trame.app import TrameApp
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, MprInteractionButtonLogic, VolumePropertyLogic
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from tevia_web import slicer_app_glue
from tevia_web.page import Page
from tevia_web.uploads import data_folder_files
from tevia_web.workflow import WebSettings, Workflow

__all__ = ["TeviaWebApp"]

logger = logging.getLogger(__name__)


class TeviaWebApp(TrameApp):
    """The page and its server side.

    Args:
        settings: what `tevia web` was started with.
        server: a trame server (a new one when None).
        worker_python: the interpreter of the worker process (this one by default).
        settings_file: where the Logic keeps its settings (prompt history, ...).
    """

    def __init__(self, settings: WebSettings, server=None, worker_python: str | None = None,
                 settings_file: Path | None = None) -> None:
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        slicer_app_glue.attach(self.slicer_app)
        from TeViASegmentLib.logic import TeViASegmentLogic
        from TeViASegmentLib.settings import JsonFileSettings

        store = JsonFileSettings(settings_file or Path.home() / ".config" / "TeViA" / "web-settings.json")
        self.logic = TeViASegmentLogic(settingsStore=store, workerPython=worker_python or sys.executable)
        register_rca_factories(self.slicer_app.view_manager, self.server)
        # the views first: the segment editor's effects attach their pipelines to the views that exist
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.segment_editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.volume_property_logic = VolumePropertyLogic(self.server, self.slicer_app)
        self.mpr_logic = MprInteractionButtonLogic(self.server, self.slicer_app)
        self.workflow = Workflow(self.slicer_app, self.logic, settings, self.state, self._on_volume)
        actions = {"upload": self.workflow.open_upload, "sample": self.workflow.open_sample,
                   "data_file": self.workflow.open_data_file, "segment": self.workflow.segment,
                   "cancel": self.workflow.cancel, "click_mode": self.workflow.click_mode,
                   "undo_click": self.workflow.undo_click, "save_seg": self._save_seg,
                   "save_nifti": self._save_nifti, "save_dicom_seg": self._save_dicom_seg, "add_training": self.workflow.add_to_training_set}
        self.page = Page(self.server, self.layout_logic.layout_manager, actions, sorted(settings.samples),
                         data_folder_files(settings.data_dir), settings.training_dir is not None)
        self.segment_editor_logic.set_ui(self.page.segment_editor)
        self.volume_property_logic.set_ui(self.page.volume_property)
        self.layout_logic.set_ui(self.page.layout_button)
        self.mpr_logic.set_ui(self.page.mpr_button)
        self.state.trame__title = "TeViA"
        self.state.tevia_volume_rendering = False
        self.state.change("tevia_volume_rendering")(lambda tevia_volume_rendering, **_: self._show_volume_rendering())
        self.server.controller.on_server_exited.add(lambda **_: self.workflow.shutdown())

    def _on_volume(self, volume_node) -> None:
        self.volume_property_logic.on_volume_changed(volume_node)
        self._show_volume_rendering()
        editor = self.slicer_app.segmentation_editor
        editor.deactivate_effect()
        editor.set_active_segmentation(self.workflow.segmentation_node, volume_node)

    def _show_volume_rendering(self) -> None:
        """Volume rendering in the 3D view only when asked for (as in Slicer): rendered on the
        CPU (OSMesa) it takes most of a core for each frame, and the page waits for its frames."""
        volume = self.workflow.volume_node
        rendering = self.slicer_app.volume_rendering
        if volume is not None and rendering.has_vr_display_node(volume):
            rendering.get_vr_display_node(volume).SetVisibility(bool(self.state.tevia_volume_rendering))

    def _attachment(self, kind: str):
        try:
            with tempfile.TemporaryDirectory(prefix="tevia-web-") as folder:
                data = self.workflow.segmentation_file(Path(folder), kind).read_bytes()
        except (ValueError, OSError) as error:
            self.state.tevia_status = f"Error: {error}"
            return None
        return self.server.protocol.addAttachment(data)

    def _save_seg(self):
        return self._attachment("seg.nrrd")

    def _save_nifti(self):
        return self._attachment("nii.gz")

    def _save_dicom_seg(self):
        return self._attachment("seg.dcm")
