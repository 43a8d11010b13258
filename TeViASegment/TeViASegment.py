"""TeViA Segment: text-guided segmentation in 3D Slicer.

Module, Widget (builds the UI from Resources/UI/TeViASegment.ui, holds the parameter node and
delegates each section to its TeViASegmentLib/*_panel.py), Logic (TeViASegmentLib/logic.py,
re-exported here; usable from the Python console and from tests) and Test. The heavy lifting lives
in TeViASegmentLib; the model runs in a background worker process, never in Slicer's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import slicer
import slicer.util
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from TeViASegmentLib import scene, settings
from TeViASegmentLib.click_panel import ClickPanel
from TeViASegmentLib.download_panel import DownloadPanel
from TeViASegmentLib.finetune_panel import FineTunePanel
from TeViASegmentLib.install_panel import InstallPanel
from TeViASegmentLib.logic import TeViASegmentLogic
from TeViASegmentLib.server_panel import ServerPanel
from TeViASegmentLib.slicer_version import MINIMUM_SLICER, unsupported_reason

__all__ = ["TeViASegment", "TeViASegmentWidget", "TeViASegmentLogic", "TeViASegmentTest", "DOCUMENTATION_URL"]

DOCUMENTATION_URL = "https://github.com/tevia-project/SlicerTeViA/blob/main/docs/SLICER.md"


class TeViASegment(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        super().__init__(parent)
        self.parent.title = "TeViA Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["TeViA developers (TeViA project)"]
        self.parent.helpText = (
            "Segment what a text describes: type one prompt per line, press Segment. Each model is made "
            "for one kind of image and target, named in the Model list: the bundled model segments "
            "COVID-19 infection (lung opacities) on frontal chest X-rays, and nothing else. "
            "The model runs in a background process (or on a remote TeViA server); edit the result "
            "in Segment Editor and add it to a training set to fine-tune the model. "
            f'See the <a href="{DOCUMENTATION_URL}">documentation</a>.')
        self.parent.helpText += " Supported: 3D Slicer %d.%d and later." % MINIMUM_SLICER
        reason = unsupported_reason()
        if reason:
            logging.error(reason)
            self.parent.helpText = f"{reason}\n\n{self.parent.helpText}"
        self.parent.acknowledgementText = (
            "TeViA (text-to-vision alignment with a historic visual prototype); QaTa-COV19 and LViT "
            "annotations for the bundled model.")


class TeViASegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires Resources/UI/TeViASegment.ui to TeViASegmentLogic and to the panels of
    TeViASegmentLib (clicks, model downloads, server choice, dependency installation, fine-tune).

    The widgets' state lives in the scene's parameter node (`parameters`): widgets with a
    "SlicerParameterName" property are connected by connectGui, the prompt text and the model
    choice are copied by hand (no connector fits them). Network calls run in the background
    (`background.BackgroundCall`), polled by the same timer as the segmentation job.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.calls = []

    def setup(self):
        import qt

        super().setup()
        reason = unsupported_reason()
        if reason:
            self.layout.addWidget(qt.QLabel(reason))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TeViASegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TeViASegmentLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onPoll)
        self.clickPanel = ClickPanel(self.logic, self.ui, self._clickTarget, on_message=self.log,
                                     on_busy=self.timer.start)
        self.serverPanel = ServerPanel(self.logic, self.ui, self._confirm, on_message=self.log,
                                       start_call=self._startCall)
        self.downloadPanel = DownloadPanel(self.logic, self.ui, self._currentModel, self.onModelChanged,
                                           on_message=self.log, start_call=self._startCall)
        self.installPanel = InstallPanel(self.logic, self.ui, self._confirm, on_message=self.log,
                                         on_busy=self.timer.start)
        self.fineTunePanel = FineTunePanel(
            self.logic, self.ui, lambda: self._parameterNode, self._currentModel, self._selectModel,
            on_progress=lambda stage, done, total: self.onProgress(stage, done, total, self.ui.fineTuneProgressBar),
            on_message=self.log, on_busy=self.timer.start)
        self._fillChoices()
        self.ui.segmentButton.clicked.connect(self.onSegmentOrCancel)
        self.ui.promptHistoryComboBox.activated.connect(self.onHistoryChosen)
        self.ui.promptEdit.textChanged.connect(self.onPromptsEdited)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelFolderButton.directoryChanged.connect(self.onLocalModelFolder)
        self.ui.show3DButton.clicked.connect(self.onShow3D)
        self.ui.openSegmentEditorButton.clicked.connect(self.onOpenSegmentEditor)
        self.ui.addToTrainingButton.clicked.connect(self.onAddToTraining)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)",  # overloaded: name the one
                                                   self.ui.trainingSegmentSelector.setCurrentNode)
        self.clickPanel.connect_widgets(self.ui.outputSegmentationSelector)
        self.downloadPanel.connect_widgets()
        self.serverPanel.connect_widgets()
        self.installPanel.connect_widgets()
        self.fineTunePanel.connect_widgets()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if not hasattr(self, "logic"):
            return
        self.timer.stop()
        for call in self.calls:
            call.cancel()
        self.removeObservers()
        self.clickPanel.cleanup()
        self.logic.shutdown()
        self.installPanel.cleanup()

    def onReload(self):
        """Reload & Test: reload TeViASegmentLib too (Slicer re-executes only this file)."""
        from TeViASegmentLib.reloading import reload_package

        reload_package("TeViASegmentLib")
        super().onReload()

    def enter(self):
        self.initializeParameterNode()
        self.clickPanel.install_shortcuts(slicer.util.mainWindow())

    def exit(self):
        self.clickPanel.remove_shortcuts()
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.clickPanel.clear()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode.inputVolume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            if self.ui.promptEdit.toPlainText() != parameterNode.prompts:
                self.ui.promptEdit.setPlainText(parameterNode.prompts)
            self._selectModel(parameterNode.model)

    def onPromptsEdited(self):
        if self._parameterNode is not None:
            self._parameterNode.prompts = self.ui.promptEdit.toPlainText()

    def _currentModel(self) -> str:
        return self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) or "default"

    def _selectModel(self, model):
        index = self.ui.modelComboBox.findData(model)
        if index < 0:
            self._addModelItem(model)
            index = self.ui.modelComboBox.count - 1
        self.ui.modelComboBox.setCurrentIndex(index)

    def _addModelItem(self, model):
        """A model choice named with what it is for: "<name> - <modality>: <target>"."""
        self.ui.modelComboBox.addItem(f"{model} - {self.logic.models.purpose(model)}", model)

    def _fillChoices(self):
        s = self.logic.settings
        self.ui.modelComboBox.clear()
        for name in self.logic.models.choices():
            self._addModelItem(name)
        for folder in s.get("localModels", []):
            self._addModelItem(folder)
        self.onModelChanged()

    def onModelChanged(self, _index=None):
        model = self._currentModel()
        if self._parameterNode is not None:
            self._parameterNode.model = model
        self.ui.promptHistoryComboBox.clear()
        self.ui.promptHistoryComboBox.addItem("Recent and example prompts...")
        for prompt in self.logic.settings.prompt_history() + self.logic.examplePrompts(model):
            self.ui.promptHistoryComboBox.addItem(prompt)
        self.ui.modelComboBox.toolTip = (f"{model}: {self.logic.models.purpose(model)}. "
                                         f"Documentation: {DOCUMENTATION_URL}")
        self.ui.downloadModelButton.enabled = (model in self.logic.models.catalogue
                                               and not self.logic.models.available(model))

    def onHistoryChosen(self, index):
        if index > 0:
            self.ui.promptEdit.appendPlainText(self.ui.promptHistoryComboBox.itemText(index))

    def onLocalModelFolder(self, folder):
        with slicer.util.tryWithErrorDisplay("Not a TeViA model folder.", waitCursor=True):
            self.logic.models.resolve(folder)
            self.logic.settings.set("localModels", list(dict.fromkeys([*self.logic.settings.get("localModels", []), folder])))
            self._selectModel(folder)

    def _startCall(self, call):
        self.calls.append(call)
        self.timer.start()

    def onSegmentOrCancel(self):
        if self.logic.job is not None and self.logic.job.running:
            self.logic.cancel()
            self.log("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            p, run = self._parameterNode, self._runSettings()
            if not self._serverReady():
                return
            self.ui.statusLog.clear()
            self.logic.segmentAsync(
                p.inputVolume, p.prompts, p.outputSegmentation, onProgress=self.onProgress, onDone=self.onDone,
                onWarning=lambda m: self.log(f"Warning: {m}"), **run)
            self.ui.segmentButton.text = "Cancel"
            self.ui.progressBar.setRange(0, 0)
            self.log("Segmenting...")
            self.timer.start()

    def _serverReady(self) -> bool:
        """Apply the panel's server choice (remote or local); False when the local worker lacks
        its dependencies or the user does not agree to send the volume to the remote server."""
        self.serverPanel.apply_choice()
        return self.installPanel.dependencies_ready() and self.serverPanel.consented()

    def _confirm(self, title: str, text: str) -> bool:
        """Ask the user a Yes / No question; True for Yes."""
        import qt

        return qt.QMessageBox.question(slicer.util.mainWindow(), title, text) == qt.QMessageBox.Yes

    def _clickTarget(self):
        """The click panel's volume and run settings, on the server chosen (None: not now)."""
        return (self._parameterNode.inputVolume, self._runSettings()) if self._serverReady() else None

    def _runSettings(self) -> dict:
        """Model, device, options and precision from the parameter node, remembered in the settings."""
        p = self._parameterNode
        run = {"model": p.model, "device": p.device.value, "precision": "bf16" if p.bf16 else "fp32"}
        for key, value in (*run.items(), ("convention", p.convention.value)):
            self.logic.settings.set(key, value)
        return {**run, "options": {"convention": p.convention.value}}

    def onPoll(self):
        if self.logic.job is not None and self.logic.job.running:
            self.logic.job.poll()
        self.calls = [call for call in self.calls if call.poll()]
        installing, fineTuning = self.installPanel.poll(), self.fineTunePanel.poll()
        if (self.logic.job is None or not self.logic.job.running) and not installing and not self.calls \
                and not fineTuning and not self.clickPanel.editor.poll():
            self.timer.stop()

    def onProgress(self, stage, done, total, bar=None):
        bar = bar or self.ui.progressBar
        bar.setRange(0, max(total, 1))
        bar.setValue(done)
        bar.setFormat(f"{stage} %v/%m")

    def onDone(self, job):
        self.ui.segmentButton.text = "Segment"
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.setValue(1 if job.state == "done" else 0)
        device = self.logic.workerInfo.get("device_name") or self.logic.workerInfo.get("device")
        if device:
            self.ui.detectedDeviceLabel.text = f"using {device}"
        if job.state == "done":
            if self._parameterNode is not None:
                self._parameterNode.outputSegmentation = job.result
        self.log(self.logic.statusLine(job))
        self.onModelChanged()

    def onShow3D(self):
        node = self._parameterNode.outputSegmentation
        if node is not None:
            node.CreateClosedSurfaceRepresentation()

    def onOpenSegmentEditor(self):
        node = self._parameterNode.outputSegmentation
        slicer.util.selectModule("SegmentEditor")
        if node is not None:
            slicer.modules.SegmentEditorWidget.editor.setSegmentationNode(node)
            slicer.modules.SegmentEditorWidget.editor.setSourceVolumeNode(self._parameterNode.inputVolume)

    def onAddToTraining(self):
        with slicer.util.tryWithErrorDisplay("Could not add the segment to the training set.", waitCursor=True):
            folder = str(self._parameterNode.datasetFolder)
            added = self.logic.addToTrainingSet(
                self._parameterNode.inputVolume, self.ui.trainingSegmentSelector.currentNode(),
                self.ui.trainingSegmentSelector.currentSegmentID(), folder,
                convention=self._parameterNode.convention.value, model=self._currentModel())
            self.log(f"Added {len(added)} slices to {folder}. {self.fineTunePanel.training_set_summary(folder)}")

    def log(self, message):
        self.ui.statusLog.appendPlainText(message)
        logging.info(message)


