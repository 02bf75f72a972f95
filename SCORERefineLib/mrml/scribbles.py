"""Scribbles in the scene: two segments painted with the Segment Editor, exported to the case.

A scribble segmentation (role ``scribbles``) holds two segments, "scribble: inside" (label 1,
strokes on the structure) and "scribble: outside" (label 2, strokes just outside it). A person
paints them with the Segment Editor's Paint effect where the initial segment is wrong; this module
creates the node and its segments, reads them back as the 0/1/2 map of ``scribbles.nii.gz``
(:mod:`SCORERefineLib.scribbles`), counts the strokes and opens the Segment Editor on them.

Part of :mod:`SCORERefineLib.mrml`, the only engine package that imports ``slicer``."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

import slicer

from ..errors import InputError
from ..imageio import Geometry, Volume
from ..scribbles import BACKGROUND, FOREGROUND, NONE, stroke_summary
from .conversion import (ROLE_ATTRIBUTE, VOLUME_REFERENCE_ROLE, add_mask_segment, new_segmentation_node,
                         segment_ids, segment_mask, volume_from_node)

SCRIBBLE_ROLE = "scribbles"
#: label -> (segment name, colour)
SCRIBBLE_SEGMENTS = {FOREGROUND: ("scribble: inside", (0.1, 0.85, 0.2)),
                     BACKGROUND: ("scribble: outside", (0.95, 0.2, 0.75))}
#: the Segment Editor effect strokes are drawn with
PAINT_EFFECT = "Paint"


@dataclass
class ScribbleSegments:
    node: object            # the scribble segmentation node
    inside_id: str          # segment "scribble: inside" (label 1)
    outside_id: str         # segment "scribble: outside" (label 2)
    created: bool           # True when the node or a segment was made now


def _find_by_name(node, name: str) -> Optional[str]:
    seg = node.GetSegmentation()
    for sid in segment_ids(node):
        if seg.GetSegment(sid).GetName().strip().lower() == name:
            return sid
    return None


def find_scribble_node(scene, volume_node=None):
    """The scribble segmentation of ``volume_node`` (the latest one when None), or None."""
    found = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) != SCRIBBLE_ROLE:
            continue
        ref = node.GetNodeReference(VOLUME_REFERENCE_ROLE)
        if volume_node is None or ref is volume_node:
            found = node
    return found


def ensure_scribble_segments(scene, volume_node, node=None) -> ScribbleSegments:
    """The volume's scribble segmentation with its two segments, created when missing.

    ``node``: the one the panel points at (else the volume's own, else a new one named
    "<volume> scribbles"). Strokes already painted are kept.
    """
    if volume_node is None:
        raise InputError("no volume selected: pick the CT in step 1 (Input) before drawing scribbles.")
    created = False
    if node is not None and node.GetNodeReference(VOLUME_REFERENCE_ROLE) not in (None, volume_node):
        node = None                      # another CT's strokes (an earlier case): leave them
    if node is None:
        node = find_scribble_node(scene, volume_node)
    if node is None:
        node = new_segmentation_node(scene, f"{volume_node.GetName()} scribbles", volume_node)
        created = True
    node.SetAttribute(ROLE_ATTRIBUTE, SCRIBBLE_ROLE)
    node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = {}
    for label, (name, colour) in SCRIBBLE_SEGMENTS.items():
        sid = _find_by_name(node, name)
        if sid is None:
            sid = node.GetSegmentation().AddEmptySegment("", name, list(colour))
            created = True
        ids[label] = sid
    return ScribbleSegments(node, ids[FOREGROUND], ids[BACKGROUND], created)


def scribbles_from_segmentation(node, target: Geometry) -> tuple[Volume, int]:
    """The 0/1/2 scribble map on ``target``'s grid, and the number of voxels painted as both
    inside and outside (left at 0: a stroke that says both says nothing)."""
    if node is None:
        raise InputError("no scribbles in the scene: click 'Draw scribbles' (step 3b) first.")
    out = np.zeros(target.shape, dtype=np.uint8)
    masks = {}
    for label, (name, _colour) in SCRIBBLE_SEGMENTS.items():
        sid = _find_by_name(node, name)
        if sid is None:
            raise InputError(f"segmentation '{node.GetName()}' has no segment '{name}'; click "
                             f"'Draw scribbles' (step 3b) to create it.")
        masks[label] = segment_mask(node, sid, target).mask.array != 0
    both = masks[FOREGROUND] & masks[BACKGROUND]
    out[masks[FOREGROUND]] = FOREGROUND
    out[masks[BACKGROUND]] = BACKGROUND
    out[both] = NONE
    return Volume(out, target), int(both.sum())


def count_scribbles(node, volume_node) -> dict:
    """:func:`~SCORERefineLib.scribbles.stroke_summary` of the painted strokes on the CT's grid,
    plus ``conflicts`` (voxels painted as both)."""
    image = volume_from_node(volume_node)
    labels, conflicts = scribbles_from_segmentation(node, image.geometry)
    return dict(stroke_summary(labels.array), conflicts=conflicts)


def scribbles_to_segmentation(scene, volume_node, labels: Volume, node=None) -> ScribbleSegments:
    """Put a 0/1/2 map (e.g. a case's ``scribbles.nii.gz``) into the two scribble segments."""
    node = node if node is not None else new_segmentation_node(
        scene, f"{volume_node.GetName()} scribbles", volume_node)
    seg = node.GetSegmentation()
    for label, (name, _colour) in SCRIBBLE_SEGMENTS.items():
        sid = _find_by_name(node, name)
        if sid is not None:
            seg.RemoveSegment(sid)
    for label, (name, colour) in SCRIBBLE_SEGMENTS.items():
        mask = (labels.array == label).astype(np.uint8)
        if mask.any():
            add_mask_segment(node, labels.with_array(mask), name, color=colour)
        else:
            seg.AddEmptySegment("", name, list(colour))
    return ensure_scribble_segments(scene, volume_node, node)


def open_segment_editor(segments: ScribbleSegments, volume_node, label: int = FOREGROUND) -> bool:
    """Inside Slicer: switch to the Segment Editor on the scribble segmentation, the segment of
    ``label`` selected and the Paint effect active. Returns False where there is no Segment
    Editor (headless use, tests): the segments exist, paint them with any editor."""
    modules = getattr(slicer, "modules", None)
    if modules is None or not hasattr(modules, "segmenteditor") or not hasattr(slicer.util, "selectModule"):
        return False
    slicer.util.selectModule("SegmentEditor")
    editor = modules.segmenteditor.widgetRepresentation().self().editor
    editor.setSegmentationNode(segments.node)
    if hasattr(editor, "setSourceVolumeNode"):      # Slicer >= 5.4
        editor.setSourceVolumeNode(volume_node)
    else:
        editor.setMasterVolumeNode(volume_node)
    editor.setCurrentSegmentID(segments.inside_id if label == FOREGROUND else segments.outside_id)
    editor.setActiveEffectByName(PAINT_EFFECT)
    return True
