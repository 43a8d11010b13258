"""TeViA Segment: text-guided segmentation in 3D Slicer.

Module, Widget (the only Qt code: it wires Resources/UI/TeViASegment.ui to the Logic), Logic
(TeViASegmentLib/logic.py, re-exported here; usable from the Python console and from tests) and Test. The heavy lifting lives in
TeViASegmentLib; the model runs in a background worker process, never in Slicer's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import slicer
import slicer.util
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from TeViASegmentLib import scene, settings
from TeViASegmentLib.arguments import CONVENTIONS, DEVICES
from TeViASegmentLib.logic import TeViASegmentLogic

__all__ = ["TeViASegment", "TeViASegmentWidget", "TeViASegmentLogic", "TeViASegmentTest"]


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
