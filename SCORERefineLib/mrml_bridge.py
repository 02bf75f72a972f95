"""The bridge between Slicer's MRML scene and the engine's numpy :class:`~.imageio.Volume`.

This is the only engine module that imports ``slicer`` (it works in Slicer and, for tests, with
the Qt-free ``slicer-core`` wheel). Everything here takes the scene or nodes explicitly and never
touches ``slicer.mrmlScene``, ``slicer.modules`` or ``slicer.app``, so the same code runs in both.

Coordinates: MRML nodes store an IJK-to-RAS matrix; the engine's :class:`~.imageio.Geometry` is
ITK's LPS. RAS = diag(-1, -1, 1) * LPS, for positions and for direction columns alike.

What lives here:

- volume and labelmap nodes <-> :class:`Volume` (:func:`volume_to_node`, :func:`volume_from_node`);
- segments <-> masks on a volume's grid (:func:`add_mask_segment`, :func:`segment_mask`, which
  resamples a segment stored on another grid and says so in :class:`SegmentMask`);
- regions as a segmentation with one numbered, coloured segment per region
  (:func:`regions_to_segmentation`, :func:`regions_from_segmentation`);
- writing a refined mask into a segment in place, with the initial segment kept in a hidden
  backup node so :func:`undo_refinement` restores it exactly (:func:`apply_refined_mask`);
- the rating session JSON stored as a node attribute, so saving and reloading the scene keeps it
  (:func:`store_session_json`, :func:`load_session_json`).
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from .errors import InputError
from .imageio import Geometry, Volume, resample_mask_to

#: RAS <-> LPS flip (its own inverse)
_FLIP = np.diag([-1.0, -1.0, 1.0])

SESSION_ATTRIBUTE = "SCORERefine.Session"
REGION_TAG = "SCORERefine.Region"
ROLE_ATTRIBUTE = "SCORERefine.Role"
BACKUP_REFERENCE_ROLE = "SCORERefineInitialBackup"
VOLUME_REFERENCE_ROLE = "SCORERefineVolume"

_LOGICS: dict[str, object] = {}


def _binary_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


# --------------------------------------------------------------------------- scene set-up

def ensure_segmentation_logic(scene) -> None:
    """Register the segmentations logic with ``scene`` once (conversion rules, storage).

    Inside Slicer the application already did this; calling it again is harmless.
    """
    # keyed by the VTK object's address: the logic keeps the scene alive, so it is not reused
    key = scene.GetAddressAsString("vtkMRMLScene")
    if key in _LOGICS:
        return
    try:  # inside the Slicer application the module logic exists already
        if getattr(slicer, "mrmlScene", None) is scene and hasattr(slicer, "modules"):
            _LOGICS[key] = slicer.modules.segmentations.logic()
            return
    except AttributeError:
        pass
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    _LOGICS[key] = logic


def new_scene():
    """A fresh MRML scene ready for segmentations (tests and headless use)."""
    scene = slicer.vtkMRMLScene()
    ensure_segmentation_logic(scene)
    return scene


# --------------------------------------------------------------------------- geometry

def geometry_to_ijk_to_ras(geometry: Geometry) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of an (LPS) :class:`Geometry`."""
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = _FLIP @ d @ np.diag(geometry.spacing)
    m[:3, 3] = _FLIP @ np.asarray(geometry.origin, dtype=float)
    return m


