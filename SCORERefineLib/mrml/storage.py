"""The rating session and the scene on disk: node attributes, .mrml files.

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



from .conversion import (ensure_segmentation_logic, new_scene, SESSION_ATTRIBUTE, ROLE_ATTRIBUTE)  # noqa: F401


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
