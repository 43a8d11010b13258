"""The page's TeViA panel behind the widgets: open a volume, segment from text, clicks, save.

Everything here runs on the trame server's event loop thread, the one thread that touches
the MRML scene. The module's Logic (TeViASegmentLib.logic.TeViASegmentLogic) does the work:
its jobs run in the warm worker process (or on a remote server), and an asyncio task polls
them every `POLL_S` seconds, so the page keeps answering while a segmentation runs.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from TeViASegmentLib import scene
from TeViASegmentLib.click_editor import ClickEditor

from tevia_web.downloads import write_dicom_seg_file, write_labelmap, write_seg_nrrd
from tevia_web.uploads import CheckedVolume, UploadError, UploadLimits, check_upload, resolve_data_file

if TYPE_CHECKING:  # the Logic imports slicer.ScriptedLoadableModule, which slicer_app_glue.attach provides
    from TeViASegmentLib.logic import TeViASegmentLogic

__all__ = ["WebSettings", "Workflow", "POLL_S", "REMOTE_CHOICE"]

logger = logging.getLogger(__name__)

POLL_S = 0.05
REMOTE_CHOICE = "remote"


@dataclass
class WebSettings:
    """What `tevia web` was started with.

    Attributes:
        data_dir: the folder whose volumes the page may open (None: uploads only).
        samples: name -> file of the samples offered one click away.
        models: extra model folders offered besides the catalogue's and the user's own.
        remote_url, remote_token: a TeViA server offered as a model choice.
        training_dir: the folder "Add to training set" writes to.
        limits: upload bounds.
        device: the worker's device.
    """

    data_dir: Path | None = None
    samples: dict[str, Path] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    remote_url: str | None = None
    remote_token: str | None = None
    training_dir: Path | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    device: str = "auto"


class Workflow:
    """The TeViA panel's actions on a trame-slicer `SlicerApp`.

    Args:
        slicer_app: the scene, its logics and I/O.
        logic: the module's Logic (owns the worker).
        settings: the server's settings.
        state: the trame state (names start with `tevia_`).
        on_volume: called with each volume node opened (the segment editor and volume
            properties follow it).
    """

    def __init__(self, slicer_app, logic: TeViASegmentLogic, settings: WebSettings, state,
                 on_volume: Callable[[object], None]) -> None:
        self.slicer_app, self.logic, self.settings, self.state = slicer_app, logic, settings, state
        self.on_volume = on_volume
        self.volume_node = None
        self.segmentation_node = None
        self.clicks = ClickEditor(logic, slicer_app.app_logic, on_message=self._message, on_busy=self._start_polling)
        self._poller: asyncio.Task | None = None
        self._segment_job = None
        self._before: set[str] = set()
        self._volume_folder: Path | None = None  # the temporary folder of a DICOM series' files
        self._dicom_folder: Path | None = None
        if settings.remote_url:
            logic.setRemoteServer(None)
        state.update({"tevia_status": "Open a volume to start.", "tevia_running": False, "tevia_progress": 0,
                      "tevia_warnings": [], "tevia_prompts": "", "tevia_convention": "patient",
                      "tevia_model": "default", "tevia_models": self.model_items(), "tevia_click_mode": "",
                      "tevia_volume_name": "", "tevia_segments": [],
                      "tevia_logic_seconds": None, "tevia_dicom": False,
                      "tevia_progress_text": ""})

    # ---- models -------------------------------------------------------------------------
    def model_items(self) -> list[dict]:
        """The model selector's entries: title (name, modality and target) and value."""
        items = [{"title": f"{name} ({self.logic.models.purpose(name)})", "value": name}
                 for name in [*self.logic.models.choices(), *self.settings.models]]
        if self.settings.remote_url:
            items.append({"title": f"TeViA server {self.settings.remote_url}", "value": REMOTE_CHOICE})
        return items

    def _use_model(self) -> str:
        model = self.state.tevia_model or "default"
        if model == REMOTE_CHOICE:
            self.logic.setRemoteServer(self.settings.remote_url, self.settings.remote_token)
            self.logic.grantRemoteConsent()  # the operator chose this server when starting the page
            return "default"
        self.logic.setRemoteServer(None)
        return model

    # ---- volumes ------------------------------------------------------------------------
    def open_upload(self, files: list[dict]) -> None:
        """Open the file the browser sent (trame's file dicts: name, content); a refused file
        leaves the scene as it was and says why in the status."""
        if not files:
            return
        upload = files[0]
        content = upload.get("content") or b""
        self._open_bytes(str(upload.get("name") or "upload"),
                         lambda path: path.write_bytes(content if isinstance(content, bytes) else bytes(content)))

    def open_file(self, path: Path) -> None:
        """Open a server-side file (a sample or a file of the data folder), with the upload checks."""
        self._open_bytes(path.name, lambda copy: shutil.copyfile(path, copy))

    def _open_bytes(self, name: str, write: Callable[[Path], object]) -> None:
        work = Path(tempfile.mkdtemp(prefix="tevia-web-"))
        try:
            path = work / "upload.bin"
            write(path)
            checked = check_upload(path, name, self.settings.limits, work)
            self._open(checked)
        except UploadError as error:
            self._status(f"Error: {error}")
            shutil.rmtree(work, ignore_errors=True)
            return
        # a DICOM series stays while its volume is open (a DICOM SEG references its files)
        self._forget_volume_folder()
        if checked.dicom_folder is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            self._volume_folder = work
        self.state.tevia_dicom = checked.dicom_folder is not None
        self._dicom_folder = checked.dicom_folder

    def _forget_volume_folder(self) -> None:
        if self._volume_folder is not None:
            shutil.rmtree(self._volume_folder, ignore_errors=True)
        self._volume_folder = self._dicom_folder = None

    def open_data_file(self, relative: str) -> None:
        try:
            self.open_file(resolve_data_file(self.settings.data_dir, relative))
        except UploadError as error:
            self._status(f"Error: {error}")

    def open_sample(self, name: str) -> None:
        if name not in self.settings.samples:
            self._status(f"Error: no sample named {name!r}; choose one of {sorted(self.settings.samples)}")
            return
        self.open_file(self.settings.samples[name])

    def _open(self, checked: CheckedVolume) -> None:
        if self.logic.job is not None and self.logic.job.running:
            raise UploadError("a segmentation is running: cancel it or wait before opening another volume")
        nodes = self.slicer_app.io_manager.load_volumes([str(p) for p in checked.files])
        if not nodes:
            raise UploadError(f"Slicer could not read {checked.name}; send one of the supported formats")
        self.clicks.clear()
        for node in [n for n in [self.volume_node, self.segmentation_node] if n is not None]:
            self.slicer_app.scene.RemoveNode(node)
        self.volume_node = nodes[0]
        self.volume_node.SetName(checked.name)
        self.segmentation_node = self.slicer_app.segmentation_editor.create_empty_segmentation_node()
        self.segmentation_node.SetName(f"{checked.name} TeViA")
        self.slicer_app.display_manager.show_volume(self.volume_node, do_reset_views=True)
        self.on_volume(self.volume_node)
        shape = scene.volume_shape(self.volume_node)
        self.state.update({"tevia_volume_name": checked.name, "tevia_warnings": [], "tevia_segments": []})
        self._status(f"Opened {checked.name} ({shape[2]} x {shape[1]} x {shape[0]} voxels): type prompts and "
                     "press Segment.")

    # ---- segmentation -------------------------------------------------------------------
    def segment(self) -> None:
        """Start segmenting the open volume from the prompts (one segment per line)."""
        if self.volume_node is None:
            self._status("Error: open a volume first (upload a file or pick a sample)")
            return
        self._before = set(scene.segment_ids(self.segmentation_node))
        started = time.monotonic()
        try:
            model = self._use_model()
            self._segment_job = self.logic.segmentAsync(
                self.volume_node, self.state.tevia_prompts or "", self.segmentation_node, model=model,
                device=self.settings.device, options={"convention": self.state.tevia_convention},
                onProgress=self._progress, onWarning=self._warning,
                onDone=lambda job: self._segment_done(job, time.monotonic() - started))
        except (ValueError, RuntimeError, PermissionError) as error:
            self._status(f"Error: {error}")
            return
        self.state.update({"tevia_running": True, "tevia_progress": 0, "tevia_progress_text": "", "tevia_warnings": []})
        self._status("Segmenting...")
        self._start_polling()

    def cancel(self) -> None:
        self.logic.cancel()

    def _progress(self, stage: str, done: int, total: int) -> None:
        """Progress goes to the bar and its caption; the status keeps the last message."""
        self.state.update({"tevia_progress": round(100 * done / total) if total else 0,
                           "tevia_progress_text": f"{stage} {done}/{total}"})

    def _warning(self, message: str) -> None:
        self.state.tevia_warnings = [*self.state.tevia_warnings, message]

    def _segment_done(self, job, seconds: float) -> None:
        """The job ended (inside its poll, on the event loop); `seconds`: from the Logic's
        segmentAsync call until its result was in the scene (the page shows it, benchmarks read it)."""
        self.state.update({"tevia_running": False, "tevia_logic_seconds": round(seconds, 3)})
        if job.state != "done":
            self._status(self.logic.statusLine(job))
            return
        added = [sid for sid in scene.segment_ids(self.segmentation_node) if sid not in self._before]
        editor = self.slicer_app.segmentation_editor
        if added:
            editor.set_active_segment_id(added[0])
        editor.trigger_all_signals()
        self._refresh_segments()
        unlike = " (the image is unlike the model's training images: see the notice)" \
            if self.logic.statusLine(job) != "Done." else ""
        self._status(f"{len(added)} segment(s) added in {seconds:.1f} s{unlike}. done")

    def _refresh_segments(self) -> None:
        if self.segmentation_node is None:
            self.state.tevia_segments = []
            return
        segmentation = self.segmentation_node.GetSegmentation()
        self.state.tevia_segments = [
            {"id": sid, "name": segmentation.GetSegment(sid).GetName()} for sid in scene.segment_ids(self.segmentation_node)]

    # ---- corrective clicks --------------------------------------------------------------
    def click_mode(self, mode: str) -> None:
        """Place positive ("positive") or negative ("negative") clicks on the active segment with
        the mouse in a slice view, or stop ("")."""
        if mode not in ("", "positive", "negative"):
            raise ValueError(f"mode must be '', 'positive' or 'negative', got {mode!r}")
        if not mode:
            self.clicks.stop_placement()
            self.state.tevia_click_mode = ""
            self._status("Point placement stopped.")
            return
        editor = self.slicer_app.segmentation_editor
        editor.deactivate_effect()  # the mouse places points now, not paint
        segment_id = editor.get_active_segment_id()
        try:
            self.clicks.set_target(self.volume_node, self.segmentation_node, segment_id, model=self._use_model(),
                                   device=self.settings.device, options={"convention": self.state.tevia_convention})
            self.clicks.start_placement(mode == "positive")
        except ValueError as error:
            self._status(f"Error: {error}")
            return
        self.state.tevia_click_mode = mode
        self._status(f"Click on the image to add {mode} points to the selected segment.")

    def undo_click(self) -> None:
        if not self.clicks.undo():
            self._status("No click to undo on the selected segment.")

    def _message(self, message: str) -> None:
        self._status(message + (" done" if message.startswith(("Click applied", "Click undone", "Clicks undone"))
                                 else ""))

    # ---- keeping the work ---------------------------------------------------------------
    def segmentation_file(self, folder: Path, kind: str) -> Path:
        """Write the segmentation as `kind`: "seg.nrrd", "nii.gz" (a labelmap on the volume's grid)
        or "seg.dcm" (a DICOM SEG of the DICOM series the volume was opened from).

        Raises:
            ValueError: nothing to save, or an unknown kind.
        """
        if self.volume_node is None or self.segmentation_node is None \
                or not self.segmentation_node.GetSegmentation().GetNumberOfSegments():
            raise ValueError("there is no segment to save yet: segment first")
        path = folder / f"{self.volume_node.GetName()}.{kind}"
        if kind == "seg.nrrd":
            write_seg_nrrd(self.segmentation_node, path)
        elif kind == "nii.gz":
            write_labelmap(self.segmentation_node, self.volume_node, path)
        elif kind == "seg.dcm":
            if self._dicom_folder is None:
                raise ValueError("a DICOM SEG references DICOM images: open a zipped DICOM series, or save "
                                 ".seg.nrrd or NIfTI")
            model = "" if self.state.tevia_model == REMOTE_CHOICE else str(self.state.tevia_model)
            write_dicom_seg_file(self.segmentation_node, self.volume_node, self._dicom_folder, path,
                                 self.state.tevia_convention, model)
        else:
            raise ValueError(f"kind must be 'seg.nrrd', 'nii.gz' or 'seg.dcm', got {kind!r}")
        return path

    def add_to_training_set(self) -> None:
        """Append the selected segment, its slices and prompt to the training folder
        (what the module's "Add to training set" writes)."""
        segment_id = self.slicer_app.segmentation_editor.get_active_segment_id()
        try:
            added = self.logic.addToTrainingSet(self.volume_node, self.segmentation_node, segment_id,
                                                self.settings.training_dir or "",
                                                convention=self.state.tevia_convention)
        except (ValueError, AttributeError) as error:
            self._status(f"Error: {error}")
            return
        self._status(f"Added {len(added)} slice(s) to the training set {self.settings.training_dir}. done")

    # ---- polling ------------------------------------------------------------------------
    def _start_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            with self.state:
                running = self._segment_job is not None and self._segment_job.poll()
                clicking = self.clicks.poll()
            if not running and not clicking:
                return
            await asyncio.sleep(POLL_S)

    def _status(self, text: str) -> None:
        self.state.tevia_status = text
        logger.info("status: %s", text)

    def shutdown(self) -> None:
        self._forget_volume_folder()
        self.clicks.clear()
        self.logic.shutdown()