def geometry_from_ijk_to_ras(matrix: np.ndarray, size_xyz: Sequence[int],
                             first_index: Sequence[int] = (0, 0, 0)) -> Geometry:
    """The LPS :class:`Geometry` of a grid given its IJK-to-RAS matrix.

    ``first_index``: the IJK index of array element (0, 0, 0) (a non-zero image extent start).
    """
    m = np.asarray(matrix, dtype=float)
    a = m[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    if np.any(spacing <= 0):
        raise InputError("the node's IJK-to-RAS matrix has a zero spacing column; "
                         "the volume geometry is broken, reload the volume.")
    d_ras = a / spacing
    origin_ras = a @ np.asarray(first_index, dtype=float) + m[:3, 3]
    return Geometry(size=tuple(int(v) for v in size_xyz),
                    spacing=tuple(float(v) for v in spacing),
                    origin=tuple(float(v) for v in _FLIP @ origin_ras),
                    direction=tuple(float(v) for v in (_FLIP @ d_ras).ravel()))


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def _np_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _image_data(array: np.ndarray, extent_start: Sequence[int] = (0, 0, 0)) -> vtk.vtkImageData:
    arr = np.ascontiguousarray(array)
    nz, ny, nx = arr.shape
    image = vtk.vtkImageData()
    i0, j0, k0 = (int(v) for v in extent_start)
    image.SetExtent(i0, i0 + nx - 1, j0, j0 + ny - 1, k0, k0 + nz - 1)
    scalars = numpy_support.numpy_to_vtk(arr.ravel(order="C"), deep=True,
                                         array_type=numpy_support.get_vtk_array_type(arr.dtype))
    image.GetPointData().SetScalars(scalars)
    return image


def _array_of(image) -> np.ndarray:
    ext = image.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    if min(shape) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()


# --------------------------------------------------------------------------- volumes

def volume_to_node(scene, volume: Volume, name: str = "Volume", labelmap: bool = False, node=None,
                   display: bool = True):
    """Add (or update ``node``) a scalar or labelmap volume node holding ``volume``."""
    if node is None:
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(cls, name)
        if display:
            node.CreateDefaultDisplayNodes()
    node.SetIJKToRASMatrix(_vtk_matrix(geometry_to_ijk_to_ras(volume.geometry)))
    node.SetAndObserveImageData(_image_data(volume.array))
    return node


def volume_from_node(node) -> Volume:
    """The array ``(z, y, x)`` and LPS geometry of a volume node (a copy)."""
    if node is None:
        raise InputError("no volume selected: choose the CT volume in step 1 (Input) first.")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"volume '{node.GetName()}' has no image data; load the CT again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                         f"components per voxel; choose a scalar (grey-level) CT volume.")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    if node.GetParentTransformNode() is not None:
        raise InputError(f"volume '{node.GetName()}' is under a transform; harden the transform "
                         f"(Data module, right-click > Harden transform) before using it here.")
    ext = image.GetExtent()
    geom = geometry_from_ijk_to_ras(_np_matrix(m), (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1,
                                                    ext[5] - ext[4] + 1), (ext[0], ext[2], ext[4]))
    return Volume(_array_of(image), geom)


# --------------------------------------------------------------------------- segments

def _oriented_image(volume: Volume, extent_start=(0, 0, 0)):
    image = slicer.vtkOrientedImageData()
    arr = np.ascontiguousarray(volume.array)
    image.ShallowCopy(_image_data(arr))
    image.SetImageToWorldMatrix(_vtk_matrix(geometry_to_ijk_to_ras(volume.geometry)))
    return image


def _oriented_to_volume(image) -> Optional[Volume]:
    """An oriented image (segment labelmap) as a Volume on its own grid; None when empty."""
    ext = image.GetExtent()
    if ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
        return None
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    size = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
    geom = geometry_from_ijk_to_ras(_np_matrix(m), size, (ext[0], ext[2], ext[4]))
    return Volume(_array_of(image), geom)


def new_segmentation_node(scene, name: str = "Segmentation", reference_volume_node=None):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    return node


def segment_ids(segmentation_node) -> list[str]:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def find_segment(segmentation_node, name_or_id: str) -> str:
    """The ID of the segment with this ID or name (case-insensitive); InputError naming the choices."""
    if segmentation_node is None:
        raise InputError("no segmentation selected: pick a segmentation (or run TotalSegmentator) "
                         "in step 1 (Input).")
    seg = segmentation_node.GetSegmentation()
    ids = segment_ids(segmentation_node)
    if not ids:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segments; "
                         f"run TotalSegmentator or pick a segmentation that holds the humerus.")
    if name_or_id in ids:
        return name_or_id
    wanted = str(name_or_id).strip().lower()
    for sid in ids:
        if seg.GetSegment(sid).GetName().strip().lower() == wanted:
            return sid
    names = [seg.GetSegment(s).GetName() for s in ids]
    raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment "
                     f"'{name_or_id}'; it holds {names[:30]}.")


