"""The module's Logic: text-guided segmentation of volume nodes, local (warm worker process)
or remote, usable from Slicer's Python console and from tests without the GUI.

TeViASegment.py re-exports it as `TeViASegment.TeViASegmentLogic`, Slicer's convention.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
from TeViASegmentLib import (arguments, background, finetune, jobs, models, parameters, scene, settings, terminology,
                             training_export, worker_inputs)
from TeViASegmentLib.worker_client import WorkerClient

__all__ = ["TeViASegmentLogic", "CONNECTION_TEST_TIMEOUT_S", "NOTICE_TAG", "DOMAIN_WARNING_PREFIX", "domain_notice"]

logger = logging.getLogger(__name__)

#: A connection test gives up after this many seconds (it runs off the GUI thread anyway).
CONNECTION_TEST_TIMEOUT_S = 10.0
NOTICE_TAG = "TeViA.Notice"
"""Segment tag (and segmentation node attribute, for the latest run) holding the notice of an
input unlike the model's training images."""
DOMAIN_WARNING_PREFIX = "Unlike the training images: "
"""How the engine's domain warnings start (tevia.inference.domain.WARNING_PREFIX; the Slicer side imports no engine)."""


def domain_notice(warnings: list[str]) -> str:
    """The warnings that say the input is unlike the model's training images, joined ("" if none)."""
    return " ".join(w for w in warnings if w.startswith(DOMAIN_WARNING_PREFIX))


