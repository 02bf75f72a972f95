"""What the views show: the current region framed and highlighted, clicks in slice views.

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



from .conversion import (_np_matrix, segment_ids, region_segment_ids, _FLIP)  # noqa: F401
from .storage import nodes_by_class  # noqa: F401


def index_to_ras(geometry: Geometry, index_zyx: Sequence[float]) -> tuple[float, float, float]:
    """RAS position of an array index ``(z, y, x)`` (for centring slice views)."""
    return geometry.index_to_ras(index_zyx)


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


def show_initial_outline(segmentation_node, visible: bool = True) -> bool:
    """Show the initial segment (the refine backup) as an outline beside the refined one.

    Returns False when there is no backup (nothing was refined)."""
    from .refine import BACKUP_REFERENCE_ROLE
    backup = segmentation_node.GetNodeReference(BACKUP_REFERENCE_ROLE) if segmentation_node else None
    if backup is None:
        return False
    display = backup.GetDisplayNode()
    if display is None:
        backup.CreateDefaultDisplayNodes()
        display = backup.GetDisplayNode()
    display.SetVisibility(bool(visible))
    display.SetOpacity2DFill(0.0)
    display.SetOpacity2DOutline(1.0)
    display.SetVisibility3D(False)
    return True


def frame_region(scene, regions_node, label: int, bounds_ras, margin: float = 1.5) -> int:
    """Centre every slice view on the region and zoom so its bounding box fills the view.

    ``bounds_ras``: ((xmin, xmax), (ymin, ymax), (zmin, zmax)) in RAS mm. Returns views moved."""
    lo = np.array([b[0] for b in bounds_ras], dtype=float)
    hi = np.array([b[1] for b in bounds_ras], dtype=float)
    centre = (lo + hi) / 2.0
    size = float(max(np.max(hi - lo), 10.0)) * margin
    nodes = nodes_by_class(scene, "vtkMRMLSliceNode")
    for node in nodes:
        node.JumpSliceByCentering(*centre)
        fov = node.GetFieldOfView()
        aspect = fov[1] / fov[0] if fov[0] else 1.0
        node.SetFieldOfView(size, size * aspect, fov[2])
    if regions_node is not None:
        regions_node.SetAttribute("SCORERefine.CurrentRegion", str(int(label)))
    return len(nodes)
