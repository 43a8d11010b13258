"""Static checks of the Slicer extension: UI names, CMake lists, extension descriptions, imports."""

from __future__ import annotations

import ast
import json
import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TeViASegment"
MODULE_FILE = MODULE_DIR / "TeViASegment.py"
LIB_DIR = MODULE_DIR / "TeViASegmentLib"
SLICER_SIDE = [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))]
FILE_SCOPE_ALLOWED = {"slicer", "vtk", "numpy", "SimpleITK", "TeViASegmentLib"} | set(sys.stdlib_module_names)
NEVER_ON_SLICER_SIDE = {"torch", "monai", "transformers", "lightning"}
# Standard library, numpy and SimpleITK only (no torch); imported inside functions.
ENGINE_MODULES_ALLOWED = {"tevia.files", "tevia.model_folders", "tevia.volume.geometry", "tevia.prompts",
                          "tevia.prompts.coding", "tevia.prompts.normalise", "tevia.prompts.sides", "tevia.user_models", "tevia.volume.bounds"}


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [item.replace("${MODULE_NAME}", "TeViASegment") for item in match.group(1).split()]


def _cmake_extension_fields() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r'set\((EXTENSION_\w+)\s+"((?:[^"\\]|\\.)*)"\)', text))
    return {key: value.replace('\\"', '"') for key, value in fields.items()}


def _s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in (REPO / "TeViA.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def test_every_widget_the_module_uses_exists_in_the_ui_file():
    """The Widget's `self.ui.<name>` and the panels' (TeViASegmentLib/*_panel.py, given the same `ui`)."""
    names = {w.get("name") for w in ET.parse(MODULE_DIR / "Resources" / "UI" / "TeViASegment.ui").iter("widget")}
    panels = sorted(LIB_DIR.glob("*_panel.py"))
    assert {p.name for p in panels} >= {"click_panel.py", "download_panel.py", "finetune_panel.py", "install_panel.py",
                                         "server_panel.py"}
    used = {name for path in (MODULE_FILE, *panels) for name in re.findall(r"self\.ui\.(\w+)", path.read_text())}
    assert len(used) > 20 and {"negativeClickButton", "clearCacheButton", "installButton", "fineTuneButton",
                                   "testConnectionButton"} <= used
    assert used - names == set(), f"widgets used by the module but missing from the .ui: {used - names}"


def test_ui_connects_the_scene_to_every_mrml_widget():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "TeViASegment.ui")
    mrml = {w.get("name") for w in tree.iter("widget") if w.get("class", "").startswith("qMRML") and w.get("name") != "TeViASegment"}
    connected = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and mrml == connected


