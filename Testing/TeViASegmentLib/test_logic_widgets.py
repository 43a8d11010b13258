"""What the Widget relies on from the Logic: network calls off the GUI thread, export folders,
RGB and label map inputs, the parameter node's plain parts (slicer-core scenes, real HTTP)."""

from __future__ import annotations

import socket
import threading
import time
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
from conftest import TESTDATA
from slicer_fixtures import slicer_scene  # noqa: F401 (fixture)
from test_models import _catalogue, _model_zip, served  # noqa: F401 (fixture)

from TeViASegmentLib import arguments, background, models, parameters, scene, settings
from TeViASegmentLib.remote_client import RemoteError
from tevia.prompts.sides import CONVENTIONS

UI_FILE = Path(__file__).resolve().parents[2] / "TeViASegment" / "Resources" / "UI" / "TeViASegment.ui"
XRAY = TESTDATA / "qata_samples" / "Images" / "sub-s12520_ses-e25346_run-1_bp-chest_vp-ap_dx.png"


@pytest.fixture
def logic(slicer_scene, tmp_path):
    import TeViASegment

    logic = TeViASegment.TeViASegmentLogic(settingsStore=settings.JsonFileSettings(tmp_path / "settings.json"))
    yield logic
    logic.shutdown()


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    for connection in accepted:
        connection.close()
    listener.close()


def _poll_until_done(call: background.BackgroundCall, limit_s: float) -> float:
    start = time.monotonic()
    while call.poll(0.05):
        assert time.monotonic() - start < limit_s, f"the call did not end within {limit_s} s"
    return time.monotonic() - start


def test_connection_test_returns_at_once_and_gives_up_after_a_short_timeout(logic, silent_server):
    logic.setRemoteServer(silent_server, "token")
    logic.connectionTestTimeoutSeconds = 1.0
    outcome = []
    start = time.monotonic()
    call = logic.testRemoteConnectionAsync(onDone=lambda info, error: outcome.append((info, error, threading.get_ident())))
    assert time.monotonic() - start < 0.2, "the GUI thread does not wait for the server"
    elapsed = _poll_until_done(call, limit_s=10)
    ((info, error, thread),) = outcome
    assert info is None and isinstance(error, RemoteError) and "within" in str(error)
    assert thread == threading.get_ident(), "onDone runs on the polling (GUI) thread"
    assert elapsed < 5


def test_connection_test_without_a_url_is_refused_clearly(logic):
    logic.setRemoteServer("")
    with pytest.raises(ValueError, match="No remote server URL"):
        logic.testRemoteConnectionAsync()


def test_model_download_runs_in_the_background_with_progress(logic, served, tmp_path):
    folder, base = served
    sha = _model_zip(folder / "chest-ct.zip")
    logic.models = models.ModelStore(_catalogue(tmp_path, f"{base}/chest-ct.zip", sha), tmp_path / "cache")
    progress, outcome = [], []
    call = logic.downloadModelAsync("chest-ct", onProgress=lambda got, total: progress.append((got, threading.get_ident())),
                                    onDone=lambda target, error: outcome.append((target, error)))
    _poll_until_done(call, limit_s=60)
    assert outcome == [(tmp_path / "cache" / "chest-ct-2.0", None)]
    assert progress and {thread for _, thread in progress} == {threading.get_ident()}
    assert logic.models.available("chest-ct")


def test_background_call_cancel_and_errors():
    def wait_for_cancel(report, cancelled):
        report("started")
        while not cancelled():
            time.sleep(0.01)
        raise InterruptedError("stopped on request")

    seen = []
    call = background.BackgroundCall(wait_for_cancel, on_progress=seen.append)
    assert call.poll(0.5) and seen == ["started"]
    call.cancel()
    with pytest.raises(InterruptedError, match="stopped on request"):
        call.wait(5)
    assert not call.running


def test_export_without_a_chosen_folder_is_refused_and_writes_nothing(logic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("", None, "  ", "."):
        with pytest.raises(ValueError, match="No data set folder chosen"):
            logic.addToTrainingSet(None, None, "segment", folder)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        logic.addToTrainingSet(None, None, "segment", str(tmp_path / "a-file"))
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"], "nothing written into the working directory"


def _rgb_volume(image_2d: np.ndarray):
    """A vtkMRMLVectorVolumeNode holding an RGB version of a grey image (tinted: R, G, B differ)."""
    rgb = np.stack([image_2d, (image_2d * 0.5).astype(np.uint8), 255 - image_2d], axis=-1)[np.newaxis]
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb x-ray")
    slicer.util.updateVolumeFromArray(node, rgb)
    return node, rgb


def test_rgb_images_are_segmented_as_their_luminance_with_a_note(slicer_scene):
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(XRAY)))
    node, rgb = _rgb_volume(image)
    voxels, _ = scene.volume_arrays(node)
    expected = np.rint(0.30 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]).astype(np.uint8)
    np.testing.assert_array_equal(voxels, expected)
    assert voxels.shape == (1, *image.shape) and voxels.dtype == np.uint8
    assert "segmented as its luminance" in scene.conversion_note(node)
    assert scene.conversion_note(slicer.util.addVolumeFromArray(image[np.newaxis])) is None