def add_mask_segment(segmentation_node, mask: Volume, name: str,
                     color: Sequence[float] = (0.9, 0.7, 0.2), segment_id: str = "") -> str:
    """Add a segment holding the binary ``mask`` (on the mask's grid). Returns its ID."""
    seg = segmentation_node.GetSegmentation()
    sid = seg.AddEmptySegment(segment_id, name, list(color)[:3])
    image = _oriented_image(mask.with_array((mask.array != 0).astype(np.uint8)))
    L = slicer.vtkSlicerSegmentationsModuleLogic
    if not L.SetBinaryLabelmapToSegment(image, segmentation_node, sid, L.MODE_REPLACE):
        raise InputError(f"could not write the mask into segment '{name}'.")
    return sid


def merge_segments(segmentation_node, names: Sequence[str], target: Geometry, new_name: str,
                   candidates: Optional[Callable[[str], Sequence[str]]] = None) -> str:
    """Union of the named segments as one new segment on ``target``'s grid (e.g. humerus left +
    right from TotalSegmentator). The source segments are hidden, not removed. Returns the new ID.

    ``candidates(name)``: other names the segment may have (e.g. "left humerus").
    """
    merged = np.zeros(target.shape, dtype=np.uint8)
    found, missing = [], []
    for name in names:
        sid = None
        for cand in (candidates(name) if candidates else [name]):
            try:
                sid = find_segment(segmentation_node, cand)
                break
            except InputError:
                continue
        if sid is None:
            missing.append(name)
            continue
        merged |= segment_mask(segmentation_node, sid, target).mask.array
        found.append(sid)
    if not found or not merged.any():
        seg = segmentation_node.GetSegmentation()
        have = [seg.GetSegment(s).GetName() for s in segment_ids(segmentation_node)]
        raise InputError(f"none of {list(names)} was found (or all are empty) in segmentation "
                         f"'{segmentation_node.GetName()}', which holds {have[:30]}. Check the "
                         f"structure names, or that the humerus is in the CT's field of view.")
    sid = add_mask_segment(segmentation_node, Volume(merged, target), new_name, color=(0.95, 0.85, 0.3))
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        for other in found:
            display.SetSegmentVisibility(other, False)
    return sid


@dataclass
class SegmentMask:
    """A segment read as a binary mask on a target grid."""

    mask: Volume                 # uint8 {0, 1} on the target grid
    resampled: bool              # True when the segment's grid differed and was resampled
    source_geometry: Optional[Geometry]  # the segment's own labelmap grid (None when empty)
    message: str = ""            # what was done, for the panel ("" when nothing special)


def _aligned_offset(src: Geometry, dst: Geometry, tol: float = 1e-3) -> Optional[tuple[int, int, int]]:
    """Integer (x, y, z) index offset of ``src``'s first voxel in ``dst`` when the lattices match."""
    if not (np.allclose(src.spacing, dst.spacing, rtol=tol, atol=tol)
            and np.allclose(src.direction, dst.direction, atol=tol)):
        return None
    d = np.asarray(dst.direction).reshape(3, 3)
    idx = np.linalg.solve(d @ np.diag(dst.spacing), np.asarray(src.origin) - np.asarray(dst.origin))
    rounded = np.round(idx)
    if not np.allclose(idx, rounded, atol=tol * 10):
        return None
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def place_on_grid(mask: Optional[Volume], target: Geometry, what: str = "segment") -> SegmentMask:
    """Put a mask on ``target``'s grid: paste when the lattices agree, else nearest-neighbour resample."""
    out = np.zeros(target.shape, dtype=np.uint8)
    if mask is None:
        return SegmentMask(Volume(out, target), False, None, f"{what} is empty")
    binary = (mask.array != 0).astype(np.uint8)
    offset = _aligned_offset(mask.geometry, target)
    if offset is not None:
        ox, oy, oz = offset
        nz, ny, nx = binary.shape
        sz = slice(max(oz, 0), min(oz + nz, target.shape[0]))
        sy = slice(max(oy, 0), min(oy + ny, target.shape[1]))
        sx = slice(max(ox, 0), min(ox + nx, target.shape[2]))
        if sz.start < sz.stop and sy.start < sy.stop and sx.start < sx.stop:
            out[sz, sy, sx] = binary[sz.start - oz:sz.stop - oz, sy.start - oy:sy.stop - oy,
                                     sx.start - ox:sx.stop - ox]
        lost = int(binary.sum()) - int(out.sum())
        msg = (f"{lost} voxels of the {what} lie outside the volume and were left out"
               if lost else "")
        return SegmentMask(Volume(out, target), False, mask.geometry, msg)
    resampled = resample_mask_to(mask.with_array(binary), target)
    msg = (f"the {what} is stored on a different grid ({mask.geometry.describe()}) than the volume "
           f"({target.describe()}); it was resampled onto the volume grid (nearest neighbour).")
    return SegmentMask(resampled.with_array((resampled.array != 0).astype(np.uint8)), True,
                       mask.geometry, msg)


