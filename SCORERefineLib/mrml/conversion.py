"""Conversion between MRML nodes and the engine's Volume: scene set-up, geometry, volumes, segments, regions as segments.

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
    index = target.ras_to_index(ras)
    if index is None:
        return None
    k, j, i = index
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