def test_label_maps_and_non_rgb_vectors_are_refused_clearly(slicer_scene):
    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="is a label map, not an image"):
        scene.volume_arrays(labels)
    vectors = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "two components")
    slicer.util.updateVolumeFromArray(vectors, np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="only single-component 3D volumes and RGB images"):
        scene.volume_arrays(vectors)


def test_parameter_enums_match_the_logic_arguments():
    assert tuple(d.value for d in parameters.Device) == arguments.DEVICES
    assert tuple(c.value for c in parameters.SideConvention) == CONVENTIONS
    assert all(d.label() and c.label() for d in parameters.Device for c in parameters.SideConvention)


def test_a_new_parameter_node_starts_from_the_users_settings(tmp_path):
    store = settings.ModuleSettings(settings.JsonFileSettings(tmp_path / "s.json"))
    fresh = parameters.initial_values(store)
    assert fresh["device"] is parameters.Device.AUTO and fresh["model"] == "default" and not fresh["bf16"]
    assert fresh["datasetFolder"] == parameters.default_dataset_folder()
    assert fresh["datasetFolder"].parts[-2:] == ("TeViA", "training-set")
    for key, value in (("device", "cpu"), ("convention", "image"), ("precision", "bf16"), ("model", "/m"),
                       ("datasetFolder", str(tmp_path / "set"))):
        store.set(key, value)
    assert parameters.initial_values(store) == {
        "model": "/m", "device": parameters.Device.CPU, "convention": parameters.SideConvention.IMAGE,
        "bf16": True, "datasetFolder": tmp_path / "set"}
    store.set("device", "tpu")
    assert parameters.initial_values(store)["device"] is parameters.Device.AUTO, "an unknown stored value falls back"


# Which widget class Slicer 5.10's parameterNodeWrapper connects to which parameter type
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py at v5.10.0).
CONNECTORS = {
    "qMRMLNodeComboBox": lambda t: isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode),
    "QCheckBox": lambda t: t is bool,
    "QComboBox": lambda t: isinstance(t, type) and issubclass(t, parameters.enum.Enum),
    "ctkDirectoryButton": lambda t: t is Path,
    "ctkPathLineEdit": lambda t: t is Path,
    "QSpinBox": lambda t: t is int,
    "QLineEdit": lambda t: t is str,
}


def test_ui_widgets_named_for_parameters_have_a_connector_for_their_type():
    hints = typing.get_type_hints(parameters.TeViASegmentParameters)
    connected = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                connected[prop.findtext("string")] = widget.get("class")
    assert set(connected) == {"inputVolume", "outputSegmentation", "device", "convention", "bf16", "datasetFolder",
                              "fineTuneEpochs", "fineTuneReference"}
    for name, widget_class in connected.items():
        assert CONNECTORS[widget_class](hints[name]), f"{widget_class} cannot show parameter {name}: {hints[name]}"
    assert set(hints) - set(connected) == {"prompts", "model"}, "the two parameters the Widget copies by hand"


def test_folder_pickers_show_their_path_and_the_input_lists_images_only():
    tree = ET.parse(UI_FILE)
    for widget in tree.iter("widget"):
        if widget.get("class") == "ctkDirectoryButton" and widget.get("name") != "modelFolderButton":
            assert widget.find("property[@name='text']") is None, f"{widget.get('name')} must show its path"
    selector = next(w for w in tree.iter("widget") if w.get("name") == "inputVolumeSelector")
    hidden = {s.text for s in selector.find("property[@name='hideChildNodeTypes']").iter("string")}
    assert {"vtkMRMLLabelMapVolumeNode", "vtkMRMLDiffusionTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"} <= hidden
    assert parameters.TeViASegmentParameterNode is None, "slicer-core has no parameterNodeWrapper (Slicer does)"


def test_each_model_says_what_it_is_for(tmp_path, tiny_model_dir):
    store = models.ModelStore(models.load_catalogue())
    assert store.purpose("default") == "chest x-ray (frontal): COVID-19 infection (lung opacities)"
    assert store.purpose(str(tiny_model_dir)) == "chest x-ray: unknown target"
    assert store.purpose(str(tmp_path)) == "unknown modality: unknown target"


class _RecordingWrapper:
    """Stands in for Slicer's parameterNodeWrapper (absent from slicer-core): stores each
    value as text in the parameter node, as the wrapper's serializers do."""

    def __init__(self, node):
        object.__setattr__(self, "node", node)

    def __setattr__(self, name, value):
        self.node.SetParameter(name, str(getattr(value, "value", value)))


def test_the_parameter_node_takes_the_settings_only_when_new(logic, slicer_scene, monkeypatch):
    """A new scene's parameter node starts from the user's settings; one restored from a saved
    scene keeps what it holds."""
    node = slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    monkeypatch.setattr(type(logic).__mro__[1], "getParameterNode", lambda self: node, raising=False)
    monkeypatch.setattr(parameters, "TeViASegmentParameterNode", _RecordingWrapper)
    logic.settings.set("device", "cpu")
    logic.getParameterNode()
    assert node.GetParameter("device") == "cpu" and node.GetParameter("model") == "default"
    node.SetParameter("device", "cuda")
    logic.getParameterNode()
    assert node.GetParameter("device") == "cuda", "a restored parameter node is not overwritten"