class TeViASegmentLogic(ScriptedLoadableModuleLogic):
    """Text-guided segmentation of volume nodes, local (warm worker process) or remote.

    Args:
        settingsStore: QSettings-like store; Slicer's user settings when None (a JSON file
            in the user's config folder outside Slicer).
        workerPython: interpreter for the worker (PythonSlicer inside Slicer by default).
        modelStore: the model catalogue and cache.
    """

    def __init__(self, settingsStore=None, workerPython=None, modelStore=None):
        super().__init__()
        if settingsStore is None:
            app = getattr(slicer, "app", None)
            settingsStore = app.userSettings() if app is not None else settings.JsonFileSettings(
                Path.home() / ".config" / "TeViA" / "settings.json")
        self.settings = settings.ModuleSettings(settingsStore)
        self.models = modelStore or models.ModelStore(models.load_catalogue())
        self.worker = WorkerClient(python=workerPython)
        self.workerInputs = worker_inputs.WorkerInputs()
        self.remoteUrl: str | None = None
        self.remoteToken: str | None = None
        self.workerInfo: dict = {}
        self.job: jobs.SegmentJob | None = None
        self.fineTuneJob: finetune.FineTuneJob | None = None
        self.cancelGraceSeconds = jobs.CANCEL_GRACE_S
        self._loaded: tuple[str, str, str] | None = None
        self.connectionTestTimeoutSeconds = CONNECTION_TEST_TIMEOUT_S
        terminology.load_findings_terminology()

    def getParameterNode(self):
        """The scene's parameter node, wrapped (`parameters.TeViASegmentParameterNode`); in a
        new one, the values come from the user's settings."""
        node = super().getParameterNode()
        fresh = not node.GetParameterNames()
        wrapped = parameters.TeViASegmentParameterNode(node)
        if fresh:
            for name, value in parameters.initial_values(self.settings).items():
                setattr(wrapped, name, value)
        return wrapped

    def segment(self, volumeNode, prompts, segmentationNode=None, model="default", device="auto",
                options=None, timeoutSeconds=None, precision="fp32"):
        """Segment a volume from text prompts and wait for the result (blocks the caller).

        Returns:
            The segmentation node holding one new segment per prompt.

        Raises:
            ValueError: bad arguments; jobs.JobError: the worker or server failed (clear message).
        """
        job = self.segmentAsync(volumeNode, prompts, segmentationNode, model, device, options, precision=precision)
        return job.wait(timeoutSeconds)

    def segmentAsync(self, volumeNode, prompts, segmentationNode=None, model="default", device="auto",
                     options=None, onProgress=None, onDone=None, onWarning=None, precision="fp32") -> jobs.SegmentJob:
        """Start segmenting; returns the job at once (call job.poll() from a timer; job.cancel()).

        Args:
            volumeNode: scalar volume node to segment.
            prompts: a list of prompts, or text with one prompt per line (one segment each).
            segmentationNode: existing segmentation to add segments to (never changing the ones
                it has), or None for a new one.
            model: "default", a catalogue model name or a model folder path.
            device: "auto", "cuda", "cpu" or "mps".
            options: worker options; "convention" ("patient" by default, or "image") says
                which side convention the prompts use.
            onProgress: called with (stage, done, total). onWarning: called with each warning.
            onDone: called with the job when it ends (job.state, job.error, job.result).
            precision: "fp32", or "bf16" (faster on GPUs and recent CPUs); local worker only (a
                remote server runs at its own precision).
        """
        promptList = arguments.prompt_list(prompts)
        options = arguments.checked_options(volumeNode, segmentationNode, device, options, precision)
        if self.job is not None and self.job.running:
            raise RuntimeError("A segmentation is already running: wait for it or cancel it first")
        note = scene.conversion_note(volumeNode)
        if note:
            logger.warning(note)
            if onWarning:
                onWarning(note)
        mirrorSides = terminology.sides_mirrored(options["convention"], scene.ijk_to_ras(volumeNode))

        def importer(labelmap, labels, warnings, origin=None):
            node, segmentIds = scene.import_labelmap(labelmap, labels, volumeNode, segmentationNode,
                                                     mirror_sides=mirrorSides, origin=origin)
            notice = domain_notice(warnings)
            for segmentId in segmentIds if notice else []:
                node.GetSegmentation().GetSegment(segmentId).SetTag(NOTICE_TAG, notice)
            if notice:
                node.SetAttribute(NOTICE_TAG, notice)
            else:
                node.RemoveAttribute(NOTICE_TAG)
            return node

        callbacks = {"on_progress": onProgress, "on_warning": onWarning, "on_done": self._whenDone(onDone)}
        self.settings.add_prompts(promptList)
        if self.remoteUrl:
            self.job = self._remoteJob(volumeNode, promptList, options, importer, callbacks)
        else:
            # crop: the worker writes only the block that holds the segments (PROTOCOL.md)
            self.job = self._localJob(volumeNode, promptList, model, device, precision, options, importer, callbacks,
                                      {"crop": True})
        return self.job

    def refineAsync(self, volumeNode, segmentationNode, segmentId, clicks, apply, model="default", device="auto",
                    options=None, precision="fp32", onDone=None, onWarning=None) -> jobs.SegmentJob:
        """Re-run one segment's prompt with corrective clicks, on the local worker or the remote
        server (a model with click inputs); returns the job at once. The scene is changed only
        by `apply`.

        Args:
            volumeNode, segmentationNode, segmentId: the volume and the segment (its prompt is
                the segment's `scene.PROMPT_TAG`, else its name).
            clicks: the segment's clicks, as requests carry them ({"ras": [R, A, S], "positive": bool}).
            apply: called with (labelmap_kji, the worker's or server's result: `job.answer`, with
                `refined_slices` and `refined_axis`) when it arrives; its return value is the
                job's result. model, device, options, precision, onDone, onWarning: as in
                `segmentAsync` (a remote server runs its own model at its own precision).

        Raises:
            ValueError: bad arguments, or a segment not in the segmentation.
            PermissionError: a remote server the user has not agreed to send volumes to.
            RuntimeError: a segmentation is already running.
        """
        options = arguments.checked_options(volumeNode, segmentationNode, device, options, precision)
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode else None
        if segment is None:
            raise ValueError(f"segmentId {segmentId!r} is not in the segmentation: choose a TeViA segment")
        if self.job is not None and self.job.running:
            raise RuntimeError("A segmentation is already running: wait for it or cancel it first")
        started: list[jobs.SegmentJob] = []
        callbacks = {"on_warning": onWarning, "on_done": self._whenDone(onDone)}
        prompt = scene.segment_prompt(segment) or segment.GetName()

        def importer(labelmap, labels, warnings):
            return apply(labelmap, started[0].answer)

        if self.remoteUrl:
            self.job = self._remoteJob(volumeNode, [prompt], options, importer, callbacks, [list(clicks)])
        else:
            self.job = self._localJob(volumeNode, [prompt], model, device, precision, options, importer, callbacks,
                                      {"clicks": [list(clicks)]})
        started.append(self.job)
        return self.job

    def _whenDone(self, onDone):
        """A job's on_done: forget the loaded model after a failure, keep what the worker said, call onDone."""
        def done(job):
            if job.state == "failed":
                self._loaded = None
            self.workerInfo.update(job.info)
            if onDone:
                onDone(job)
        return done

    def _localJob(self, volumeNode, prompts, model, device, precision, options, importer, callbacks, extra=None):
        modelRef = model if model in self.models.catalogue and self.models.entry(model).bundled \
            else self.models.resolve(model)
        workDir = Path(tempfile.mkdtemp(prefix="TeViA-"))
        requests = []
        if not self.worker.running or self._loaded != (modelRef, device, precision):
            requests.append({"type": "load", "model": modelRef, "device": device, "precision": precision})
        try:
            source, key, _ = self.workerInputs.input_for(volumeNode)
            requests.append({"type": "segment", "input": source, "input_key": key, "prompts": prompts,
                             "output": str(workDir / "labelmap.npy"), "options": options, **(extra or {})})
            job = jobs.LocalSegmentJob(self.worker, requests, workDir, importer, self.cancelGraceSeconds, **callbacks)
        except Exception:  # the job could not start: leave no files behind
            shutil.rmtree(workDir, ignore_errors=True)
            self.workerInputs.clear()
            self._loaded = None
            raise
        self._loaded = (modelRef, device, precision)
        return job

    def _remoteJob(self, volumeNode, prompts, options, importer, callbacks, clicks=None):
        if not self.settings.has_consent(self.remoteUrl):
            raise PermissionError(f"Sending volumes to {self.remoteUrl} needs the user's consent first "
                                  "(grantRemoteConsent)")
        client = self._remoteClient()
        voxels, ijkToRas = scene.volume_arrays(volumeNode)
        return jobs.RemoteSegmentJob(
            lambda cancelled: client.segment_answer(voxels, ijkToRas, prompts, options, clicks, cancelled),
            importer, **callbacks)

    def _remoteClient(self, timeout=None):
        from TeViASegmentLib.remote_client import RemoteClient

        if not self.remoteUrl:
            raise ValueError("No remote server URL: type the server's URL first")
        return RemoteClient(self.remoteUrl, self.remoteToken, **({"timeout": timeout} if timeout else {}))

    def setRemoteServer(self, url, token=None, rememberToken=False):
        """Use a remote TeViA server (url) or, with url None/empty, the local worker."""
        self.remoteUrl = url.strip().rstrip("/") if url and url.strip() else None
        self.remoteToken = token or None
        if self.remoteUrl:
            self.settings.save_remote(self.remoteUrl, self.remoteToken, rememberToken)

    @staticmethod
    def statusLine(job) -> str:
        """The status line for a finished job: "Done.", with the notice when the input looked
        unlike the model's training images (the segments are created all the same)."""
        if job.state != "done":
            return "Cancelled; the scene is unchanged." if job.state == "cancelled" else f"Error: {job.error}"
        notice = domain_notice(job.warnings)
        return f"Done. Notice: {notice.removeprefix(DOMAIN_WARNING_PREFIX)}" if notice else "Done."

    def remoteConsentNeeded(self) -> bool:
        """Whether the user must still agree to send volumes to the remote server."""
        return bool(self.remoteUrl) and not self.settings.has_consent(self.remoteUrl)

    def grantRemoteConsent(self):
        self.settings.grant_consent(self.remoteUrl)

    def testRemoteConnection(self) -> dict:
        """Health + info of the remote server (blocks; raises RemoteError with a clear message)."""
        client = self._remoteClient(self.connectionTestTimeoutSeconds)
        client.health()
        return client.info()

    def testRemoteConnectionAsync(self, onDone=None) -> background.BackgroundCall:
        """`testRemoteConnection` on a background thread, giving up after
        `connectionTestTimeoutSeconds`; onDone(info, error) is called by the call's poll()."""
        client = self._remoteClient(self.connectionTestTimeoutSeconds)
        return background.BackgroundCall(lambda report, cancelled: (client.health(), client.info())[1], onDone)

    def downloadModelAsync(self, model, onProgress=None, onDone=None) -> background.BackgroundCall:
        """Download a catalogue model on a background thread (cancel() stops it, nothing is
        kept); onProgress(received, total) and onDone(folder, error) are called by poll()."""
        return background.BackgroundCall(
            lambda report, cancelled: self.models.download(model, progress=report, cancelled=cancelled),
            onDone, onProgress)

    def examplePrompts(self, model="default") -> list[str]:
        """The model's example prompts (catalogue, else the model folder's model.json)."""
        return self.models.example_prompts(model)

    def addToTrainingSet(self, volumeNode, segmentationNode, segmentId, datasetDir, prompt=None, split="train",
                         convention="patient", model="default"):
        """Append the slices holding a segment (axial, oriented as the worker slices them), its
        mask and prompt to a data set folder (TeViASegmentLib.training_export).

        Args:
            prompt: the segment's text; the segment's own prompt when None.
            convention: the sides the prompt names, "patient" (default) or "image".
            model: the model whose side convention the exported descriptions use.

        Returns:
            The mask file names added.

        Raises:
            ValueError: no folder chosen (empty datasetDir: nothing is written, not even into
                Slicer's working directory), or datasetDir is a file.
        """
        if datasetDir is None or not str(datasetDir).strip() or str(datasetDir).strip() == ".":
            raise ValueError("No data set folder chosen: choose the training set folder first "
                             f"(for example {parameters.default_dataset_folder()})")
        if Path(datasetDir).exists() and not Path(datasetDir).is_dir():
            raise ValueError(f"datasetDir {str(datasetDir)!r} is a file, not a folder: choose a folder")
        self.settings.set("datasetFolder", str(datasetDir))
        voxels, ijkToRas, mask, segmentPrompt = scene.segment_arrays(volumeNode, segmentationNode, segmentId)
        layout = training_export.worker_layout(ijkToRas, voxels.shape)
        return training_export.export_training_slices(
            voxels, mask, prompt or segmentPrompt, datasetDir, volumeNode.GetName(), split, layout,
            convention=convention, model_convention=self.models.side_convention(model))

    def missingDependencies(self) -> list[str]:
        """What the local worker still needs in Slicer's Python (torch, Resources/requirements.txt),
        read from package metadata without importing anything; empty with a remote server."""
        from TeViASegmentLib import installer

        return [] if self.remoteUrl else installer.missing_dependencies()

    def fineTuneAsync(self, datasetDir, model="default", settings=None, onProgress=None, onDone=None):
        """Start fine-tuning a model on a training set folder (made with addToTrainingSet) in
        background processes; returns the job at once (call job.poll() from a timer; job.cancel()).

        Whole volumes are held out for validation; when the job is done, job.result is the new
        model's folder in the per-user models folder, and `self.models.choices()` lists it.

        Args:
            datasetDir: the training set folder.
            model: the model to start from (a name, `<name>-<version>` or a folder).
            settings: a `finetune.FineTuneSettings` (epochs, reference set, ...).
            onProgress: called with (stage, done, total): ("evaluate", step, steps) and
                ("epoch", epoch, epochs). onDone: called with the job when it ends.
        """
        if self.fineTuneJob is not None and self.fineTuneJob.running:
            raise RuntimeError("A fine-tuning is already running: wait for it or cancel it first")
        self.fineTuneJob = finetune.FineTuneJob(
            datasetDir, self.models.resolve(model), settings, python=self.worker.python,
            models_dir=self.models.user_dir, on_progress=onProgress, on_done=onDone)
        return self.fineTuneJob

    def cancel(self):
        if self.job is not None:
            self.job.cancel()

    def shutdown(self):
        """Cancel a running job and fine-tuning, stop the worker process and remove the kept worker inputs."""
        self.cancel()
        if self.fineTuneJob is not None:
            self.fineTuneJob.cancel()
        self.worker.shutdown()
        self.workerInputs.clear()
