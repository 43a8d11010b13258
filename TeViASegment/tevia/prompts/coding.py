"""What a prompt segments, in DICOM / SNOMED CT codes, decided by the prompt's words alone.

Two kinds of prompt get codes of their own:

- a finding ("lower left lung infection", "liver lesion"): category Morphologically Altered
  Structure, the finding's type from the extension's terminology file
  (TeViASegment/Resources/Terminology/SegmentationCategoryTypeModifier-TeViA.term.json), and
  the organ the prompt names as anatomic region (codes of Slicer's "Anatomic codes - DICOM
  master list") with its laterality (left, right, or "Right and left" for bilateral prompts);
- an organ alone ("liver", "segment the left kidney"): category Anatomical Structure, the
  organ's code as type, its side as modifier (`dicom_codes`).

Anything else is coded as Slicer codes a segment it knows nothing of: Tissue / Tissue. The
Slicer module (TeViASegmentLib.terminology) builds Slicer's terminology entries from the same
tables and asks Slicer's own terminologies for organs; a DICOM SEG (tevia.volume.dicom_seg)
carries `dicom_codes`. Nothing here imports Slicer or torch.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Code", "Region", "FindingCoding", "SegmentCodes", "NO_CODE", "ALTERED_STRUCTURE", "ANATOMICAL_STRUCTURE",
           "TISSUE", "LEFT", "RIGHT", "BOTH_SIDES", "FINDING_WORDS", "REGIONS", "FILLER_WORDS", "TERMINOLOGY_FILE",
           "terminology_file", "finding_types", "laterality", "code_finding", "dicom_codes"]

_TERMINOLOGY_NAME = "SegmentationCategoryTypeModifier-TeViA.term.json"


def terminology_file() -> Path:
    """The extension's findings terminology: in Resources/Terminology beside the source (the
    Slicer module, a checkout), else ``<prefix>/share/tevia/Terminology`` (a wheel install)."""
    source = Path(__file__).resolve().parents[2] / "Resources" / "Terminology" / _TERMINOLOGY_NAME
    return source if source.is_file() else Path(sys.prefix) / "share" / "tevia" / "Terminology" / _TERMINOLOGY_NAME


TERMINOLOGY_FILE = terminology_file()


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
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
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
FILLER_WORDS = frozenset("segment segmentation the a an please whole entire of outline show find me all".split())
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class FindingCoding:
    """A finding prompt's codes: the finding type and its recommended colour (RGB 0..1), the
    organ it names (or None) and that organ's side (or None)."""

    type: Code
    color: tuple[float, float, float]
    region: Region | None
    side: Code | None


@dataclass(frozen=True)
class SegmentCodes:
    """The codes of a DICOM SEG segment: property category and type (with the type's modifier,
    the side of an organ), and for a finding the anatomic region with its modifier."""

    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None


@lru_cache(maxsize=1)
def finding_types() -> dict[str, tuple[Code, tuple[float, float, float]]]:
    """The finding types of TERMINOLOGY_FILE: code value -> (code, recommended colour)."""
    document = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    (category,) = document["SegmentationCodes"]["Category"]
    return {t["CodeValue"]: (Code(t["CodingSchemeDesignator"], t["CodeValue"], t["CodeMeaning"]),
                             tuple(c / 255.0 for c in t["recommendedDisplayRGBValue"]))
            for t in category["Type"]}


def laterality(words: list[str]) -> Code | None:
    """The side the words name: Left, Right, Right and left (bilateral, both, or both words), or None."""
    sides = {w for w in words if w in ("left", "right")}
    if "bilateral" in words or "both" in words or len(sides) == 2:
        return BOTH_SIDES
    return {"left": LEFT, "right": RIGHT}[sides.pop()] if sides else None


def _words(prompt: str, mirror_sides: bool) -> list[str]:
    from tevia.prompts.normalise import normalise_prompt
    from tevia.prompts.sides import swap_sides

    text = normalise_prompt(prompt)
    return _WORD.findall(swap_sides(text) if mirror_sides else text)


def code_finding(prompt: str, mirror_sides: bool = False) -> FindingCoding | None:
    """The codes of a finding prompt, or None when the prompt names no finding.

    Args:
        prompt: the prompt as typed.
        mirror_sides: the prompt's "left"/"right" name the image's halves, mirrored to the
            patient's sides (tevia.prompts.sides.side_mirroring): swap them, as codes always
            name the patient's side.
    """
    try:
        words = _words(prompt, mirror_sides)
    except ValueError:
        return None
    finding = next((FINDING_WORDS[w] for w in words if w in FINDING_WORDS), None)
    if finding is None:
        return None
    finding_type, color = finding_types()[finding]
    region = next((REGIONS[w] for w in words if w in REGIONS), None)
    side = laterality(words) if region is not None and region.lateral else None
    return FindingCoding(finding_type, color, region, side)


def dicom_codes(prompt: str, mirror_sides: bool = False) -> SegmentCodes:
    """A segment's DICOM codes: a finding (`code_finding`), an organ named alone with its side,
    or Tissue / Tissue when the words fit neither."""
    finding = code_finding(prompt, mirror_sides)
    if finding is not None:
        return SegmentCodes(ALTERED_STRUCTURE, finding.type, region=finding.region.code if finding.region else None,
                            region_modifier=finding.side)
    try:
        words = [w for w in _words(prompt, mirror_sides) if w not in FILLER_WORDS]
    except ValueError:
        return SegmentCodes(TISSUE, TISSUE)
    organs = [w for w in words if w not in ("left", "right", "bilateral", "both")]
    if len(organs) == 1 and organs[0] in REGIONS:
        region = REGIONS[organs[0]]
        return SegmentCodes(ANATOMICAL_STRUCTURE, region.code, type_modifier=laterality(words) if region.lateral
                            else None)
    return SegmentCodes(TISSUE, TISSUE)
