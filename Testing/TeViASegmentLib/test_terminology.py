"""Terminology codes of segments, checked against Slicer's real terminology files (5.10 to 5.12)."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
import slicer
import slicerio
import vtk
from conftest import TESTDATA
from slicer_fixtures import SLICER_TERMINOLOGY, load_volume, slicer_scene, slicer_terminologies  # noqa: F401

from TeViASegmentLib import models, scene, terminology
from tevia.prompts import coding as prompt_codes

BUNDLED_EXAMPLES = models.ModelStore(models.load_catalogue()).example_prompts("default")
LUNG = ("SCT", "39607008", "Lung")
INFILTRATE = ("SCT", "47351003", "Infiltrate")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
SIDES = {"left": ("SCT", "7771000", "Left"), "right": ("SCT", "24028007", "Right"),
         "both": ("SCT", "51440002", "Right and left"), None: ("", "", "")}


def _codes(entry: str, logic) -> dict:
    """The codes of a serialized entry as Slicer reads them, and whether Slicer finds the entry
    in its loaded terminologies and region contexts."""
    parsed = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed)

    def code(obj):
        return (obj.GetCodingSchemeDesignator() or "", obj.GetCodeValue() or "", obj.GetCodeMeaning() or "")

    codes = {"context": parsed.GetTerminologyContextName(), "category": code(parsed.GetCategoryObject()),
             "type": code(parsed.GetTypeObject()), "region": code(parsed.GetRegionObject()),
             "region_modifier": code(parsed.GetRegionModifierObject())}
    codes["known"] = bool(logic.UpdateEntryFromLoadedTerminologies(parsed, [], []))
    return codes


def _expected_side(prompt: str):
    text = prompt.lower()
    if "bilateral" in text:
        return "both"
    return "left" if "left" in text else "right" if "right" in text else None


@pytest.mark.parametrize("prompt", ["lower left lung infection", *BUNDLED_EXAMPLES,
                                    "Bilateral pulmonary infection, lower lungs"])
def test_infection_prompts_are_findings_in_the_named_lung(slicer_terminologies, prompt):
    coding = terminology.code_prompt(prompt, slicer_terminologies)
    codes = _codes(coding.entry, slicer_terminologies)
    assert coding.kind == "finding" and codes["known"]
    assert codes["context"] == terminology.FINDINGS_CONTEXT
    assert (codes["category"], codes["type"], codes["region"]) == (ALTERED, INFILTRATE, LUNG)
    assert codes["region_modifier"] == SIDES[_expected_side(prompt)]
    assert coding.color == prompt_codes.finding_types()["47351003"][1]


def test_bundled_examples_cover_both_sides_and_bilateral():
    assert {_expected_side(p) for p in BUNDLED_EXAMPLES} == {"left", "right", "both"}


@pytest.mark.parametrize("prompt,finding,region,side", [
    ("liver lesion", "Lesion", "Liver", None),
    ("right pleural effusion", "Effusion", "Pleura", "right"),
    ("nodule in the left lung", "Nodule", "Lung", "left"),
    ("brain tumour", "Neoplasm", "Brain", None),
    ("RLL consolidation", "Infiltrate", "Lung", "right"),
    ("a mass", "Mass", "", None),
])
def test_other_findings(slicer_terminologies, prompt, finding, region, side):
    codes = _codes(terminology.code_prompt(prompt, slicer_terminologies).entry, slicer_terminologies)
    assert codes["known"] and codes["category"] == ALTERED
    assert (codes["type"][2], codes["region"][2], codes["region_modifier"]) == (finding, region, SIDES[side])


def test_mirrored_sides_code_the_patients_side(slicer_terminologies):
    codes = _codes(terminology.code_prompt("lower left lung infection", slicer_terminologies, mirror_sides=True).entry,
                   slicer_terminologies)
    assert codes["region_modifier"] == SIDES["right"]
    assert terminology.sides_mirrored("image", np.diag([-1.0, -1, 1, 1]))
    assert not terminology.sides_mirrored("image", np.diag([1.0, 1, 1, 1]))
    assert not terminology.sides_mirrored("patient", np.diag([-1.0, -1, 1, 1]))


@pytest.mark.parametrize("prompt,type_code,modifier", [
    ("liver", ("SCT", "10200004", "Liver"), ("", "", "")),
    ("Segment the LIVER please", ("SCT", "10200004", "Liver"), ("", "", "")),
    ("left lung", ("SCT", "39607008", "Lung"), ("SCT", "7771000", "Left")),
])
def test_a_structure_alone_is_the_anatomical_structure(slicer_terminologies, prompt, type_code, modifier):
    coding = terminology.code_prompt(prompt, slicer_terminologies)
    codes = _codes(coding.entry, slicer_terminologies)
    assert coding.kind == "structure" and codes["known"]
    assert codes["category"] == ("SCT", "123037004", "Anatomical Structure") and codes["type"] == type_code
    entry = slicer.vtkSlicerTerminologyEntry()
    slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(coding.entry, entry)
    assert (entry.GetTypeModifierObject().GetCodeValue() or "") == modifier[1]
    assert coding.color != terminology.NEUTRAL_COLOR


@pytest.mark.parametrize("prompt", ["banana", "lower left lung", "???"])
def test_nothing_fits_no_code_and_neutral_colour(slicer_terminologies, prompt):
    assert terminology.code_prompt(prompt, slicer_terminologies) == terminology.SegmentCoding(
        None, terminology.NEUTRAL_COLOR, "none")


def test_codes_are_the_ones_in_slicers_files(slicer_terminologies):
    """Every region and laterality the module writes is in Slicer's anatomic context, with the
    same meaning; every finding word leads to a type of the extension's terminology file."""
    regions = json.loads(gzip.decompress(
        (SLICER_TERMINOLOGY / "AnatomicRegionAndModifier-DICOM-Master.json.gz").read_bytes()))
    by_code = {r["CodeValue"]: r for r in regions["AnatomicCodes"]["AnatomicRegion"]}
    assert regions["AnatomicContextName"] == terminology.REGION_CONTEXT
    for word, region in prompt_codes.REGIONS.items():
        found = by_code[region.code.value]
        assert found["CodeMeaning"] == region.code.meaning, word
        modifiers = {m["CodeValue"] for m in found.get("Modifier", [])}
        assert region.lateral == {"7771000", "24028007", "51440002"}.issubset(modifiers), word
    assert set(prompt_codes.FINDING_WORDS.values()) <= set(prompt_codes.finding_types())