def segment_volume(segmentation_node, segment_id: str) -> Optional[Volume]:
    """A segment's binary labelmap on its own stored grid (uint8 0/1), None when empty."""
    if segmentation_node.GetParentTransformNode() is not None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is under a transform; "
                         f"harden the transform before using it here.")
    seg = segmentation_node.GetSegmentation()
    if seg.GetSegment(segment_id) is None:
        find_segment(segmentation_node, segment_id)  # raises with the list of segments
    if not seg.ContainsRepresentation(_binary_name()):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    image = slicer.vtkOrientedImageData()
    L = slicer.vtkSlicerSegmentationsModuleLogic
    L.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, image)
    vol = _oriented_to_volume(image)
    if vol is None:
        return None
    label = seg.GetSegment(segment_id).GetLabelValue()
    # Segments share labelmaps: the copy holds every segment of the layer, each with its label value.
    return vol.with_array((vol.array == label).astype(np.uint8))


def segment_mask(segmentation_node, segment_id: str, target: Geometry) -> SegmentMask:
    """A segment as a binary mask on ``target``'s grid (resampled, and said so, if needed)."""
    name = segmentation_node.GetSegmentation().GetSegment(segment_id)
    label = f"segment '{name.GetName()}'" if name is not None else f"segment {segment_id}"
    return place_on_grid(segment_volume(segmentation_node, segment_id), target, label)


# --------------------------------------------------------------------------- regions

def region_colour(k: int) -> tuple[float, float, float]:
    """Distinct colour of region ``k`` (1-based): golden-angle hues, alternating lightness."""
    hue = ((k - 1) * 0.618033988749895) % 1.0
    light = 0.55 if k % 2 else 0.42
    return colorsys.hls_to_rgb(hue, light, 0.85)


def region_segment_name(k: int) -> str:
    return f"Region {k}"


def regions_to_segmentation(scene, regions: Volume, node=None, name: str = "SCORERefine regions",
                            reference_volume_node=None):
    """One numbered, coloured segment per region label (``Region k``, tag ``SCORERefine.Region=k``).

    Replaces all segments of ``node`` when given. Returns the segmentation node.
    """
    if node is None:
        node = new_segmentation_node(scene, name, reference_volume_node)
    else:
        node.GetSegmentation().RemoveAllSegments()
        if reference_volume_node is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    labels = [int(v) for v in np.unique(regions.array) if v > 0]
    if not labels:
        raise InputError("the region split produced no region; the mask may be empty or the band "
                         "too thin. Check the segment and try a larger band width.")
    node.SetAttribute(ROLE_ATTRIBUTE, "regions")
    if reference_volume_node is not None:
        node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, reference_volume_node.GetID())
    temp = volume_to_node(scene, regions.with_array(regions.array.astype(np.int16)),
                          "__scorerefine_regions_temp__", labelmap=True, display=False)
    try:
        L = slicer.vtkSlicerSegmentationsModuleLogic
        before = set(segment_ids(node))
        if not L.ImportLabelmapToSegmentationNode(temp, node, ""):
            raise InputError("importing the regions into the segmentation failed.")
        new_ids = [s for s in segment_ids(node) if s not in before]
        seg = node.GetSegmentation()
        for sid in new_ids:
            segment = seg.GetSegment(sid)
            k = int(segment.GetLabelValue())
            segment.SetName(region_segment_name(k))
            segment.SetColor(*region_colour(k))
            segment.SetTag(REGION_TAG, str(k))
    finally:
        display = temp.GetDisplayNode()
        scene.RemoveNode(temp)
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)
    return node


