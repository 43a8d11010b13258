"""Scene <-> arrays: export a volume node for the worker, import a labelmap as named segments.

Frames: numpy arrays from `slicer.util.arrayFromVolume` are in K, J, I order (slice, row,
column); the 4x4 IJK-to-RAS matrix maps (I, J, K, 1) voxel indices to RAS millimetres. The
labelmap coming back from the worker has the volume's KJI shape and the volume's geometry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import slicer
import slicer.util
import vtk
import vtk.util.numpy_support
from TeViASegmentLib import terminology

__all__ = [
    "volume_arrays",
    "conversion_note",
    "LUMINANCE_WEIGHTS",
    "ijk_to_ras",
    "write_worker_input",
    "segment_name",
    "import_labelmap",
    "segment_ids",
    "segment_arrays",
    "segment_prompt",
    "PROMPT_TAG",
    "oriented_mask",
    "volume_shape",
]

logger = logging.getLogger(__name__)

MAX_SEGMENT_NAME_CHARS = 48
PROMPT_TAG = "TeViA.prompt"


#: RGB -> luminance weights of vtkImageLuminance (Slicer's Vector to Scalar Volume module).
LUMINANCE_WEIGHTS = (0.30, 0.59, 0.11)


def _is_rgb(volume_node) -> bool:
    image = volume_node.GetImageData()
    return (volume_node.IsA("vtkMRMLVectorVolumeNode") and image is not None
            and image.GetNumberOfScalarComponents() in (3, 4))


def conversion_note(volume_node) -> str | None:
    """A note for the user when a volume is segmented as a conversion of itself (an RGB image
    as its luminance), or None."""
    if volume_node is None or not _is_rgb(volume_node):
        return None
    return (f"Volume {volume_node.GetName()!r} is an RGB image: it is segmented as its luminance "
            "(0.30 R + 0.59 G + 0.11 B). To convert it another way, use the Vector to Scalar Volume module "
            "and segment the result.")


def volume_arrays(volume_node, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and geometry of a scalar volume node (an RGB(A) image: its luminance).

    Args:
        volume_node: a vtkMRMLScalarVolumeNode with image data, or an RGB(A) vector volume.
        copy: False gives a scalar volume's voxels as a read-only view of the node's memory
            (no copy of a large volume), valid only until the node's image changes: for a
            caller that uses them at once, on the thread that owns the scene.

    Returns:
        (voxels, ijk_to_ras): voxels of shape (K, J, I), the volume's dtype (a copy unless copy=False);
        ijk_to_ras is a float64 (4, 4) matrix from (I, J, K, 1) to RAS millimetres.

    Raises:
        ValueError: when the node is not a scalar volume, is a label map, holds no image data,
            or has several components that are not RGB(A).
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        got = None if volume_node is None else volume_node.GetClassName()
        raise ValueError(f"volume_node must be a scalar volume node, got {got}")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"volume_node {volume_node.GetName()!r} is a label map, not an image: "
                         "choose the image volume to segment")
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume_node {volume_node.GetName()!r} holds no image data: load a volume first")
    voxels = slicer.util.arrayFromVolume(volume_node)
    if copy:
        voxels = np.array(voxels, copy=True)
    else:
        voxels = voxels.view()
        voxels.flags.writeable = False
    if _is_rgb(volume_node):
        luminance = np.tensordot(voxels[..., :3].astype(np.float64), LUMINANCE_WEIGHTS, axes=([-1], [0]))
        voxels = (np.rint(luminance) if np.issubdtype(voxels.dtype, np.integer) else luminance).astype(voxels.dtype)
    if voxels.ndim != 3:
        raise ValueError(
            f"volume_node {volume_node.GetName()!r} ({volume_node.GetClassName()}) has voxel array shape "
            f"{voxels.shape}; only single-component 3D volumes and RGB images can be segmented")
    return voxels, ijk_to_ras(volume_node)


def volume_shape(volume_node) -> tuple[int, int, int]:
    """A volume node's voxel array shape (K, J, I), without reading its voxels."""
    return tuple(reversed(volume_node.GetImageData().GetDimensions()))


