"""Refine a segment in place with the initial kept in a hidden backup node, and undo.

Part of :mod:`SCORERefineLib.mrml`, the only engine package that imports ``slicer``."""


import colorsys
import json
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from ..errors import InputError
from ..imageio import Geometry, Volume, resample_mask_to

#: RAS <-> LPS flip (its own inverse)



from .conversion import (volume_from_node, _oriented_image, find_segment, segment_volume, segment_mask, ROLE_ATTRIBUTE, BACKUP_REFERENCE_ROLE)  # noqa: F401


# --------------------------------------------------------------------------- refine in place, undo

@dataclass
class RefineResult:
    voxels_added: int
    voxels_removed: int
    volume_before_ml: float
    volume_after_ml: float
    resampled: bool
    message: str = ""
    per_region: dict = field(default_factory=dict)   # region label -> (voxels added, removed)

    def summary(self) -> str:
        text = (f"{self.voxels_added} voxels added, {self.voxels_removed} removed; volume "
                f"{self.volume_before_ml:.2f} ml -> {self.volume_after_ml:.2f} ml")
        text += f" ({self.message})" if self.message else ""
        if self.per_region:
            text += "\nPer region (added/removed): " + ", ".join(
                f"{'outside' if k == 0 else k}: +{a}/-{r}" for k, (a, r) in self.per_region.items())
        return text


def _backup_node(scene, segmentation_node, create: bool):
    node = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE)
    if node is None and create:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                       f"{segmentation_node.GetName()} (SCORERefine initial)")
        # No display node: invisible in the views, but listed (and saved) like any other node,
        # so Slicer's File > Save keeps it and Undo still works after reopening the scene.
        node.SetAttribute(ROLE_ATTRIBUTE, "initial-backup")
        segmentation_node.SetNodeReferenceID(BACKUP_REFERENCE_ROLE, node.GetID())
    return node


def has_backup(segmentation_node, segment_id: str) -> bool:
    node = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE)
    return node is not None and node.GetSegmentation().GetSegment(segment_id) is not None


def backup_segment(segmentation_node, segment_id: str) -> None:
    """Keep a copy of the segment as it is now (once: later refinements keep the first copy)."""
    if has_backup(segmentation_node, segment_id):
        return
    scene = segmentation_node.GetScene()
    backup = _backup_node(scene, segmentation_node, create=True)
    src = segmentation_node.GetSegmentation().GetSegment(segment_id)
    vol = segment_volume(segmentation_node, segment_id)
    sid = backup.GetSegmentation().AddEmptySegment(segment_id, src.GetName(), list(src.GetColor()))
    if vol is not None:
        L = slicer.vtkSlicerSegmentationsModuleLogic
        L.SetBinaryLabelmapToSegment(_oriented_image(vol), backup, sid, L.MODE_REPLACE)


def apply_refined_mask(segmentation_node, segment_id: str, refined: Volume) -> RefineResult:
    """Write ``refined`` (a mask on the volume grid) into the segment, keeping the initial one for undo."""
    target = refined.geometry
    before = segment_mask(segmentation_node, segment_id, target)
    backup_segment(segmentation_node, segment_id)
    new = (refined.array != 0).astype(np.uint8)
    old = before.mask.array
    voxel_ml = target.voxel_volume_mm3 / 1000.0
    L = slicer.vtkSlicerSegmentationsModuleLogic
    if not L.SetBinaryLabelmapToSegment(_oriented_image(refined.with_array(new)), segmentation_node,
                                        segment_id, L.MODE_REPLACE):
        raise InputError("writing the refined mask into the segment failed.")
    return RefineResult(voxels_added=int(np.sum((new == 1) & (old == 0))),
                        voxels_removed=int(np.sum((new == 0) & (old == 1))),
                        volume_before_ml=float(old.sum()) * voxel_ml,
                        volume_after_ml=float(new.sum()) * voxel_ml,
                        resampled=before.resampled, message=before.message)


def undo_refinement(segmentation_node, segment_id: str) -> bool:
    """Restore the segment as it was before the first refinement. False when there is nothing to undo."""
    backup = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE)
    if backup is None or backup.GetSegmentation().GetSegment(segment_id) is None:
        return False
    vol = segment_volume(backup, segment_id)
    L = slicer.vtkSlicerSegmentationsModuleLogic
    if vol is None:
        L.ClearSegment(segmentation_node, segment_id)
    else:
        L.SetBinaryLabelmapToSegment(_oriented_image(vol), segmentation_node, segment_id,
                                     L.MODE_REPLACE)
    backup.GetSegmentation().RemoveSegment(segment_id)
    if backup.GetSegmentation().GetNumberOfSegments() == 0:
        segmentation_node.RemoveNodeReferenceIDs(BACKUP_REFERENCE_ROLE)
        backup.GetScene().RemoveNode(backup)
    return True


RefineFunction = Callable[[Volume, Volume], Volume]