def region_segment_ids(segmentation_node) -> dict[int, str]:
    """Region label -> segment ID, from the segments' ``SCORERefine.Region`` tags (or names)."""
    out: dict[int, str] = {}
    seg = segmentation_node.GetSegmentation()
    for sid in segment_ids(segmentation_node):
        segment = seg.GetSegment(sid)
        tag = vtk.reference("")
        value = str(tag) if segment.GetTag(REGION_TAG, tag) else ""
        if not value and segment.GetName().startswith("Region "):
            value = segment.GetName()[len("Region "):]
        if value.strip().isdigit():
            out[int(value)] = sid
    return dict(sorted(out.items()))


def regions_from_segmentation(segmentation_node, target: Geometry) -> Volume:
    """The region label map (int16) back from a regions segmentation, on ``target``'s grid."""
    ids = region_segment_ids(segmentation_node)
    if not ids:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' holds no 'Region k' "
                         f"segments; run Split in step 2 (Regions) first.")
    out = np.zeros(target.shape, dtype=np.int16)
    for k, sid in ids.items():
        out[segment_mask(segmentation_node, sid, target).mask.array != 0] = k
    return Volume(out, target)


def region_at_ras(segmentation_node, ras: Sequence[float], target: Geometry) -> Optional[int]:
    """The region label at a RAS point (a click in a slice view), None outside every region."""
    d = np.asarray(target.direction).reshape(3, 3)
    lps = _FLIP @ np.asarray(ras, dtype=float)
    ijk = np.linalg.solve(d @ np.diag(target.spacing), lps - np.asarray(target.origin))
    i, j, k = (int(round(v)) for v in ijk)
    if not (0 <= i < target.size[0] and 0 <= j < target.size[1] and 0 <= k < target.size[2]):
        return None
    for label, sid in region_segment_ids(segmentation_node).items():
        vol = segment_volume(segmentation_node, sid)
        if vol is None:
            continue
        off = _aligned_offset(vol.geometry, target)
        if off is None:
            if segment_mask(segmentation_node, sid, target).mask.array[k, j, i]:
                return label
            continue
        z, y, x = k - off[2], j - off[1], i - off[0]
        if 0 <= z < vol.array.shape[0] and 0 <= y < vol.array.shape[1] and 0 <= x < vol.array.shape[2]:
            if vol.array[z, y, x]:
                return label
    return None


def index_to_ras(geometry: Geometry, index_zyx: Sequence[float]) -> tuple[float, float, float]:
    """RAS position of an array index ``(z, y, x)`` (for centring slice views)."""
    lps = np.asarray(geometry.index_to_physical(index_zyx))
    return tuple(float(v) for v in _FLIP @ lps)  # type: ignore[return-value]


def centre_slice_views(scene, ras: Sequence[float]) -> int:
    """Centre every slice view on a RAS point (the current region). Returns how many views moved."""
    nodes = nodes_by_class(scene, "vtkMRMLSliceNode")
    for node in nodes:
        node.JumpSliceByCentering(float(ras[0]), float(ras[1]), float(ras[2]))
    return len(nodes)


def highlight_region(regions_node, current: Optional[int], fill: float = 0.15,
                     current_fill: float = 0.6) -> None:
    """Make the current region stand out in the slice views (stronger fill, outline kept)."""
    display = regions_node.GetDisplayNode() if regions_node is not None else None
    if display is None:
        return
    for label, sid in region_segment_ids(regions_node).items():
        display.SetSegmentOpacity2DFill(sid, current_fill if label == current else fill)
        display.SetSegmentOpacity2DOutline(sid, 1.0)


def slice_xy_to_ras(slice_node, xy: Sequence[float]) -> tuple[float, float, float]:
    """RAS of a pixel of a slice view (an interactor's event position)."""
    m = _np_matrix(slice_node.GetXYToRAS())
    ras = m @ np.array([float(xy[0]), float(xy[1]), 0.0, 1.0])
    return tuple(float(v) for v in ras[:3])  # type: ignore[return-value]