def test_segments_carry_the_code_into_seg_nrrd(slicer_scene, slicer_terminologies, tmp_path):
    volume = load_volume(TESTDATA / "volumes" / "spinalcord-t2.nii.gz")
    labelmap = np.zeros(scene.volume_arrays(volume)[0].shape, np.uint8)
    labelmap[1, 2:6, 2:6], labelmap[2, 2:6, 2:6], labelmap[3, 2:6, 2:6] = 1, 2, 3
    prompts = {1: "lower left lung infection", 2: "liver", 3: "banana"}
    node, ids = scene.import_labelmap(labelmap, prompts, volume, terminology_logic=slicer_terminologies)
    segment = node.GetSegmentation().GetSegment(ids[2])
    assert segment.GetColor() == pytest.approx(terminology.NEUTRAL_COLOR)
    assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    path = tmp_path / "coded.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    segments = {s["name"]: s for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    infection = segments["lower left lung infection"]["terminology"]
    assert infection["contextName"] == terminology.FINDINGS_CONTEXT
    assert [infection[k] for k in ("category", "type", "anatomicRegion", "anatomicRegionModifier")] == [
        list(ALTERED), list(INFILTRATE), list(LUNG), list(SIDES["left"])]
    assert segments["liver"]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    fresh = slicer.vtkSegment()  # Slicer's placeholder for a segment nobody coded (generic "Tissue")
    assert node.GetSegmentation().GetSegment(ids[2]).GetTag(fresh.GetTerminologyEntryTagName(), tag := vtk.reference(""))
    assert str(tag) == fresh.GetTerminology() and "Tissue" in str(tag)
    assert segments["banana"]["terminology"]["type"] == ["SCT", "85756007", "Tissue"]


def test_coding_a_prompt_is_fast(slicer_terminologies):
    """Coding runs on the GUI thread when the result is imported: a few ms uncached, far less cached."""
    prompts = [*BUNDLED_EXAMPLES, "liver", "banana", "Segment the whole right kidney please"]
    start = time.perf_counter()
    first = [terminology.code_prompt(p, slicer_terminologies) for p in prompts]
    uncached = (time.perf_counter() - start) / len(prompts)
    start = time.perf_counter()
    again = [terminology.code_prompt(p, slicer_terminologies) for p in prompts]
    cached = (time.perf_counter() - start) / len(prompts)
    assert again == first
    assert uncached < 0.05 and cached < 0.005, (uncached, cached)


def test_a_terminology_file_slicer_refuses_is_logged_not_fatal(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken.term.json"
    broken.write_text("{}")
    monkeypatch.setattr(terminology, "TERMINOLOGY_FILE", broken)
    assert terminology.load_findings_terminology(slicer.vtkSlicerTerminologiesModuleLogic()) is None
    assert "could not load the terminology file" in caplog.text
