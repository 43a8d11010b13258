"""Supported Slicer versions: the check at load, the API table in docs/SLICER.md, the metadata."""

from __future__ import annotations

import ast
import importlib.util
import re
import types
from pathlib import Path

import pytest
import slicer

from TeViASegmentLib import slicer_version
from TeViASegmentLib.slicer_version import MINIMUM_SLICER, unsupported_reason

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "SLICER.md"
MINIMUM = "%d.%d" % MINIMUM_SLICER


def _slicer_api():
    spec = importlib.util.spec_from_file_location("slicer_api", REPO / "Utilities" / "slicer_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _api_table() -> dict[str, str]:
    """name -> oldest release, from the table under "## Slicer APIs the module uses"."""
    section = DOC.read_text().split("## Slicer APIs the module uses", 1)[1]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            for name in re.findall(r"`([^`]+)`", cells[0]):
                table[name] = cells[2]
    return table


@pytest.mark.parametrize("slicer_ver, python_ver, refused", [
    ((5, 8), (3, 9), True), ((5, 6), (3, 9), True), ((5, 10), (3, 12), False), ((5, 12), (3, 12), False),
    ((6, 0), (3, 13), False), (None, (3, 9), True), (None, (3, 10), False),
])
def test_older_slicers_and_pythons_are_refused_with_what_to_do(slicer_ver, python_ver, refused):
    reason = unsupported_reason(slicer_ver, python_ver)
    assert (reason is not None) == refused
    if refused:
        assert f"needs 3D Slicer {MINIMUM} or later" in reason and "download.slicer.org" in reason
        assert f"Python {python_ver[0]}.{python_ver[1]}" in reason or f"Slicer {slicer_ver[0]}.{slicer_ver[1]}" in reason


def test_the_check_reads_the_running_slicers_version(monkeypatch):
    """slicer.app (the application) cannot exist here: a stand-in with its majorVersion/minorVersion."""
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=8), raising=False)
    assert slicer_version.running_slicer_version() == (5, 8)
    assert "3D Slicer 5.8" in unsupported_reason()
    monkeypatch.delattr(slicer, "app")
    assert slicer_version.running_slicer_version() is None and unsupported_reason() is None


@pytest.mark.parametrize("path", _slicer_api().SOURCES, ids=lambda p: p.name)
def test_slicer_side_is_python_39_syntax_so_an_old_slicer_reaches_the_check(path):
    ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))


def test_every_slicer_api_the_code_uses_is_in_the_table_and_exists_in_the_oldest_supported_slicer():
    table = _api_table()
    used = _slicer_api().used_names()
    assert len(used) > 30
    missing = sorted(used - set(table))
    assert not missing, ("docs/SLICER.md's API table lacks these names the code uses (look them up with "
                         f"python Utilities/slicer_api.py --slicer-git DIR): {missing}")
    releases = {name: oldest for name, oldest in table.items() if re.fullmatch(r"\d+\.\d+", oldest)}
    too_new = {name: oldest for name, oldest in releases.items()
               if tuple(map(int, oldest.split("."))) > MINIMUM_SLICER}
    assert not too_new, f"newer than Slicer {MINIMUM}, the oldest supported: {too_new}"


def test_the_api_scan_finds_slicer_names_and_vtk_methods_but_not_python_ones(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import queue, slicer\nimport SimpleITK as sitk\n"
                      "q = queue.Queue()\nsitk.ReadImage('x')\nnode.GetIJKToRASMatrix(m)\n"
                      "slicer.util.arrayFromVolume(node)\nx = slicer.app.userSettings()\n")
    assert _slicer_api().used_names([source]) == {"GetIJKToRASMatrix", "slicer.util.arrayFromVolume",
                                                  "slicer.app.userSettings"}


def test_supported_versions_are_stated_everywhere_and_agree():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert f"find_package(Slicer {MINIMUM} REQUIRED)" in cmake
    assert f"Needs 3D Slicer {MINIMUM} or later." in cmake and f"Needs 3D Slicer {MINIMUM} or later." in (
        REPO / "TeViA.s4ext").read_text()
    assert f"**3D Slicer {MINIMUM} and later**" in DOC.read_text()
    assert f"3D Slicer {MINIMUM} and later" in (REPO / "README.md").read_text()
    assert '" Supported: 3D Slicer %d.%d and later." % MINIMUM_SLICER' in (
        REPO / "TeViASegment" / "TeViASegment.py").read_text()


def test_extension_metadata_names_contributors_with_organisations_and_links_the_documentation():
    cmake = (REPO / "CMakeLists.txt").read_text()
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', cmake).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(",")), contributors
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake).group(1)
    assert (REPO / homepage.split("/blob/main/", 1)[1]) == DOC
