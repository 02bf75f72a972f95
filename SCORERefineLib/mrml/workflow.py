"""The panel's steps as functions of nodes (split, restore, save and load a case).

Part of :mod:`SCORERefineLib.mrml`, the only engine package that imports ``slicer``."""


import colorsys
import json
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from ..errors import InputError
from ..imageio import Geometry, Volume, resample_mask_to

#: RAS <-> LPS flip (its own inverse)



from .conversion import (volume_to_node, volume_from_node, new_segmentation_node, segment_ids, find_segment, add_mask_segment, segment_mask, regions_to_segmentation, region_segment_ids, regions_from_segmentation, SESSION_ATTRIBUTE, BACKUP_REFERENCE_ROLE, VOLUME_REFERENCE_ROLE)  # noqa: F401
from .refine import (has_backup)  # noqa: F401
from .storage import (store_session_json, load_session_json, find_session_node)  # noqa: F401


# --------------------------------------------------------------------------- workflow (scene level)
# The panel's steps as functions of nodes, so pytest reaches every decision the panel makes.

@dataclass
class SplitResult:
    regions_node: object
    regions: Volume
    n_regions: int
    message: str          # e.g. that the segment was resampled onto the CT grid


def split_segment_into_regions(scene, volume_node, segmentation_node, segment_id: str,
                               params=None, regions_node=None) -> SplitResult:
    """Step 2: split a segment's boundary band into numbered, coloured region segments.

    The initial segment stays where it is (and visible); the regions go to ``regions_node``
    (a new segmentation "<segment> regions" by default).
    """
    from ..regions import RegionParams, make_regions

    params = RegionParams() if params is None else params
    params.validate()
    image = volume_from_node(volume_node)
    segment_id = find_segment(segmentation_node, segment_id)
    got = segment_mask(segmentation_node, segment_id, image.geometry)
    if not got.mask.array.any():
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        raise InputError(f"segment '{name}' is empty on the volume's grid; pick the segment that "
                         f"holds the humerus (or check that it overlaps the CT).")
    regions = make_regions(got.mask, params)
    if regions_node is None:
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        regions_node = new_segmentation_node(scene, f"{name} regions", volume_node)
    node = regions_to_segmentation(scene, regions, node=regions_node, reference_volume_node=volume_node)
    node.SetAttribute("SCORERefine.RegionParams", json.dumps(params.info()))
    node.SetAttribute("SCORERefine.Source", f"{segmentation_node.GetID()}/{segment_id}")
    node.SetAttribute(SESSION_ATTRIBUTE, "")  # a new split invalidates an old rating session
    return SplitResult(node, regions, len(region_segment_ids(node)), got.message)


def region_params_of(regions_node) -> dict:
    text = regions_node.GetAttribute("SCORERefine.RegionParams") if regions_node is not None else None
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def attach_session(session, regions_node) -> Callable:
    """Keep ``session`` stored in the scene: now and after every change. Returns the observer."""
    store_session_json(regions_node, session.to_json())

    def observer(_event, s):
        store_session_json(regions_node, s.to_json())
    session.add_observer(observer)
    return observer


def restore_session(scene, volume_node=None, regions_node=None):
    """The rating session stored in the scene (after a module reload or scene load), or None.

    ``regions_node``: the regions segmentation the panel points at (else the latest one holding
    a session). Returns ``(session, regions_node)``. Raises FeedbackError when the stored text is
    broken.
    """
    from ..session import RatingSession

    node = regions_node if load_session_json(regions_node) else find_session_node(scene)
    if node is None:
        return None, None
    ref = node.GetNodeReference(VOLUME_REFERENCE_ROLE) or volume_node  # the volume it was split on
    if ref is None:
        return None, node
    grid = volume_from_node(ref).geometry
    regions = regions_from_segmentation(node, grid)
    return RatingSession.from_json(load_session_json(node), regions), node


def save_case_from_scene(dataset, case_id: str, volume_node, segmentation_node, segment_id: str,
                         regions_node, session=None, scribbles_node=None):
    """Step 4: write image, initial, regions (and the ratings) into ``dataset/cases/<case_id>``.

    The initial mask saved is the segment as rated: its backup when it was refined since.
    ``scribbles_node``: the scribble segmentation (step 3b); when it holds strokes they are
    written as ``scribbles.nii.gz`` (validated, atomic); without strokes the file is left as it is.
    """
    from ..case import write_case

    image = volume_from_node(volume_node)
    segment_id = find_segment(segmentation_node, segment_id)
    backup = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE)
    source = backup if has_backup(segmentation_node, segment_id) else segmentation_node
    initial = segment_mask(source, segment_id, image.geometry).mask
    regions = regions_from_segmentation(regions_node, image.geometry) if regions_node is not None else None
    if session is not None and regions is not None:
        if sorted(int(v) for v in np.unique(regions.array) if v > 0) != session.labels:
            raise InputError("the regions in the scene are not the ones being rated; split again "
                             "or reload the case before saving.")
    scribbles = None
    if scribbles_node is not None:
        from .scribbles import scribbles_from_segmentation
        labels, _conflicts = scribbles_from_segmentation(scribbles_node, image.geometry)
        scribbles = labels if labels.array.any() else None
    case = write_case(dataset, case_id, image.with_array(image.array), initial, regions,
                      scribbles=scribbles)
    if session is not None:
        if session.case_id != case_id:
            raise InputError(f"the ratings belong to case '{session.case_id}', not '{case_id}'.")
        session.save_to_case(case.folder)
    return case


@dataclass
class LoadedCase:
    case: object
    volume_node: object
    segmentation_node: object
    segment_id: str
    regions_node: object
    session: object
    scribbles_node: object = None


def load_case_into_scene(scene, case, rater: str = "clinician") -> LoadedCase:
    """Step 4 "Next case": the case's image, initial segment, regions and this rater's ratings."""
    from ..session import RatingSession

    image = case.load_image()
    initial = case.load_initial(like=image)
    vnode = volume_to_node(scene, image, case.case_id)
    seg = new_segmentation_node(scene, f"{case.case_id} initial", vnode)
    sid = add_mask_segment(seg, initial, "initial", color=(0.95, 0.85, 0.3))
    regions_node, session = None, None
    if case.has_regions:
        regions = case.load_regions(like=image)
        regions_node = regions_to_segmentation(scene, regions, name=f"{case.case_id} regions",
                                               reference_volume_node=vnode)
        session = RatingSession.from_case(case, rater=rater)
        attach_session(session, regions_node)
    scribbles_node = None
    if case.has_scribbles:
        from .scribbles import scribbles_to_segmentation
        scribbles_node = scribbles_to_segmentation(scene, vnode, case.load_scribbles(like=image)).node
    return LoadedCase(case, vnode, seg, sid, regions_node, session, scribbles_node)
