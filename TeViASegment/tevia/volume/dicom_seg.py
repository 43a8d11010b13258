"""DICOM Segmentation objects (DICOM SEG) for labelmaps of DICOM inputs, written with highdicom.

One segment per prompt: its label is the prompt (cut to DICOM's 64 characters), its codes are
`tevia.prompts.coding.dicom_codes` (a finding with its organ and side, an organ with its side,
or Tissue), and it is marked as made by an automatic algorithm (TeViA and the model's name).
The SEG references the source series (each frame its source image), so PACS viewers, OHIF and
Slicer's DICOM module (QuantitativeReporting) place it on the images it was made from.
highdicom is imported only here: only `--format dicom-seg` needs it (the `dicom` extra).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from tevia import __version__
from tevia.prompts.coding import Code, dicom_codes
from tevia.volume.errors import BadInputError, UnsupportedFormatError
from tevia.volume.geometry import as_3d, ijk_to_ras
from tevia.volume.io import dicom_series_files, file_extension

__all__ = ["DICOM_SEG_EXTENSION", "MAX_LABEL_CHARS", "check_dicom_source", "write_dicom_seg"]

DICOM_SEG_EXTENSION = ".dcm"
MAX_LABEL_CHARS = 64  # Segment Label is a DICOM LO value
_SERIES_NUMBER = 9901


def check_dicom_source(source: str | os.PathLike) -> tuple[str, ...]:
    """The DICOM files a SEG of `source` references: a DICOM series folder's series in slice
    order, or one .dcm file.

    Raises:
        UnsupportedFormatError: the input is not DICOM (a DICOM SEG needs DICOM source images), or
            its images have no Frame of Reference UID (which a SEG must share with them).
    """
    import pydicom

    path = Path(source)
    if path.is_dir():
        files = dicom_series_files(path)
    elif file_extension(path) == ".dcm":
        files = (str(path),)
    else:
        raise UnsupportedFormatError(f"a DICOM SEG references DICOM images, but the input {path.name} is not DICOM: "
                                     "give a DICOM series folder, or write .nii.gz, .nrrd or .seg.nrrd")
    if "FrameOfReferenceUID" not in pydicom.dcmread(files[0], stop_before_pixels=True):
        raise UnsupportedFormatError(f"the DICOM images of {path.name} have no Frame of Reference UID, which a DICOM "
                                     "SEG must share with its source images: write .seg.nrrd or .nii.gz instead")
    return files


def _concept(code: Code) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(code.value, code.scheme, code.meaning)


def _mirror_sides(convention: str, labelmap: sitk.Image) -> bool:
    """Whether prompts in `convention` name the patient's opposite sides on this image."""
    from tevia.prompts.sides import side_mirroring

    return side_mirroring(convention, "patient", list(ijk_to_ras(as_3d(labelmap))[:3, 0]))[0]


def _segment_description(number: int, prompt: str, mirror_sides: bool, model: str) -> Any:
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    coded = dicom_codes(prompt, mirror_sides)
    label = prompt if len(prompt) <= MAX_LABEL_CHARS else prompt[: MAX_LABEL_CHARS - 3] + "..."
    algorithm = AlgorithmIdentificationSequence(name="TeViA", version=__version__, family=codes.cid7162.ArtificialIntelligence,
                                                parameters={"model": model[:64]})
    description = SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=_concept(coded.category),
        segmented_property_type=_concept(coded.type), algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_concept(coded.region)] if coded.region is not None else None)
    if coded.type_modifier is not None:
        description.SegmentedPropertyTypeModifierCodeSequence = [_concept(coded.type_modifier)]
    if coded.region is not None and coded.region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_concept(coded.region_modifier)]
    return description


def _with_sop_identity(dataset: Any) -> Any:
    """The dataset, its empty SOP Class / Instance UID taken from its file meta (some exports
    leave them empty in the dataset and keep them only there); the file is not changed."""
    meta = getattr(dataset, "file_meta", None)
    for name, fallback in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not dataset.get(name) and meta is not None and meta.get(fallback):
            setattr(dataset, name, meta.get(fallback))
    return dataset


def write_dicom_seg(labelmap: sitk.Image, labels: dict[int, str], source: str | os.PathLike, path: str | os.PathLike,
                    convention: str = "patient", model: str = "") -> None:
    """Write a labelmap of a DICOM input as a DICOM SEG referencing that input's series.

    Args:
        labelmap: uint8 labelmap with the geometry of the image read from `source`
            (tevia.volume.io.read_input): label n is segment n.
        labels: label value -> prompt (segments 1..n).
        source: the DICOM series folder (or .dcm file) the labelmap was made from.
        path: the file to write (the caller makes it atomic).
        convention: whether the prompts' left/right name the patient's sides ("patient") or
            the image's ("image"); the codes always name the patient's.
        model: the model's name, recorded with the algorithm.

    Raises:
        UnsupportedFormatError: `source` is not DICOM.
        BadInputError: the labelmap does not have the source series' size.
    """
    import highdicom
    import numpy as np
    import pydicom

    files = check_dicom_source(source)
    datasets = [_with_sop_identity(pydicom.dcmread(name)) for name in files]
    array = sitk.GetArrayFromImage(as_3d(labelmap))  # K J I: frame k is files[k], rows J, columns I
    expected = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    if array.shape != expected:
        raise BadInputError(f"the labelmap's size {array.shape[::-1]} is not the DICOM series' "
                            f"{expected[::-1]}: it was not made from {Path(source).name}")
    if sorted(labels) != list(range(1, len(labels) + 1)):
        raise ValueError(f"labels must be numbered 1..{len(labels)}, got {sorted(labels)}")
    mirror = _mirror_sides(convention, labelmap)
    descriptions = [_segment_description(number, labels[number], mirror, model) for number in sorted(labels)]
    segmentation = highdicom.seg.Segmentation(
        source_images=datasets, pixel_array=np.ascontiguousarray(array), segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=highdicom.UID(), series_number=_SERIES_NUMBER,
        sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer="TeViA",
        manufacturer_model_name=(model or "TeViA")[:64], software_versions=__version__, device_serial_number="1",
        series_description="TeViA text-guided segmentation", omit_empty_frames=False)
    segmentation.save_as(str(path))