def ijk_to_ras(volume_node) -> np.ndarray:
    """A volume node's IJK-to-RAS matrix (in its parent transform's frame), float64 (4, 4)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def write_worker_input(volume_node, folder: str | Path, stem: str = "volume") -> dict:
    """Write a volume node as the worker's raw input: `<stem>.npy` (KJI) + `<stem>.json` (geometry).

    Returns:
        The request's `input` value: {"npy": path, "geometry": path}.

    Raises:
        ValueError: the node cannot be segmented (see `volume_arrays`); OSError: the files could
            not be written (nothing is left behind).
    """
    folder = Path(folder)
    voxels, matrix = volume_arrays(volume_node, copy=False)  # written at once: no copy of a large volume
    npy_path, geometry_path = folder / f"{stem}.npy", folder / f"{stem}.json"
    geometry = {"shape_kji": list(voxels.shape), "ijk_to_ras": matrix.tolist()}
    try:
        np.save(npy_path, voxels)
        geometry_path.write_text(json.dumps(geometry), encoding="utf-8")
    except BaseException:
        npy_path.unlink(missing_ok=True)
        geometry_path.unlink(missing_ok=True)
        raise
    return {"npy": str(npy_path), "geometry": str(geometry_path)}


def segment_name(prompt: str, max_chars: int = MAX_SEGMENT_NAME_CHARS) -> str:
    """A segment name from a prompt: whitespace collapsed, cut at a word boundary when long.

    Raises:
        ValueError: when the prompt is empty or whitespace only.
    """
    text = " ".join(prompt.split()).rstrip(".")
    if not text:
        raise ValueError(f"prompt must contain text, got {prompt!r}")
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def _unique_name(segmentation, name: str) -> str:
    existing = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    candidate, n = name, 2
    while candidate in existing:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def oriented_mask(mask_kji: np.ndarray, volume_node, segmentation_node, origin: tuple[int, int, int] = (0, 0, 0)):
    """A vtkOrientedImageData (0/1, uint8) holding a KJI mask cropped to its bounding
    box (an empty mask: one 0 voxel), in the segmentation node's coordinates: the volume's
    IJK-to-RAS, then the transform from the volume's parent transform to the segmentation's
    (none when both are under the same transform). The mask is the block of the volume's grid
    that starts at voxel `origin` (K, J, I); the extent keeps the volume's voxel indices."""
    from tevia.volume.bounds import nonzero_bounds

    image = slicer.vtkOrientedImageData()
    (k0, k1), (j0, j1), (i0, i1) = nonzero_bounds(mask_kji)
    ok, oj, oi = origin
    image.SetExtent(oi + i0, oi + i1 - 1, oj + j0, oj + j1 - 1, ok + k0, ok + k1 - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask_kji[k0:k1, j0:j1, i0:i1].ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    source, target = volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode()
    if source is not target:
        volume_to_segmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, volume_to_segmentation)
        slicer.vtkOrientedImageDataResample.TransformOrientedImage(image, volume_to_segmentation)
    return image


def segment_prompt(segment) -> str | None:
    """The prompt a segment was made from (its `PROMPT_TAG` tag), or None."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(PROMPT_TAG, value) else None


def segment_arrays(volume_node, segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A segment as arrays on its volume's grid, with its prompt.

    Returns:
        (voxels, ijk_to_ras, mask, prompt): voxels and mask of shape (K, J, I), the volume's
        4x4 IJK-to-RAS matrix, the prompt the segment was made from (or its name).

    Raises:
        ValueError: when the segment is not in the segmentation.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"segmentId {segment_id!r} is not in segmentation {segmentation_node.GetName()!r}")
    voxels, matrix = volume_arrays(volume_node)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    return voxels, matrix, mask, segment_prompt(segment) or segment.GetName()


def segment_ids(segmentation_node) -> list[str]:
    """The IDs of a segmentation node's segments, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _add_segmentation_beside(volume_node):
    """A new segmentation node for a volume: under the volume's parent transform (attached
    before the reference geometry is set, which already accounts for the transform between
    the two nodes) and in the volume's subject hierarchy folder (its study), so that DICOM SEG
    export finds the patient and study."""
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} TeViA"))
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is not None:
        volume_item = hierarchy.GetItemByDataNode(volume_node)
        if volume_item:
            parent, item = hierarchy.GetItemParent(volume_item), hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.SetItemParent(item, parent)
            else:  # Slicer's subject hierarchy plugins create the item at once; without them, create it
                hierarchy.CreateItem(parent, node)
    return node