def test_cmake_lists_every_module_file_and_nothing_else():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    spec = importlib.util.spec_from_file_location("update_cmake_lists", REPO / "Utilities" / "update_cmake_lists.py")
    updater = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(updater)
    on_disk = set(updater.module_files())
    listed = set(scripts) | set(resources)
    missing = sorted(on_disk - listed)
    assert not missing, "run python Utilities/update_cmake_lists.py; missing from TeViASegment/CMakeLists.txt:\n  " + "\n  ".join(missing)
    assert not sorted(listed - on_disk), f"listed in CMake but not on disk: {sorted(listed - on_disk)}"
    assert all(s.endswith(".py") for s in scripts) and not any(r.endswith(".py") for r in resources)
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake_has_every_extension_field_and_the_project_name():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(TeViA\)", text, re.M), "project() name must equal TeViA.json's name"
    fields = _cmake_extension_fields()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert fields.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is missing or empty"
    assert fields["EXTENSION_DEPENDS"] == "PyTorch"
    for include in ("find_package(Slicer 5.10 REQUIRED)", "add_subdirectory(TeViASegment)",
                    "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        assert include in text
    assert (REPO / "LICENSE.txt").is_file()


def test_icon_and_screenshot_named_by_the_extension_exist():
    from PIL import Image

    fields = _cmake_extension_fields()
    for url in (fields["EXTENSION_ICONURL"], *fields["EXTENSION_SCREENSHOTURLS"].split()):
        path = REPO / url.split("/main/", 1)[1]
        assert path.is_file(), f"{url} names {path}, which does not exist"
    for icon in (REPO / "Resources" / "TeViA.png", MODULE_DIR / "Resources" / "Icons" / "TeViASegment.png"):
        assert Image.open(icon).size == (128, 128)


def test_extension_json_and_s4ext_agree_with_cmake():
    fields = _cmake_extension_fields()
    entry = json.loads((REPO / "TeViA.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["category"] == fields["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == fields["EXTENSION_DEPENDS"].split()
    assert fields["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"].removesuffix(".git") + "/blob/main/")
    s4ext = _s4ext_fields()
    assert s4ext["depends"].split() == fields["EXTENSION_DEPENDS"].split()
    assert s4ext["category"] == fields["EXTENSION_CATEGORY"]
    assert s4ext["scmurl"] == entry["scm_url"] and s4ext["scmrevision"] == entry["scm_revision"]
    assert s4ext["homepage"] == fields["EXTENSION_HOMEPAGE"]
    assert s4ext["iconurl"] == fields["EXTENSION_ICONURL"]
    assert s4ext["screenshoturls"] == fields["EXTENSION_SCREENSHOTURLS"]
    assert s4ext["description"] == fields["EXTENSION_DESCRIPTION"]
    assert s4ext["contributors"] == fields["EXTENSION_CONTRIBUTORS"]


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(full module name, at file scope?) for every absolute import in a module."""
    found = []
    file_scope = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in file_scope) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, id(node) in file_scope))
    return found


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_slicer_side_imports_only_allowed_modules_at_file_scope_and_never_torch(path):
    imports = _imports(ast.parse(path.read_text()))
    at_file_scope = {name.split(".")[0] for name, top in imports if top}
    assert at_file_scope <= FILE_SCOPE_ALLOWED, f"{path.name} imports {at_file_scope - FILE_SCOPE_ALLOWED} at file scope"
    assert not {name.split(".")[0] for name, _ in imports} & NEVER_ON_SLICER_SIDE
    engine = {name for name, _ in imports if name.split(".")[0] == "tevia"}
    assert engine <= ENGINE_MODULES_ALLOWED, f"{path.name} imports engine modules {engine - ENGINE_MODULES_ALLOWED}"


def test_engine_modules_the_slicer_side_uses_do_not_import_torch():
    import subprocess

    for module in sorted(ENGINE_MODULES_ALLOWED):
        code = f"import sys, {module}; sys.exit(1 if {{'torch', 'monai', 'transformers'}} & set(sys.modules) else 0)"
        result = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True)
        assert result.returncode == 0, f"importing {module} imports torch or another heavy package: {result.stderr}"


def test_module_file_uses_no_slicer_util_copies_on_slicer():
    """slicer-core copies slicer.util functions onto `slicer`; real Slicer does not."""
    import slicer.util

    for path in SLICER_SIDE:
        used = set(re.findall(r"\bslicer\.(\w+)\(", path.read_text()))
        copies = {name for name in used if hasattr(slicer.util, name) and name[0].islower()}
        assert not copies, f"{path.name} calls slicer.{copies}; use slicer.util.<name>"


def test_requirements_have_bounds_exclude_torch_and_match_pyproject():
    from packaging.requirements import Requirement

    from TeViASegmentLib import installer

    requirements = [Requirement(line) for line in installer.read_requirements()]
    for requirement in requirements:
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {">=", ">", "=="} and operators & {"<", "<=", "=="}, f"{requirement} needs lower and upper bounds"
    assert "torch" not in {r.name for r in requirements}
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    engine = {Requirement(r).name.lower(): Requirement(r).specifier for r in project}
    assert engine.pop("torch") == Requirement(f"torch{installer.TORCH_REQUIREMENT}").specifier
    assert {r.name.lower(): r.specifier for r in requirements} == engine
