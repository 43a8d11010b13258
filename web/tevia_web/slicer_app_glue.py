"""What the Slicer application gives a scripted module, given by the web app instead.

TeViASegmentLib is written for 3D Slicer: its Logic derives from
`slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic`, and a few helpers reach the scene
and module logics through `slicer.mrmlScene` and `slicer.modules.<name>.logic()`. slicer-core
(the Qt-free part of Slicer that trame-slicer runs on) has neither: the application sets them
up at start-up. Here the web app is the application: `attach` points them at trame-slicer's
`SlicerApp` scene and logics.
"""

from __future__ import annotations

import sys
import types

import slicer

__all__ = ["attach", "ScriptedLoadableModuleLogic"]


class ScriptedLoadableModuleLogic:
    """The part of Slicer's scripted module Logic base class that the page uses (the parent);
    the page keeps its settings in its own state, not in a parameter node."""

    def __init__(self, parent=None) -> None:
        self.parent = parent


def _module(**logics) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda lg=logic: lg))
                                    for name, logic in logics.items()})


def attach(slicer_app) -> None:
    """Make `slicer.mrmlScene`, `slicer.modules.<name>.logic()` and
    `slicer.ScriptedLoadableModule` refer to a trame-slicer `SlicerApp` (one per process).

    Args:
        slicer_app: the `trame_slicer.core.SlicerApp` whose scene the page shows.
    """
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        module = types.ModuleType("slicer.ScriptedLoadableModule")
        module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
        sys.modules["slicer.ScriptedLoadableModule"] = module
        slicer.ScriptedLoadableModule = module
    slicer.mrmlScene = slicer_app.scene
    slicer.modules = _module(
        volumes=slicer_app.volumes_logic, segmentations=slicer_app.segmentations_logic,
        colors=slicer_app.color_logic, subjecthierarchy=slicer_app.subject_hierarchy_logic,
        terminologies=slicer_app.terminologies_logic)