# --------------------------------------------------------------------------- refine in place, undo

@dataclass
class RefineResult:
    voxels_added: int
    voxels_removed: int
    volume_before_ml: float
    volume_after_ml: float
    resampled: bool
    message: str = ""

    def summary(self) -> str:
        text = (f"{self.voxels_added} voxels added, {self.voxels_removed} removed; volume "
                f"{self.volume_before_ml:.2f} ml -> {self.volume_after_ml:.2f} ml")
        return text + (f" ({self.message})" if self.message else "")


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


# --------------------------------------------------------------------------- session in the scene

def store_session_json(node, text: str) -> None:
    """Keep the rating session JSON on ``node`` (saved with the scene as a node attribute)."""
    node.SetAttribute(SESSION_ATTRIBUTE, text)


def load_session_json(node) -> Optional[str]:
    if node is None:
        return None
    return node.GetAttribute(SESSION_ATTRIBUTE) or None


# --------------------------------------------------------------------------- scene files

def save_scene(scene, path) -> None:
    """Save ``scene`` as ``path`` (.mrml) with every node's data in ``Data/`` beside it.

    Inside Slicer, File > Save does the same (and .mrb bundles); this is for headless use and tests.
    """
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() != ".mrml":
        raise InputError(f"save the scene as a .mrml file (got {path.name}); "
                         f"use Slicer's File > Save for .mrb bundles.")
    _write_scene_files(scene, path)


def _write_scene_files(scene, path) -> None:
    from pathlib import Path

    path = Path(path)
    (path.parent / "Data").mkdir(parents=True, exist_ok=True)
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetHideFromEditors() and node.GetAttribute(ROLE_ATTRIBUTE) is None:
            continue
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        if storage is None:
            continue
        ext = storage.GetDefaultWriteFileExtension()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in node.GetName())
        storage.SetFileName(str(path.parent / "Data" / f"{safe}_{node.GetID()}.{ext}"))
        if not storage.WriteData(node):
            raise InputError(f"could not write {node.GetName()} to {storage.GetFileName()}")
    if not scene.Commit(str(path)):
        raise InputError(f"could not write scene {path}")


def load_scene(path, scene=None):
    """Load a .mrml scene (and its data files) into ``scene`` (a new one by default)."""
    from pathlib import Path

    scene = scene if scene is not None else new_scene()
    ensure_segmentation_logic(scene)
    path = Path(path)
    if not path.exists():
        raise InputError(f"scene file not found: {path}")
    scene.SetURL(str(path))
    if not scene.Import():
        raise InputError(f"could not read scene {path}")
    return scene


def nodes_by_class(scene, class_name: str) -> list:
    col = scene.GetNodesByClass(class_name)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def find_session_node(scene):
    """The node that holds a stored rating session (the regions segmentation), if any; with
    several (cases loaded one after the other) the most recently added one."""
    found = [n for n in nodes_by_class(scene, "vtkMRMLSegmentationNode") if n.GetAttribute(SESSION_ATTRIBUTE)]
    return found[-1] if found else None


RefineFunction = Callable[[Volume, Volume], Volume]


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
    from .regions import RegionParams, make_regions

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
    from .session import RatingSession

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
                         regions_node, session=None):
    """Step 4: write image, initial, regions (and the ratings) into ``dataset/cases/<case_id>``.

    The initial mask saved is the segment as rated: its backup when it was refined since.
    """
    from .case import write_case

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
    case = write_case(dataset, case_id, image.with_array(image.array), initial, regions)
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


def load_case_into_scene(scene, case, rater: str = "clinician") -> LoadedCase:
    """Step 4 "Next case": the case's image, initial segment, regions and this rater's ratings."""
    from .session import RatingSession

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
    return LoadedCase(case, vnode, seg, sid, regions_node, session)


def model_refiner(model_path, device: str = "auto") -> RefineFunction:
    """A refine function backed by a trained checkpoint (loaded once)."""
    from .refiner.inference import load_model, refine_volume, resolve_device

    dev = resolve_device(device)
    model, metadata = load_model(model_path, dev)

    def refine(image: Volume, initial: Volume) -> Volume:
        return refine_volume(model, metadata, image, initial, device=dev)
    return refine


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