class TeViASegmentTest(ScriptedLoadableModuleTest):
    """Self-test: segment a real frontal chest X-ray (Resources/Testing, QaTa-COV19) into a new
    and an existing segmentation, as the bundled model is meant to be used.

    model / worker (a running WorkerClient to reuse) can be set before runTest (pytest does).
    With the bundled default model the infection segment must overlap the X-ray's
    ground-truth infection mask.
    """

    model = "default"
    worker = None
    prompt = ("Bilateral pulmonary infection, two infected areas, upper middle left lung and "
              "upper middle right lung.")
    minimumDice = 0.5

    def runTest(self):
        slicer.mrmlScene.Clear(0)
        self.test_segment_new_and_existing()

    def _load(self, fileName):
        path = Path(__file__).resolve().parent / "Resources" / "Testing" / fileName
        return slicer.modules.volumes.logic().AddArchetypeVolume(str(path), f"TeViA test {Path(fileName).stem}")

    def test_segment_new_and_existing(self):
        self.delayDisplay("Segmenting a chest X-ray")
        volumeNode = self._load("chest-xray.nrrd")
        logic = TeViASegmentLogic(settingsStore=settings.JsonFileSettings(Path(tempfile.mkdtemp()) / "s.json"))
        logic.worker = self.worker or logic.worker
        try:
            segmentationNode = logic.segment(volumeNode, [self.prompt, "lower left lung infection"], model=self.model,
                                             device="cpu", timeoutSeconds=300)
            segmentation = segmentationNode.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(2)]
            self.assertEqual(names, [scene.segment_name(self.prompt), "lower left lung infection"])
            geometry = segmentation.GetConversionParameter("Reference image geometry")
            self.assertTrue(geometry, "the segmentation has the volume as reference geometry")
            entry = segmentation.GetNthSegment(0).GetTag(segmentation.GetNthSegment(0).GetTerminologyEntryTagName(),
                                                         tag := vtk.reference(""))
            self.assertTrue(entry and "47351003^Infiltrate" in str(tag) and "39607008^Lung" in str(tag),
                            f"coded as an infiltrate of the lungs, got {tag}")
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, scene.segment_ids(segmentationNode)[0],
                                                              volumeNode) > 0
            self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volumeNode).shape)
            if self.model == "default":
                truth = slicer.util.arrayFromVolume(self._load("chest-xray-infection.nrrd")) > 127
                dice = 2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1)
                self.delayDisplay(f"Dice with the ground-truth infection mask: {dice:.3f}")
                self.assertGreater(dice, self.minimumDice, "the bundled model finds the infection")
            logic.segment(volumeNode, ["lower left lung infection"], segmentationNode, model=self.model, device="cpu",
                          timeoutSeconds=300)
            self.assertEqual(segmentation.GetNumberOfSegments(), 3)
            self.assertEqual(segmentation.GetNthSegment(2).GetName(), "lower left lung infection (2)")
        finally:
            if self.worker is None:
                logic.shutdown()
        self.delayDisplay("Test passed")
