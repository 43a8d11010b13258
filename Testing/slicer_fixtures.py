"""Fixtures for the Slicer-side tests: a real MRML scene from slicer-core.

slicer-core gives the Qt-free part of 3D Slicer (MRML, module logics, slicer.util). What it lacks
is the application: `slicer.mrmlScene`, `slicer.modules.<name>.logic()` and
`slicer.ScriptedLoadableModule` (which imports qt in Slicer). The `slicer_scene` fixture builds a
scene with the application logic and the Colors, Volumes, Segmentations and SubjectHierarchy
logics registered on it, as Slicer does at start-up, and the module base classes
are replaced by minimal stand-ins (the only stub: it is the application's part).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import vtk

import slicer
import slicer.util

_SLICER_UTIL_COPIES = [
    name for name in dir(slicer.util)
    if not name.startswith("_") and hasattr(slicer, name)
    and getattr(slicer, name) is getattr(slicer.util, name)
    and callable(getattr(slicer.util, name)) and not isinstance(getattr(slicer.util, name), type)
]


def _remove_util_copies() -> None:
    """slicer-core copies every slicer.util function onto `slicer`; real Slicer does not."""
    for name in _SLICER_UTIL_COPIES:
        if getattr(slicer, name, None) is getattr(slicer.util, name):
            delattr(slicer, name)


class _ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace()


class _ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class _ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.parent = parent


class _ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        logging.info(message)


def _install_module_base_classes() -> None:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.ScriptedLoadableModule = _ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = _ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = _ScriptedLoadableModuleTest
    sys.modules["slicer.ScriptedLoadableModule"] = module
    slicer.ScriptedLoadableModule = module


_remove_util_copies()
_install_module_base_classes()


@contextlib.contextmanager
def scene_with_module_logics():
    """A fresh vtkMRMLScene set as `slicer.mrmlScene`, with the module logics Slicer registers
    (`slicer.modules.<name>.logic()` works for volumes, segmentations, colors and
    subjecthierarchy); the scene is cleared and the previous globals restored on exit."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {
        "colors": slicer.vtkSlicerColorLogic(),
        "volumes": slicer.vtkSlicerVolumesLogic(),
        "segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "subjecthierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
    }
    names = {"colors": "Colors", "volumes": "Volumes", "segmentations": "Segmentations",
             "subjecthierarchy": "SubjectHierarchy"}
    for key, logic in logics.items():
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(names[key], logic)
    logics["colors"].AddDefaultColorNodes()
    previous_scene = getattr(slicer, "mrmlScene", None)
    previous_modules = getattr(slicer, "modules", None)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{
        key: types.SimpleNamespace(logic=(lambda lg=logic: lg)) for key, logic in logics.items()
    })
    try:
        yield scene
    finally:
        scene.Clear(True)
        slicer.mrmlScene = previous_scene
        slicer.modules = previous_modules


@pytest.fixture
def slicer_scene():
    """`scene_with_module_logics` as a fixture: yields the scene."""
    with scene_with_module_logics() as scene:
        yield scene


SLICER_TERMINOLOGY = Path(__file__).resolve().parents[0] / "data" / "slicer_terminology"


@pytest.fixture(scope="session")
def slicer_terminologies(tmp_path_factory):
    """Slicer's terminology logic with the files Slicer 5.10 to 5.12 load at start-up (their
    real JSON, Testing/data/slicer_terminology) and the extension's findings terminology."""
    from TeViASegmentLib import terminology

    folder = tmp_path_factory.mktemp("terminology")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for packed in sorted(SLICER_TERMINOLOGY.glob("*.json.gz")):
        path = folder / packed.name[:-3]
        path.write_bytes(gzip.decompress(packed.read_bytes()))
        loaded = (logic.LoadRegionContextFromFile(str(path)) if packed.name.startswith("AnatomicRegion")
                  else logic.LoadTerminologyFromFile(str(path)))
        assert loaded, f"Slicer could not load {path}"
    assert terminology.load_findings_terminology(logic) == terminology.FINDINGS_CONTEXT
    return logic


def load_volume(path, name: str = "volume"):
    """Load a volume file into `slicer.mrmlScene` the way Slicer does (Volumes logic)."""
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name)
    assert node is not None, f"could not load {path}"
    return node


def scene_snapshot(scene) -> dict:
    """What a user could see change: every node's ID, class and name, and every segment's
    name, colour, label value and binary labelmap (extent + voxels). Adds nothing to the scene."""
    import vtk.util.numpy_support

    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    snapshot = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        snapshot[node.GetID()] = (node.GetClassName(), node.GetName())
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                segment_id = segmentation.GetNthSegmentID(n)
                segment = segmentation.GetSegment(segment_id)
                image = segment.GetRepresentation(labelmap_name)
                scalars = image.GetPointData().GetScalars() if image is not None else None
                voxels = b"" if scalars is None else vtk.util.numpy_support.vtk_to_numpy(scalars).tobytes()
                snapshot[(node.GetID(), segment_id)] = (
                    segment.GetName(), segment.GetColor(), segment.GetLabelValue(),
                    None if image is None else image.GetExtent(), voxels)
    return snapshot


def oblique_volume():
    """The committed CT with a non-identity direction matrix: axes permuted and rotated 30 degrees."""
    volume = load_volume(Path(__file__).resolve().parents[0] / "data" / "volumes" / "totalseg-ct.nii.gz")
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    directions = np.array([[0, c, -s], [0, s, c], [1, 0, 0]], dtype=float)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for col in range(3):
            matrix.SetElement(r, col, directions[r, col])
    volume.SetIJKToRASDirectionMatrix(matrix)
    return volume


@pytest.fixture(scope="module")
def worker():
    """One real worker process per test module (the Slicer side's WorkerClient, this Python)."""
    from TeViASegmentLib.worker_client import WorkerClient

    client = WorkerClient(python=sys.executable, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    yield client
    client.shutdown()
