"""Corrective clicks as markups: two point lists per TeViA segment, and where their points lie.

Each segment that gets clicks has two `vtkMRMLMarkupsFiducialNode` lists, found again by their
attributes: positive points (green, "this belongs to the segment") and negative points (red,
"this does not"). A point is placed in world coordinates; the worker is sent its position in
the volume's own RAS frame (the volume's parent transform undone), because the worker gets the
volume's own IJK-to-RAS matrix (tevia/PROTOCOL.md, "Corrective clicks").

A click belongs to the slice nearest to it along the request's slice axis, cut the way the
worker cuts the volume (`training_export.worker_layout`, the engine's `slice_layout`); a point
outside the volume is refused here with the same rule the worker applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from TeViASegmentLib import scene, training_export

__all__ = ["SEGMENTATION_ATTRIBUTE", "SEGMENT_ATTRIBUTE", "POSITIVE_ATTRIBUTE", "POSITIVE_COLOR", "NEGATIVE_COLOR",
           "PlacedClick", "SliceLocation", "click_lists", "placed_clicks", "volume_ras", "locate_click",
           "start_placement", "stop_placement", "placing"]

SEGMENTATION_ATTRIBUTE = "TeViA.ClickSegmentation"
"""Attribute of a click list: the ID of the segmentation node its segment is in."""
SEGMENT_ATTRIBUTE = "TeViA.ClickSegment"
"""Attribute of a click list: the ID of its segment."""
POSITIVE_ATTRIBUTE = "TeViA.ClickPositive"
"""Attribute of a click list: "1" for positive points, "0" for negative ones."""
POSITIVE_COLOR = (0.2, 0.85, 0.2)
NEGATIVE_COLOR = (0.95, 0.2, 0.2)


@dataclass(frozen=True)
class PlacedClick:
    """One placed point: its list and ID (`GetNthControlPointID`), its RAS position in the
    volume's own frame, and its role."""

    list_id: str
    point_id: str
    ras: tuple[float, float, float]
    positive: bool

    def request(self) -> dict:
        """The click as a segment request carries it (PROTOCOL.md)."""
        return {"ras": list(self.ras), "positive": self.positive}


@dataclass(frozen=True)
class SliceLocation:
    """The slice a click lies on: its index along the IJK axis `refined_axis` (0 = I, 1 = J,
    2 = K, the worker's convention)."""

    refined_axis: int
    index: int


def _lists_of(segmentation_node, segment_id: str) -> dict[bool, object]:
    scene_ = segmentation_node.GetScene()
    found = {}
    nodes = scene_.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if (node.GetAttribute(SEGMENTATION_ATTRIBUTE) == segmentation_node.GetID()
                and node.GetAttribute(SEGMENT_ATTRIBUTE) == segment_id):
            found.setdefault(node.GetAttribute(POSITIVE_ATTRIBUTE) == "1", node)
    return found


def click_lists(segmentation_node, segment_id: str) -> tuple[object, object]:
    """The (positive, negative) point lists of a segment, created (coloured, named after the
    segment) when it has none.

    Raises:
        ValueError: a segment that is not in the segmentation.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"segmentId {segment_id!r} is not in segmentation {segmentation_node.GetName()!r}")
    found = _lists_of(segmentation_node, segment_id)
    for positive in (True, False):
        if positive in found:
            continue
        scene_ = segmentation_node.GetScene()
        sign = "+" if positive else "-"
        node = scene_.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                        scene_.GenerateUniqueName(f"{segment.GetName()} clicks {sign}"))
        node.SetAttribute(SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())
        node.SetAttribute(SEGMENT_ATTRIBUTE, segment_id)
        node.SetAttribute(POSITIVE_ATTRIBUTE, "1" if positive else "0")
        node.SetControlPointLabelFormat(f"{sign}%d")
        node.CreateDefaultDisplayNodes()
        color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        found[positive] = node
    return found[True], found[False]


def volume_ras(volume_node, world: tuple[float, float, float]) -> tuple[float, float, float]:
    """A world point in the volume's own RAS frame (its parent transform undone)."""
    parent = volume_node.GetParentTransformNode()
    if parent is None:
        return tuple(float(v) for v in world)
    world_to_volume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, world_to_volume)
    return tuple(float(v) for v in world_to_volume.TransformPoint(list(world)))


def placed_clicks(markups_node, volume_node) -> list[PlacedClick]:
    """The points of a click list whose position is defined (placed, not a preview), in order."""
    positive = markups_node.GetAttribute(POSITIVE_ATTRIBUTE) == "1"
    clicks = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, world)
        clicks.append(PlacedClick(markups_node.GetID(), markups_node.GetNthControlPointID(n),
                                  volume_ras(volume_node, world), positive))
    return clicks


def locate_click(volume_node, ras: tuple[float, float, float], slice_axis: str = "axial") -> SliceLocation:
    """The slice (cut as the worker cuts it) that a point in the volume's RAS frame lies on.

    Raises:
        ValueError: the point lies outside the volume (what to do: place it on the image).
    """
    matrix = scene.ijk_to_ras(volume_node)
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))  # K, J, I
    layout = training_export.worker_layout(matrix, shape, slice_axis)
    i, j, k = (np.linalg.inv(matrix) @ np.array([*ras, 1.0]))[:3]
    index_kji = (k, j, i)
    slice_axis_kji, row_axis, column_axis = layout.axes
    slice_index = int(round(index_kji[slice_axis_kji]))  # the worker's rule (tevia.volume.clicks.locate_clicks)
    inside = (0 <= slice_index < shape[slice_axis_kji]
              and all(-0.5 <= index_kji[a] <= shape[a] - 0.5 for a in (row_axis, column_axis)))
    if not inside:
        ras_text = ", ".join(f"{v:.1f}" for v in ras)
        raise ValueError(f"The click at RAS ({ras_text}) lies outside volume {volume_node.GetName()!r} "
                         f"(voxel index I, J, K = {i:.1f}, {j:.1f}, {k:.1f}; size {shape[2]} x {shape[1]} x "
                         f"{shape[0]}): place clicks on the image")
    return SliceLocation(2 - slice_axis_kji, slice_index)


def start_placement(app_logic, markups_node) -> None:
    """Put the views in persistent point placement into `markups_node` (Slicer's Place mode)."""
    selection = app_logic.GetSelectionNode()
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(markups_node.GetID())
    interaction = app_logic.GetInteractionNode()
    interaction.SetPlaceModePersistence(1)
    interaction.SetCurrentInteractionMode(interaction.Place)


def stop_placement(app_logic) -> None:
    """Leave Place mode (the views go back to their normal mouse interaction)."""
    interaction = app_logic.GetInteractionNode()
    interaction.SetPlaceModePersistence(0)
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)


def placing(app_logic) -> bool | None:
    """True / False while points are placed into a positive / negative click list, else None."""
    interaction = app_logic.GetInteractionNode()
    if interaction.GetCurrentInteractionMode() != interaction.Place:
        return None
    scene_ = interaction.GetScene()
    node = scene_.GetNodeByID(app_logic.GetSelectionNode().GetActivePlaceNodeID() or "") if scene_ else None
    if node is None or node.GetAttribute(POSITIVE_ATTRIBUTE) is None:
        return None
    return node.GetAttribute(POSITIVE_ATTRIBUTE) == "1"
