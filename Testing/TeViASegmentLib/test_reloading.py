"""Reload & Test reloads the module's helper package, dependencies first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from TeViASegmentLib.reloading import reload_package

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1] / "TeViASegment"


def test_reload_sees_changed_files_and_rebinds_names_imported_from_a_reloaded_module(tmp_path, monkeypatch):
    package = tmp_path / "ProbeLib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "alpha.py").write_text("from ProbeLib.zeta import VALUE\n")
    (package / "beta.py").write_text("from . import alpha\nfrom .zeta import VALUE\n")
    (package / "zeta.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ProbeLib.alpha
    import ProbeLib.beta

    try:
        assert ProbeLib.alpha.VALUE == 1
        (package / "zeta.py").write_text("VALUE = 222\n")
        order = reload_package("ProbeLib")
        assert ProbeLib.alpha.VALUE == 222 and ProbeLib.beta.VALUE == 222, "alpha and beta bind the new zeta.VALUE"
        assert order.index("ProbeLib.zeta") < order.index("ProbeLib.alpha") < order.index("ProbeLib.beta")
        assert order[-1] == "ProbeLib"
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "ProbeLib"]:
            del sys.modules[name]


RELOAD_THROUGH_THE_WIDGET = """
import slicer_fixtures, slicer.ScriptedLoadableModule as base
reloaded_main = []
base.ScriptedLoadableModuleWidget.onReload = lambda self: reloaded_main.append(True)
import TeViASegment, TeViASegmentLib.scene as scene, TeViASegmentLib.logic as logic
before = (scene.import_labelmap, logic.TeViASegmentLogic, logic.WorkerClient)
TeViASegment.TeViASegmentWidget(None).onReload()
import TeViASegmentLib.worker_client as worker_client
assert scene.import_labelmap is not before[0] and logic.TeViASegmentLogic is not before[1]
assert logic.WorkerClient is worker_client.WorkerClient is not before[2]
assert reloaded_main == [True]
"""


def test_the_widgets_reload_reloads_the_lib_modules_then_the_module():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), str(HERE.parent)]))
    run = subprocess.run([sys.executable, "-c", RELOAD_THROUGH_THE_WIDGET], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