def import_labelmap(labelmap_kji: np.ndarray, labels: dict[int, str], volume_node,
                    segmentation_node=None, terminology_logic=None,
                    mirror_sides: bool = False, origin: tuple[int, int, int] | None = None) -> tuple[object, list[str]]:
    """Add one segment per label to a segmentation node, with the volume as reference geometry.

    Existing segments are never changed; new segments get unique names, their prompt in the
    segment tag `PROMPT_TAG`, and the terminology entry and colour of what the prompt names
    (`terminology.code_prompt`: a finding with its anatomic region, an anatomical structure,
    or no code and a neutral colour). The mask lands at the volume's physical place even when
    the segmentation is under another parent transform. All or nothing: on any failure the
    segments added so far (and a node created here) are removed again.

    Args:
        labelmap_kji: integer array on the volume's (K, J, I) voxel grid: the whole grid (shape
            equal to the volume's voxel array), or, with `origin`, the block of it that starts
            there (voxels outside it are background); value v marks the voxels of `labels[v]`,
            0 is background.
        labels: label value -> prompt text.
        volume_node: the volume the labelmap was computed from (gives the geometry).
        segmentation_node: where to add the segments; a new node (under the volume's parent
            transform and subject hierarchy folder) is created when None.
        terminology_logic: see `terminology.code_prompt`.
        mirror_sides: the prompts' "left"/"right" name mirrored image halves (see
            `terminology.code_prompt`).
        origin: None (the labelmap is the whole grid), or the (K, J, I) index of the volume
            voxel that `labelmap_kji[0, 0, 0]` is.

    Returns:
        (segmentation_node, ids of the added segments in label order).

    Raises:
        ValueError: when the labelmap (at `origin`) does not lie inside the volume's grid, or
            labels is empty.
    """
    grid = volume_shape(volume_node)
    if origin is None:
        if tuple(labelmap_kji.shape) != grid:
            raise ValueError(f"labelmap_kji has shape {labelmap_kji.shape}, expected the volume's {grid}")
        origin = (0, 0, 0)
    elif labelmap_kji.ndim != 3 or len(origin) != 3 or any(
            o < 0 or o + n > v for o, n, v in zip(origin, labelmap_kji.shape, grid)):
        raise ValueError(f"labelmap_kji of shape {labelmap_kji.shape} at voxel {tuple(origin)} does not lie inside "
                         f"the volume's grid {grid}")
    if not labels:
        raise ValueError("labels must map at least one label value to a prompt, got {}")
    scene = volume_node.GetScene()
    created = segmentation_node is None
    if created:
        segmentation_node = _add_segmentation_beside(volume_node)
    segmentation = segmentation_node.GetSegmentation()
    added: list[str] = []
    single = (list(labels) == [1] and labelmap_kji.dtype == np.uint8 and labelmap_kji.size > 0
              and int(labelmap_kji.max()) <= 1)
    try:
        for value in sorted(labels):
            prompt = labels[value]
            coding = terminology.code_prompt(prompt, terminology_logic, mirror_sides)
            segment_id = segmentation.AddEmptySegment("", _unique_name(segmentation, segment_name(prompt)), coding.color)
            added.append(segment_id)
            segment = segmentation.GetSegment(segment_id)
            segment.SetTag(PROMPT_TAG, " ".join(prompt.split()))
            if coding.entry is not None:
                segment.SetTag(segment.GetTerminologyEntryTagName(), coding.entry)
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            # one label 1 in a 0/1 labelmap (every single-prompt answer): the labelmap is the mask,
            # without a second whole-volume array
            mask = (labelmap_kji.view(np.bool_) if single else labelmap_kji == value)
            if not mask.any():
                logger.warning("No voxels found for prompt %r: its segment is empty", prompt)
            elif not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    oriented_mask(mask, volume_node, segmentation_node, origin), segmentation_node, segment_id):
                raise RuntimeError(f"Slicer could not set the voxels of segment {prompt!r}")
    except Exception:
        for segment_id in added:
            segmentation.RemoveSegment(segment_id)
        if created:
            display_nodes = [segmentation_node.GetNthDisplayNode(i)
                             for i in range(segmentation_node.GetNumberOfDisplayNodes())]
            for node in [*display_nodes, segmentation_node]:
                scene.RemoveNode(node)
        raise
    return segmentation_node, added
