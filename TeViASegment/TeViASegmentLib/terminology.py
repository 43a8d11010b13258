"""Terminology codes for a prompt: what was segmented, as DICOM / SNOMED CT codes.

Three outcomes, decided by the words of the prompt (the code tables and the finding rules are
the engine's, tevia.prompts.coding, which a DICOM SEG export uses too):

- a finding ("lower left lung infection", "liver lesion"): category Morphologically Altered
  Structure, the finding's type from the extension's own terminology file
  (Resources/Terminology/SegmentationCategoryTypeModifier-TeViA.term.json), and the organ the
  prompt names as anatomic region, from Slicer's "Anatomic codes - DICOM master list", with
  its laterality (left, right, or "Right and left" for bilateral prompts);
- an anatomical structure, only when the prompt names just that structure ("liver",
  "segment the left kidney"): the entry of Slicer's own terminologies (matched by their
  3dSlicerLabel), with its recommended colour;
- nothing fits ("banana"): no code of ours and `NEUTRAL_COLOR`; the segment keeps the
  placeholder every new vtkSegment has (generic "Tissue"), as a hand-painted one does.

Findings are a dictionary lookup. Structures ask Slicer's terminology logic at most once per
distinct text (a few ms each, then cached), so coding a prompt never stalls the GUI.
The entry strings use Slicer's serialized terminology entry format (the `vtkSegment` tag
`vtkSegment.GetTerminologyEntryTagName()`), the same in Slicer 5.8 to 5.12.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "SegmentCoding",
    "FINDINGS_CONTEXT",
    "REGION_CONTEXT",
    "TERMINOLOGY_FILE",
    "NEUTRAL_COLOR",
    "code_prompt",
    "sides_mirrored",
    "load_findings_terminology",
]

logger = logging.getLogger(__name__)

TERMINOLOGY_FILE = (Path(__file__).resolve().parents[1] / "Resources" / "Terminology"
                    / "SegmentationCategoryTypeModifier-TeViA.term.json")
FINDINGS_CONTEXT = "Segmentation category and type - TeViA findings"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
NEUTRAL_COLOR = (0.75, 0.75, 0.75)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class SegmentCoding:
    """What a segment made from a prompt is, in codes.

    Attributes:
        entry: Slicer's serialized terminology entry, or None when nothing fits.
        color: display colour, RGB floats in [0, 1] (`NEUTRAL_COLOR` when entry is None).
        kind: "finding", "structure" or "none".
    """

    entry: str | None
    color: tuple[float, float, float]
    kind: str


def sides_mirrored(convention: str, ijk_to_ras) -> bool:
    """Whether a prompt's "left"/"right" (in `convention`, "patient" or "image") name the
    patient's opposite sides on a volume with this 4x4 IJK-to-RAS matrix."""
    from tevia.prompts.sides import side_mirroring

    return side_mirroring(convention, "patient", [ijk_to_ras[r][0] for r in range(3)])[0]


def _finding(prompt: str, mirror_sides: bool) -> SegmentCoding | None:
    from tevia.prompts.coding import ALTERED_STRUCTURE, NO_CODE, code_finding

    finding = code_finding(prompt, mirror_sides)
    if finding is None:
        return None
    entry = "~".join((FINDINGS_CONTEXT, ALTERED_STRUCTURE.serialized(), finding.type.serialized(),
                      NO_CODE.serialized(), REGION_CONTEXT,
                      (finding.region.code if finding.region else NO_CODE).serialized(),
                      (finding.side or NO_CODE).serialized()))
    return SegmentCoding(entry, finding.color, "finding")


@lru_cache(maxsize=512)
def _structure(text: str, terminology_logic) -> SegmentCoding | None:
    import slicer
    import vtk

    names = vtk.vtkStringArray()
    terminology_logic.GetLoadedTerminologyNames(names)
    for index in range(names.GetNumberOfValues()):
        if names.GetValue(index) == FINDINGS_CONTEXT:
            continue
        entry = slicer.vtkSlicerTerminologyEntry()
        if terminology_logic.FindTypeInTerminologyBy3dSlicerLabel(names.GetValue(index), text, entry):
            type_object = entry.GetTypeModifierObject()
            if type_object is None or not type_object.GetCodeValue():
                type_object = entry.GetTypeObject()
            color = tuple(float(c) / 255.0 for c in type_object.GetRecommendedDisplayRGBValue())
            return SegmentCoding(terminology_logic.SerializeTerminologyEntry(entry), color, "structure")
    return None


def _default_terminology_logic():
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is None or not hasattr(modules, "terminologies"):
        return None
    return modules.terminologies.logic()


def code_prompt(prompt: str, terminology_logic=None, mirror_sides: bool = False) -> SegmentCoding:
    """The terminology entry and colour for the segment a prompt produced.

    Args:
        prompt: the prompt as typed.
        terminology_logic: vtkSlicerTerminologiesModuleLogic with Slicer's terminologies
            loaded; `slicer.modules.terminologies.logic()` when None (structures need it;
            findings do not).
        mirror_sides: the prompt's "left"/"right" name the image's halves, mirrored to the
            patient's sides (see tevia.prompts.sides.side_mirroring): swap them for the codes,
            which always name the patient's side.

    Returns:
        A finding (with anatomic region), an anatomical structure, or no code.
    """
    from tevia.prompts.coding import FILLER_WORDS
    from tevia.prompts.sides import swap_sides

    finding = _finding(prompt, mirror_sides)
    if finding is not None:
        return finding
    logic = terminology_logic if terminology_logic is not None else _default_terminology_logic()
    words = [w for w in _WORD.findall(prompt.lower()) if w not in FILLER_WORDS]
    if logic is not None and words:
        text = " ".join(words)
        structure = _structure(swap_sides(text) if mirror_sides else text, logic)
        if structure is not None:
            return structure
    return SegmentCoding(None, NEUTRAL_COLOR, "none")


def load_findings_terminology(terminology_logic=None) -> str | None:
    """Load TERMINOLOGY_FILE into Slicer's terminology logic (once), so Segment Editor lists
    the findings; returns its context name, or None without a terminology logic (or when
    Slicer refuses the file: logged, the module keeps working)."""
    logic = terminology_logic if terminology_logic is not None else _default_terminology_logic()
    if logic is None:
        return None
    if not logic.IsTerminologyContextLoaded(FINDINGS_CONTEXT):
        name = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
        if name != FINDINGS_CONTEXT:
            logger.error("Slicer could not load the terminology file %s (got %r): segments keep their codes, "
                         "but Segment Editor will not list the findings", TERMINOLOGY_FILE, name)
            return None
    return FINDINGS_CONTEXT
