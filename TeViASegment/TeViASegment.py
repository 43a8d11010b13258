"""TeViA Segment: text-guided segmentation in 3D Slicer.

Module, Widget (the only Qt code: it wires Resources/UI/TeViASegment.ui to the Logic), Logic
(usable from the Python console and from tests) and Test. The heavy lifting lives in
TeViASegmentLib; the model runs in a background worker process, never in Slicer's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import slicer
import slicer.util
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from TeViASegmentLib import arguments, jobs, models, scene, settings, training_export
from TeViASegmentLib.arguments import CONVENTIONS, DEVICES
from TeViASegmentLib.worker_client import WorkerClient


class TeViASegment(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        super().__init__(parent)
        self.parent.title = "TeViA Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["TeViA contributors"]
        self.parent.helpText = (
            "Segment structures from a text description: type one prompt per line, press Segment. "
            "The model runs in a background process (or on a remote TeViA server); edit the result "
            "in Segment Editor and add it to a training set to fine-tune the model.")
        self.parent.acknowledgementText = (
            "TeViA (text-to-vision alignment with a historic visual prototype); QaTa-COV19 and LViT "
            "annotations for the bundled model.")


class TeViASegmentWidget(ScriptedLoadableModuleWidget):
    """Wires Resources/UI/TeViASegment.ui to TeViASegmentLogic; all Qt use is here."""

    def setup(self):
        import qt

        super().setup()
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TeViASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TeViASegmentLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onPoll)
        self.pip = None
        self._fillChoices()
        self.ui.segmentButton.clicked.connect(self.onSegmentOrCancel)
        self.ui.promptHistoryComboBox.activated.connect(self.onHistoryChosen)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelFolderButton.directoryChanged.connect(self.onLocalModelFolder)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        self.ui.clearCacheButton.clicked.connect(self.onClearCache)
        self.ui.show3DButton.clicked.connect(self.onShow3D)
        self.ui.openSegmentEditorButton.clicked.connect(self.onOpenSegmentEditor)
        self.ui.addToTrainingButton.clicked.connect(self.onAddToTraining)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(self.ui.trainingSegmentSelector.setCurrentNode)

    def cleanup(self):
        self.timer.stop()
        self.logic.shutdown()

    def _fillChoices(self):
        s = self.logic.settings
        self.ui.modelComboBox.clear()
        for name in self.logic.models.catalogue:
            self.ui.modelComboBox.addItem(name)
        for folder in s.get("localModels", []):
            self.ui.modelComboBox.addItem(folder)
        self.ui.modelComboBox.setCurrentText(s.get("model", "default"))
        device, convention = s.get("device", "auto"), s.get("convention", "patient")
        self.ui.deviceComboBox.setCurrentIndex(DEVICES.index(device) if device in DEVICES else 0)
        self.ui.conventionComboBox.setCurrentIndex(CONVENTIONS.index(convention) if convention in CONVENTIONS else 0)
        self.ui.bf16CheckBox.checked = s.get("precision", "fp32") == "bf16"
        self.ui.remoteUrlEdit.text = s.get("remoteUrl", "")
        self.ui.rememberTokenCheckBox.checked = bool(s.get("rememberToken", False))
        self.ui.useRemoteCheckBox.checked = bool(s.get("useRemote", False))
        self.ui.remoteTokenEdit.text = s.remote_token() or ""
        self.onModelChanged()

    def onModelChanged(self, _index=None):
        self.ui.promptHistoryComboBox.clear()
        self.ui.promptHistoryComboBox.addItem("Recent and example prompts...")
        for prompt in self.logic.settings.prompt_history() + self.logic.examplePrompts(self.ui.modelComboBox.currentText):
            self.ui.promptHistoryComboBox.addItem(prompt)
        model = self.ui.modelComboBox.currentText
        self.ui.downloadModelButton.enabled = model in self.logic.models.catalogue and not self.logic.models.available(model)

    def onHistoryChosen(self, index):
        if index > 0:
            self.ui.promptEdit.appendPlainText(self.ui.promptHistoryComboBox.itemText(index))

    def onLocalModelFolder(self, folder):
        with slicer.util.tryWithErrorDisplay("Not a TeViA model folder.", waitCursor=True):
            self.logic.models.resolve(folder)
            self.logic.settings.set("localModels", list(dict.fromkeys([*self.logic.settings.get("localModels", []), folder])))
            self.ui.modelComboBox.addItem(folder)
            self.ui.modelComboBox.setCurrentText(folder)

    def onDownloadModel(self):
        model = self.ui.modelComboBox.currentText
        with slicer.util.tryWithErrorDisplay(f"Download of model {model} failed.", waitCursor=True):
            self.ui.progressBar.setRange(0, 100)
            self.logic.models.download(model, progress=self._downloadProgress)
            self.log(f"Model {model} downloaded.")
        self.onModelChanged()

    def _downloadProgress(self, received, total):
        import qt

        self.ui.progressBar.setValue(int(100 * received / total) if total else 0)
        qt.QApplication.processEvents()

    def onClearCache(self):
        freed = self.logic.models.clear()
        self.log(f"Removed downloaded models ({freed / 1e6:.1f} MB).")
        self.onModelChanged()

    def onInstall(self):
        from TeViASegmentLib import installer

        with slicer.util.tryWithErrorDisplay("Installing the TeViA requirements failed.", waitCursor=True):
            self.log(f"torch {installer.install_torch()} is installed.")
            wheels = self.ui.wheelFolderButton.directory if self.ui.offlineCheckBox.checked else None
            self.pip = installer.install_requirements(wheel_dir=wheels)
            if self.pip is not None:
                self.log("pip is installing the requirements in the background...")
                self.timer.start()

    def onSegmentOrCancel(self):
        if self.logic.job is not None and self.logic.job.running:
            self.logic.cancel()
            self.log("Cancelling...")
            return
        import qt

        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            s = self.logic.settings
            model, device = self.ui.modelComboBox.currentText, DEVICES[self.ui.deviceComboBox.currentIndex]
            convention = CONVENTIONS[self.ui.conventionComboBox.currentIndex]
            precision = "bf16" if self.ui.bf16CheckBox.checked else "fp32"
            for key, value in (("model", model), ("device", device), ("convention", convention), ("precision", precision)):
                s.set(key, value)
            s.set("useRemote", bool(self.ui.useRemoteCheckBox.checked))
            url = self.ui.remoteUrlEdit.text if self.ui.useRemoteCheckBox.checked else None
            self.logic.setRemoteServer(url, self.ui.remoteTokenEdit.text, self.ui.rememberTokenCheckBox.checked)
            if self.logic.remoteConsentNeeded():
                answer = qt.QMessageBox.question(
                    slicer.util.mainWindow(), "Send volume to a remote server?",
                    f"The volume's voxels and geometry will be sent to {self.logic.remoteUrl}; "
                    "no patient information is sent. Continue?")
                if answer != qt.QMessageBox.Yes:
                    return
                self.logic.grantRemoteConsent()
            self.ui.statusLog.clear()
            self.logic.segmentAsync(
                self.ui.inputVolumeSelector.currentNode(), self.ui.promptEdit.toPlainText(),
                self.ui.outputSegmentationSelector.currentNode(), model, device, {"convention": convention},
                onProgress=self.onProgress, onDone=self.onDone, onWarning=lambda m: self.log(f"Warning: {m}"),
                precision=precision)
            self.ui.segmentButton.text = "Cancel"
            self.ui.progressBar.setRange(0, 0)
            self.log("Segmenting...")
            self.timer.start()

    def onPoll(self):
        if self.logic.job is not None and self.logic.job.running:
            self.logic.job.poll()
        if self.pip is not None:
            code = self.pip.poll()
            for line in self.pip.output:
                self.ui.statusLog.appendPlainText(line)
            self.pip.output.clear()
            if code is not None:
                self.log("Requirements installed." if code == 0 else f"pip failed (exit code {code}).")
                self.pip = None
        if (self.logic.job is None or not self.logic.job.running) and self.pip is None:
            self.timer.stop()

    def onProgress(self, stage, done, total):
        self.ui.progressBar.setRange(0, max(total, 1))
        self.ui.progressBar.setValue(done)
        self.ui.progressBar.setFormat(f"{stage} %v/%m")

    def onDone(self, job):
        self.ui.segmentButton.text = "Segment"
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.setValue(1 if job.state == "done" else 0)
        device = self.logic.workerInfo.get("device_name") or self.logic.workerInfo.get("device")
        if device:
            self.ui.detectedDeviceLabel.text = f"using {device}"
        if job.state == "done":
            self.ui.outputSegmentationSelector.setCurrentNode(job.result)
            self.log("Done.")
        elif job.state == "cancelled":
            self.log("Cancelled; the scene is unchanged.")
        else:
            self.log(f"Error: {job.error}")
        self.onModelChanged()

    def onShow3D(self):
        node = self.ui.outputSegmentationSelector.currentNode()
        if node is not None:
            node.CreateClosedSurfaceRepresentation()

    def onOpenSegmentEditor(self):
        node = self.ui.outputSegmentationSelector.currentNode()
        slicer.util.selectModule("SegmentEditor")
        if node is not None:
            slicer.modules.SegmentEditorWidget.editor.setSegmentationNode(node)
            slicer.modules.SegmentEditorWidget.editor.setSourceVolumeNode(self.ui.inputVolumeSelector.currentNode())

    def onAddToTraining(self):
        with slicer.util.tryWithErrorDisplay("Could not add the segment to the training set.", waitCursor=True):
            added = self.logic.addToTrainingSet(
                self.ui.inputVolumeSelector.currentNode(), self.ui.trainingSegmentSelector.currentNode(),
                self.ui.trainingSegmentSelector.currentSegmentID(), self.ui.datasetFolderButton.directory)
            self.log(f"Added {len(added)} slices to {self.ui.datasetFolderButton.directory}.")

    def onTestConnection(self):
        with slicer.util.tryWithErrorDisplay("Connection to the TeViA server failed.", waitCursor=True):
            self.logic.setRemoteServer(self.ui.remoteUrlEdit.text, self.ui.remoteTokenEdit.text,
                                       self.ui.rememberTokenCheckBox.checked)
            info = self.logic.testRemoteConnection()
            self.log(f"Connected: {info.get('name')} {info.get('version')} on {info.get('device')}.")

    def log(self, message):
        self.ui.statusLog.appendPlainText(message)
        logging.info(message)


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
        self.remoteUrl: str | None = None
        self.remoteToken: str | None = None
        self.workerInfo: dict = {}
        self.job: jobs.SegmentJob | None = None
        self.cancelGraceSeconds = jobs.CANCEL_GRACE_S
        self._loaded: tuple[str, str, str] | None = None

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

        def importer(labelmap, labels, warnings):
            return scene.import_labelmap(labelmap, labels, volumeNode, segmentationNode)[0]

        def done(job):
            if job.state == "failed":
                self._loaded = None
            self.workerInfo.update(job.info)
            if onDone:
                onDone(job)

        callbacks = {"on_progress": onProgress, "on_warning": onWarning, "on_done": done}
        self.settings.add_prompts(promptList)
        if self.remoteUrl:
            self.job = self._remoteJob(volumeNode, promptList, options, importer, callbacks)
        else:
            self.job = self._localJob(volumeNode, promptList, model, (device, precision), options, importer, callbacks)
        return self.job

    def _localJob(self, volumeNode, prompts, model, runOn, options, importer, callbacks):
        """runOn: (device, precision)."""
        modelRef = model if model in self.models.catalogue and self.models.entry(model).bundled \
            else self.models.resolve(model)
        device, precision = runOn
        workDir = Path(tempfile.mkdtemp(prefix="TeViA-"))
        requests = []
        if not self.worker.running or self._loaded != (modelRef, device, precision):
            requests.append({"type": "load", "model": modelRef, "device": device, "precision": precision})
        try:
            requests.append({"type": "segment", "input": scene.write_worker_input(volumeNode, workDir),
                             "prompts": prompts, "output": str(workDir / "labelmap.npy"), "options": options})
            job = jobs.LocalSegmentJob(self.worker, requests, workDir, importer, self.cancelGraceSeconds, **callbacks)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            self._loaded = None
            raise
        self._loaded = (modelRef, device, precision)
        return job

    def _remoteJob(self, volumeNode, prompts, options, importer, callbacks):
        if not self.settings.has_consent(self.remoteUrl):
            raise PermissionError(f"Sending volumes to {self.remoteUrl} needs the user's consent first "
                                  "(grantRemoteConsent)")
        client = self._remoteClient()
        voxels, ijkToRas = scene.volume_arrays(volumeNode)
        return jobs.RemoteSegmentJob(
            lambda cancelled: client.segment(voxels, ijkToRas, prompts, options, cancelled=cancelled),
            importer, **callbacks)

    def _remoteClient(self):
        from TeViASegmentLib.remote_client import RemoteClient

        return RemoteClient(self.remoteUrl, self.remoteToken)

    def setRemoteServer(self, url, token=None, rememberToken=False):
        """Use a remote TeViA server (url) or, with url None/empty, the local worker."""
        self.remoteUrl = url.strip().rstrip("/") if url and url.strip() else None
        self.remoteToken = token or None
        if self.remoteUrl:
            self.settings.save_remote(self.remoteUrl, self.remoteToken, rememberToken)

    def remoteConsentNeeded(self) -> bool:
        """Whether the user must still agree to send volumes to the remote server."""
        return bool(self.remoteUrl) and not self.settings.has_consent(self.remoteUrl)

    def grantRemoteConsent(self):
        self.settings.grant_consent(self.remoteUrl)

    def testRemoteConnection(self) -> dict:
        """Health + info of the remote server (raises RemoteError with a clear message)."""
        client = self._remoteClient()
        client.health()
        return client.info()

    def examplePrompts(self, model="default") -> list[str]:
        """The model's example prompts (catalogue, else the model folder's model.json)."""
        return self.models.example_prompts(model)

    def addToTrainingSet(self, volumeNode, segmentationNode, segmentId, datasetDir, prompt=None, split="train"):
        """Append the slices holding a segment (axial, oriented as the worker slices them), its
        mask and prompt to a data set folder. The prompt defaults to the segment's own prompt.
        Returns the mask file names added.
        """
        voxels, ijkToRas, mask, segmentPrompt = scene.segment_arrays(volumeNode, segmentationNode, segmentId)
        view = training_export.worker_slicing(ijkToRas, voxels.shape)
        return training_export.export_training_slices(voxels, mask, prompt or segmentPrompt, datasetDir,
                                                      volumeNode.GetName(), split, view)

    def cancel(self):
        if self.job is not None:
            self.job.cancel()

    def shutdown(self):
        """Cancel a running job and stop the worker process."""
        self.cancel()
        self.worker.shutdown()


class TeViASegmentTest(ScriptedLoadableModuleTest):
    """Self-test: segment a real volume into a new and an existing segmentation.

    volumePath / model / worker (a running WorkerClient to reuse) can be set before runTest
    (pytest does); inside Slicer the MRHead sample and the bundled default model are used.
    """

    volumePath = None
    model = "default"
    worker = None

    def runTest(self):
        slicer.mrmlScene.Clear(0)
        self.test_segment_new_and_existing()

    def _volume(self):
        if self.volumePath:
            return slicer.modules.volumes.logic().AddArchetypeVolume(str(self.volumePath), "TeViATestVolume")
        import SampleData

        return SampleData.downloadSample("MRHead")

    def test_segment_new_and_existing(self):
        self.delayDisplay("Segmenting a volume from two prompts")
        volumeNode = self._volume()
        logic = TeViASegmentLogic(settingsStore=settings.JsonFileSettings(Path(tempfile.mkdtemp()) / "s.json"))
        logic.worker = self.worker or logic.worker
        try:
            segmentationNode = logic.segment(volumeNode, "left lung\nright lung", model=self.model, device="cpu",
                                             timeoutSeconds=300)
            names = [segmentationNode.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
            self.assertEqual(names, ["left lung", "right lung"])
            geometry = segmentationNode.GetSegmentation().GetConversionParameter("Reference image geometry")
            self.assertTrue(geometry, "the segmentation has the volume as reference geometry")
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, scene.segment_ids(segmentationNode)[0],
                                                              volumeNode)
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volumeNode).shape)
            logic.segment(volumeNode, ["left lung"], segmentationNode, model=self.model, device="cpu",
                          timeoutSeconds=300)
            self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 3)
            self.assertEqual(segmentationNode.GetSegmentation().GetNthSegment(2).GetName(), "left lung (2)")
        finally:
            if self.worker is None:
                logic.shutdown()
        self.delayDisplay("Test passed")
