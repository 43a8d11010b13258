"""The page: trame-slicer's views, segment editor and volume properties, and the TeViA panel.

The elements scripts and tests drive carry stable ids (docs/WEB.md lists them): `tevia-upload`,
`tevia-prompts`, `tevia-segment`, `tevia-cancel`, `tevia-status`, `tevia-save-seg`, and
`tevia-save-nifti`, `tevia-save-dicom-seg`, `tevia-click-positive`, `tevia-click-negative`, `tevia-click-stop`,
`tevia-click-undo`, `tevia-add-training`, `tevia-model`, `tevia-convention`, `tevia-sample-<name>`.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets.vuetify3 import (VAlert, VBtn, VBtnToggle, VCard, VCardText, VCardTitle, VDivider,
                                    VExpansionPanel, VExpansionPanels, VExpansionPanelText, VExpansionPanelTitle,
                                    VProgressLinear, VSelect, VSwitch, VTextarea)
from trame_slicer.app.ui import (LayoutButton, MprInteractionButton, SegmentEditorToolbarUI, SegmentEditorUI,
                                 SegmentEditorUndoRedoUI, VolumePropertyUI)
from trame_slicer.app.ui.viewer_layout import ViewerLayout

__all__ = ["Page", "DOWNLOAD_MIME"]

DOWNLOAD_MIME = "application/octet-stream"
CONVENTIONS = [{"title": "the patient's sides", "value": "patient"},
               {"title": "the image's halves", "value": "image"}]


def _download(file_name_expression: str, trigger_name: str) -> str:
    """A click handler that asks the server for bytes and hands them to the browser as a file."""
    return f"utils.download({file_name_expression}, trigger('{trigger_name}'), '{DOWNLOAD_MIME}')"


class Page:
    """Builds the page; `actions` maps each TeViA action name to its server-side callable.

    Args:
        server: the trame server.
        layout_manager: trame-slicer's layout manager (the view grid).
        actions: callables for "upload", "sample", "data_file", "segment", "cancel", "click_mode",
            "undo_click", "save_seg", "save_nifti", "save_dicom_seg", "add_training".
        samples: the sample names offered one click away.
        data_files: the files of the server's data folder.
        can_train: whether "Add to training set" has a folder to write to.
    """

    def __init__(self, server, layout_manager, actions: dict, samples: list[str], data_files: list[str],
                 can_train: bool) -> None:
        ctrl = server.controller
        self.names = {name: ctrl.trigger_name(action) for name, action in actions.items()}
        with ViewerLayout(server, title="TeViA", is_drawer_visible=True) as self.layout:
            self.layout.drawer.width = 420
            with self.layout.drawer:
                self._tevia_panel(samples, data_files, can_train)
                with VExpansionPanels(multiple=True, model_value=([0],), variant="accordion"):
                    with VExpansionPanel():
                        VExpansionPanelTitle("Segment editor")
                        with VExpansionPanelText():
                            self.segment_editor = SegmentEditorUI()
                    with VExpansionPanel():
                        VExpansionPanelTitle("Window / level and presets")
                        with VExpansionPanelText():
                            VSwitch(id="tevia-volume-rendering", label="Volume rendering in the 3D view",
                                    v_model=("tevia_volume_rendering",), density="compact", hide_details=True,
                                    color="primary")
                            self.volume_property = VolumePropertyUI()
            with self.layout.toolbar:
                self.layout_button = LayoutButton(classes="mt-1", disabled=("!tevia_volume_name",))
                self.mpr_button = MprInteractionButton(classes="mt-1", disabled=("!tevia_volume_name",))
                SegmentEditorToolbarUI(editor_ui=self.segment_editor)
            with self.layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.segment_editor)
            with self.layout.content:
                layout_manager.initialize_layout_grid(self.layout)

    def _tevia_panel(self, samples: list[str], data_files: list[str], can_train: bool) -> None:
        names = self.names
        with VCard(variant="flat", classes="pa-2"):
            VCardTitle("Text-guided segmentation", classes="text-subtitle-1")
            with VCardText():
                html.Label("Open a volume", classes="text-caption", for_="tevia-upload")
                html.Input(id="tevia-upload", type="file", classes="mb-2", style="width: 100%;",
                           accept=".nrrd,.nii,.nii.gz,.mha,.png,.jpg,.jpeg,.zip",
                           disabled=("tevia_running",),
                           click="$event.target.value = ''",  # choosing the same file again opens it again
                           change=f"trigger('{names['upload']}', [$event.target.files])")
                with html.Div(classes="d-flex flex-wrap ga-1 mb-2"):
                    for sample in samples:
                        VBtn(f"Sample: {sample}", id=f"tevia-sample-{sample}", size="small", variant="tonal",
                             disabled=("tevia_running",), click=f"trigger('{names['sample']}', ['{sample}'])")
                if data_files:
                    VSelect(id="tevia-data-file", label="Data folder", items=(data_files,), density="compact",
                            hide_details=True, classes="mb-2", disabled=("tevia_running",),
                            update_modelValue=f"trigger('{names['data_file']}', [$event])")
                VSelect(id="tevia-model", label="Model", v_model=("tevia_model",), items=("tevia_models",),
                        density="compact", hide_details=True, classes="mb-2", disabled=("tevia_running",))
                VTextarea(id="tevia-prompts", label="Prompts (one per line)", v_model=("tevia_prompts",), rows=3,
                          auto_grow=True, density="compact", hide_details=True, classes="mb-2")
                VSelect(id="tevia-convention", label="Left/right in the prompts name", v_model=("tevia_convention",),
                        items=("tevia_conventions", CONVENTIONS),
                        density="compact", hide_details=True, classes="mb-2")
                with html.Div(classes="d-flex ga-2 mb-2"):
                    VBtn("Segment", id="tevia-segment", color="primary", disabled=("tevia_running || !tevia_volume_name",),
                         click=f"trigger('{names['segment']}')")
                    VBtn("Cancel", id="tevia-cancel", disabled=("!tevia_running",), click=f"trigger('{names['cancel']}')")
                with html.Div(v_show=("tevia_running",), classes="mb-2"):
                    VProgressLinear(model_value=("tevia_progress",), color="primary")
                    html.Div("{{ tevia_progress_text }}", id="tevia-progress", classes="text-caption")
                html.Div("{{ tevia_status }}", id="tevia-status", classes="text-body-2 mb-2")
                VAlert(v_for="(warning, i) in tevia_warnings", key="i", text=("warning",), type="warning",
                       density="compact", variant="tonal", classes="mb-1 text-caption")
                VDivider(classes="my-2")
                html.Div("Corrective clicks on the selected segment", classes="text-caption")
                with html.Div(classes="d-flex flex-wrap ga-1 mb-2"):
                    with VBtnToggle(model_value=("tevia_click_mode",), density="compact", divided=True,
                                    update_modelValue=f"trigger('{names['click_mode']}', [$event || ''])"):
                        VBtn("+ point", id="tevia-click-positive", value="positive", size="small")
                        VBtn("- point", id="tevia-click-negative", value="negative", size="small")
                    VBtn("Stop", id="tevia-click-stop", size="small", variant="text",
                         click=f"trigger('{names['click_mode']}', [''])")
                    VBtn("Undo click", id="tevia-click-undo", size="small", variant="text",
                         click=f"trigger('{names['undo_click']}')")
                VDivider(classes="my-2")
                with html.Div(classes="d-flex flex-wrap ga-1"):
                    VBtn("Save .seg.nrrd", id="tevia-save-seg", size="small", prepend_icon="mdi-download",
                         disabled=("!tevia_segments.length",),
                         click=_download("tevia_volume_name + '.seg.nrrd'", names["save_seg"]))
                    VBtn("Save NIfTI labelmap", id="tevia-save-nifti", size="small", prepend_icon="mdi-download",
                         disabled=("!tevia_segments.length",),
                         click=_download("tevia_volume_name + '-label.nii.gz'", names["save_nifti"]))
                    VBtn("Save DICOM SEG", id="tevia-save-dicom-seg", size="small", prepend_icon="mdi-download",
                         v_if=("tevia_dicom",), disabled=("!tevia_segments.length",),
                         click=_download("tevia_volume_name + '.seg.dcm'", names["save_dicom_seg"]))
                    if can_train:
                        VBtn("Add to training set", id="tevia-add-training", size="small",
                             disabled=("!tevia_segments.length",), click=f"trigger('{names['add_training']}')")
