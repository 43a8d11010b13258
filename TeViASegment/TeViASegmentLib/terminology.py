"""Terminology codes for a prompt: what was segmented, as DICOM / SNOMED CT codes.

Three outcomes, decided by the words of the prompt:

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

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "Code",
    "SegmentCoding",
    "FINDINGS_CONTEXT",
    "REGION_CONTEXT",
    "TERMINOLOGY_FILE",
    "NEUTRAL_COLOR",
    "FINDING_WORDS",
    "REGIONS",
    "finding_types",
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


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme, code value, meaning (for example SCT 39607008 Lung)."""

    scheme: str
    value: str
    meaning: str

    def serialized(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = Code("", "", "")
ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
LEFT, RIGHT, BOTH_SIDES = Code("SCT", "7771000", "Left"), Code("SCT", "24028007", "Right"), \
    Code("SCT", "51440002", "Right and left")

#: Word of a prompt -> SNOMED CT code value of the finding type (in TERMINOLOGY_FILE).
#: Pulmonary infection, opacity and consolidation on a radiograph are coded as Infiltrate,
#: as TotalSegmentator codes its COVID-19 lung infiltrates.
FINDING_WORDS: dict[str, str] = {
    **dict.fromkeys(("infection", "infections", "infected", "infiltrate", "infiltrates", "infiltration",
                     "opacity", "opacities", "consolidation", "consolidations", "pneumonia", "covid"), "47351003"),
    **dict.fromkeys(("lesion", "lesions"), "52988006"),
    **dict.fromkeys(("mass", "masses"), "4147007"),
    **dict.fromkeys(("nodule", "nodules"), "27925004"),
    **dict.fromkeys(("cyst", "cysts"), "367643001"),
    **dict.fromkeys(("effusion", "effusions"), "41699000"),
    **dict.fromkeys(("edema", "oedema"), "79654002"),
    **dict.fromkeys(("hemorrhage", "haemorrhage", "bleeding", "bleed"), "50960005"),
    **dict.fromkeys(("inflammation", "inflamed"), "23583003"),
    **dict.fromkeys(("abscess", "abscesses"), "44132006"),
    **dict.fromkeys(("necrosis", "necrotic"), "6574001"),
    **dict.fromkeys(("tumor", "tumour", "tumors", "tumours", "neoplasm", "cancer"), "108369006"),
}


@dataclass(frozen=True)
class Region:
    """An anatomic region of Slicer's DICOM master list; `lateral`: it has Left/Right modifiers."""

    code: Code
    lateral: bool


def _region(value: str, meaning: str, lateral: bool = False) -> Region:
    return Region(Code("SCT", value, meaning), lateral)


_LUNG, _LIVER, _KIDNEY = _region("39607008", "Lung", True), _region("10200004", "Liver", True), \
    _region("64033007", "Kidney", True)
#: Word of a prompt -> anatomic region (codes as in AnatomicRegionAndModifier-DICOM-Master.json).
REGIONS: dict[str, Region] = {
    "lung": _LUNG, "lungs": _LUNG, "pulmonary": _LUNG,
    "liver": _LIVER, "hepatic": _LIVER,
    "kidney": _KIDNEY, "kidneys": _KIDNEY, "renal": _KIDNEY,
    "spleen": _region("78961009", "Spleen", True), "splenic": _region("78961009", "Spleen", True),
    "pleura": _region("3120008", "Pleura", True), "pleural": _region("3120008", "Pleura", True),
    "breast": _region("76752008", "Breast", True),
    "adrenal": _region("23451007", "Adrenal gland", True),
    "ovary": _region("15497006", "Ovary", True),
    "heart": _region("80891009", "Heart"), "cardiac": _region("80891009", "Heart"),
    "brain": _region("12738006", "Brain"), "cerebral": _region("12738006", "Brain"),
    "pancreas": _region("15776009", "Pancreas"), "pancreatic": _region("15776009", "Pancreas"),
    "prostate": _region("41216001", "Prostate"),
    "bladder": _region("89837001", "Bladder"),
    "thyroid": _region("69748006", "Thyroid"),
    "stomach": _region("69695003", "Stomach"), "gastric": _region("69695003", "Stomach"),
    "colon": _region("71854001", "Colon"),
    "esophagus": _region("32849002", "Esophagus"), "oesophagus": _region("32849002", "Esophagus"),
    "gallbladder": _region("28231008", "Gallbladder"),
    "mediastinum": _region("72410000", "Mediastinum"), "mediastinal": _region("72410000", "Mediastinum"),
    "uterus": _region("35039007", "Uterus"),
    "chest": _region("51185008", "Thorax"), "thorax": _region("51185008", "Thorax"),
    "thoracic": _region("51185008", "Thorax"),
    "abdomen": _region("113345001", "Abdomen"), "abdominal": _region("113345001", "Abdomen"),
}

#: Words that do not change which structure a prompt names ("segment the liver" = "liver").
_FILLER = frozenset("segment segmentation the a an please whole entire of outline show find me all".split())
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


@lru_cache(maxsize=1)
def finding_types() -> dict[str, tuple[Code, tuple[float, float, float]]]:
    """The finding types of TERMINOLOGY_FILE: code value -> (code, recommended colour)."""
    document = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    (category,) = document["SegmentationCodes"]["Category"]
    return {t["CodeValue"]: (Code(t["CodingSchemeDesignator"], t["CodeValue"], t["CodeMeaning"]),
                             tuple(c / 255.0 for c in t["recommendedDisplayRGBValue"]))
            for t in category["Type"]}


def _laterality(words: list[str]) -> Code | None:
    sides = {w for w in words if w in ("left", "right")}
    if "bilateral" in words or "both" in words or len(sides) == 2:
        return BOTH_SIDES
    return {"left": LEFT, "right": RIGHT}[sides.pop()] if sides else None


def sides_mirrored(convention: str, ijk_to_ras) -> bool:
    """Whether a prompt's "left"/"right" (in `convention`, "patient" or "image") name the
    patient's opposite sides on a volume with this 4x4 IJK-to-RAS matrix."""
    from tevia.prompts.sides import side_mirroring

    return side_mirroring(convention, "patient", [ijk_to_ras[r][0] for r in range(3)])[0]


def _finding(prompt: str, mirror_sides: bool) -> SegmentCoding | None:
    from tevia.prompts.normalise import normalise_prompt
    from tevia.prompts.sides import swap_sides

    try:
        text = normalise_prompt(prompt)
    except ValueError:
        return None
    words = _WORD.findall(swap_sides(text) if mirror_sides else text)
    finding = next((FINDING_WORDS[w] for w in words if w in FINDING_WORDS), None)
    if finding is None:
        return None
    finding_type, color = finding_types()[finding]
    region = next((REGIONS[w] for w in words if w in REGIONS), None)
    side = _laterality(words) if region is not None and region.lateral else None
    entry = "~".join((FINDINGS_CONTEXT, ALTERED_STRUCTURE.serialized(), finding_type.serialized(),
                      NO_CODE.serialized(), REGION_CONTEXT,
                      (region.code if region else NO_CODE).serialized(), (side or NO_CODE).serialized()))
    return SegmentCoding(entry, color, "finding")


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
    from tevia.prompts.sides import swap_sides

    finding = _finding(prompt, mirror_sides)
    if finding is not None:
        return finding
    logic = terminology_logic if terminology_logic is not None else _default_terminology_logic()
    words = [w for w in _WORD.findall(prompt.lower()) if w not in _FILLER]
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