def model_refiner(model_path, device: str = "auto", also=(), tta: bool = True) -> RefineFunction:
    """A refine function backed by a trained checkpoint (loaded once), with the same do-no-harm
    guard and fragment rule as ``scorerefine refine`` (:class:`~..refiners.ModelRefiner`; this
    path once called the network alone, so a refinement run in Slicer's process was not
    guarded). ``also``: more checkpoints of the same setting, averaged (an ensemble); ``tta``:
    test-time augmentation (the default; False: one network pass per window)."""
    from ..refiners import ModelRefiner

    return ModelRefiner(model_path, device=device, also=also, tta=tta)


def refine_segment(volume_node, segmentation_node, segment_id: str, refine: RefineFunction) -> RefineResult:
    """Step 6: refine the segment in place (its initial kept for :func:`undo_refinement`)."""
    image = volume_from_node(volume_node)
    segment_id = find_segment(segmentation_node, segment_id)
    source = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE) \
        if has_backup(segmentation_node, segment_id) else segmentation_node
    initial = segment_mask(source, segment_id, image.geometry)   # always refine the initial mask
    if not initial.mask.array.any():
        raise InputError("the segment to refine is empty; pick the humerus segment.")
    refined = refine(image.with_array(image.array.astype(np.float32)), initial.mask)
    if refined.array.shape != image.array.shape:
        raise InputError("the refiner returned a mask on another grid than the volume.")
    if not refined.geometry.matches(image.geometry):
        raise InputError("the refiner returned a mask on another grid than the volume.")
    result = apply_refined_mask(segmentation_node, segment_id, Volume(refined.array, image.geometry))
    if initial.message and not result.message:
        result.message = initial.message
    result.resampled = result.resampled or initial.resampled
    return result


# --------------------------------------------------------------------------- refine in the background

@dataclass
class PreparedRefine:
    """Inputs written for ``scorerefine refine --image --mask --out`` (run by a BackgroundJob)."""

    command: list
    workdir: object
    out: object
    geometry: Geometry
    initial: np.ndarray
    message: str = ""


def prepare_refine(volume_node, segmentation_node, segment_id: str, model, device: str = "auto",
                   workdir=None, also=(), tta: bool = True) -> PreparedRefine:
    """Write the CT and the initial segment (its backup when refined before) for the refine command
    (``also``: more checkpoints averaged with ``model``, ``--also-model``; ``tta=False``:
    ``--no-tta``).

    Uncompressed NIfTI: writing is what the GUI thread waits for, the refinement runs elsewhere.
    """
    import tempfile
    from pathlib import Path

    from ..imageio import write_volume
    from ..jobs import refine_command

    image = volume_from_node(volume_node)
    segment_id = find_segment(segmentation_node, segment_id)
    source = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE) \
        if has_backup(segmentation_node, segment_id) else segmentation_node
    initial = segment_mask(source, segment_id, image.geometry)
    if not initial.mask.array.any():
        raise InputError("the segment to refine is empty; pick the humerus segment.")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="scorerefine-refine-"))
    work.mkdir(parents=True, exist_ok=True)
    ct = write_volume(image, work / "ct.nii", dtype=np.float32)
    mask = write_volume(initial.mask, work / "initial.nii", dtype=np.uint8)
    out = work / "refined.nii"
    command = refine_command(ct, mask, out, model, device, also=also, tta=tta)
    return PreparedRefine(command, work, out, image.geometry, initial.mask.array.copy(), initial.message)


def change_per_region(before: np.ndarray, after: np.ndarray, regions: Optional[np.ndarray]) -> dict:
    """Voxels added and removed in each region label (0 = outside every region)."""
    added = (after != 0) & (before == 0)
    removed = (after == 0) & (before != 0)
    labels = regions if regions is not None else np.zeros(before.shape, dtype=np.int16)
    out = {}
    for k in sorted(set(np.unique(labels[added | removed]).tolist())):
        sel = labels == k
        out[int(k)] = (int(np.sum(added & sel)), int(np.sum(removed & sel)))
    return out


def finish_refine(prepared: PreparedRefine, segmentation_node, segment_id: str, regions=None) -> RefineResult:
    """Read the refined mask the command wrote and put it into the segment (undo keeps the initial)."""
    import shutil

    from ..imageio import read_mask

    try:
        refined = read_mask(prepared.out)
        if refined.array.shape != prepared.geometry.shape:
            raise InputError("the refiner returned a mask on another grid than the volume.")
        result = apply_refined_mask(segmentation_node, find_segment(segmentation_node, segment_id),
                                    Volume((refined.array != 0).astype(np.uint8), prepared.geometry))
        result.per_region = change_per_region(prepared.initial, refined.array, regions)
        if prepared.message and not result.message:
            result.message = prepared.message
        return result
    finally:
        shutil.rmtree(prepared.workdir, ignore_errors=True)
