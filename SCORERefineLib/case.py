"""The case folder contract, read and written by every tool (engine, CLI, Slicer module).

::

    <dataset>/cases/<case_id>/image.nii.gz      CT in HU (image.nrrd accepted on input)
    <dataset>/cases/<case_id>/initial.nii.gz    binary initial mask on the image grid
    <dataset>/cases/<case_id>/regions.nii.gz    int16 region labels, 0 = in no region
    <dataset>/cases/<case_id>/feedback.json     the ratings (see feedback.py)
    <dataset>/cases/<case_id>/reference.nii.gz  optional dense reference
    <dataset>/cases/<case_id>/scribbles.nii.gz  optional strokes, uint8 0 none / 1 foreground /
                                                2 background (contract version 2; see scribbles.py)

Predictions written by tools go to ``<case_id>/predictions/<name>.nii.gz``.
Changing this layout requires bumping :data:`CONTRACT_VERSION`. Version 2 added the optional
``scribbles.nii.gz``; a version-1 dataset (without it) is a valid version-2 dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError
from .imageio import Volume, read_image, read_labels, read_mask, write_volume

CONTRACT_VERSION = 2

IMAGE_NAMES = ("image.nii.gz", "image.nii", "image.nrrd")
INITIAL = "initial.nii.gz"
REGIONS = "regions.nii.gz"
FEEDBACK = "feedback.json"
REFERENCE = "reference.nii.gz"
SCRIBBLES = "scribbles.nii.gz"
PREDICTIONS = "predictions"


@dataclass(frozen=True)
class Case:
    """One case folder. Loading methods check that every mask shares the image grid."""

    folder: Path

    @property
    def case_id(self) -> str:
        return self.folder.name

    @property
    def image_path(self) -> Path:
        for name in IMAGE_NAMES:
            if (self.folder / name).exists():
                return self.folder / name
        return self.folder / IMAGE_NAMES[0]

    @property
    def initial_path(self) -> Path:
        return self.folder / INITIAL

    @property
    def regions_path(self) -> Path:
        return self.folder / REGIONS

    @property
    def feedback_path(self) -> Path:
        return self.folder / FEEDBACK

    @property
    def reference_path(self) -> Path:
        return self.folder / REFERENCE

    @property
    def scribbles_path(self) -> Path:
        return self.folder / SCRIBBLES

    def prediction_path(self, name: str) -> Path:
        return self.folder / PREDICTIONS / f"{name}.nii.gz"

    @property
    def has_regions(self) -> bool:
        return self.regions_path.exists()

    @property
    def has_feedback(self) -> bool:
        return self.feedback_path.exists()

    @property
    def has_reference(self) -> bool:
        return self.reference_path.exists()

    @property
    def has_scribbles(self) -> bool:
        return self.scribbles_path.exists()

    def load_image(self) -> Volume:
        return read_image(self.image_path)

    def load_initial(self, like: Optional[Volume] = None) -> Volume:
        geom = like.geometry if like is not None else None
        return read_mask(self.initial_path, like=geom)

    def load_regions(self, like: Optional[Volume] = None) -> Volume:
        if not self.has_regions:
            raise InputError(f"case {self.case_id} has no regions ({self.regions_path}); "
                             f"run `scorerefine regions {self.folder.parent.parent}` first.")
        return read_labels(self.regions_path, like=like.geometry if like is not None else None)

    def load_reference(self, like: Optional[Volume] = None) -> Optional[Volume]:
        if not self.has_reference:
            return None
        return read_mask(self.reference_path, like=like.geometry if like is not None else None,
                         allow_empty=True)

    def load_scribbles(self, like: Optional[Volume] = None) -> Volume:
        """The strokes (uint8 0/1/2, validated: :func:`scribbles.read_scribbles`)."""
        from .scribbles import read_scribbles

        if not self.has_scribbles:
            raise InputError(f"case {self.case_id} has no scribbles ({self.scribbles_path}); draw "
                             f"strokes in the Slicer module or simulate them from a reference first.")
        return read_scribbles(self.scribbles_path, like=like.geometry if like is not None else None)

    def load_prediction(self, name: str, like: Optional[Volume] = None) -> Volume:
        path = self.prediction_path(name)
        if not path.exists():
            raise InputError(f"case {self.case_id} has no prediction '{name}' ({path}); "
                             f"run `scorerefine refine` with --name {name} first.")
        return read_mask(path, like=like.geometry if like is not None else None, allow_empty=True)


def cases_dir(dataset: str | os.PathLike) -> Path:
    return Path(dataset) / "cases"


def list_cases(dataset: str | os.PathLike, require: bool = True) -> list[Case]:
    """All cases of a dataset, sorted by id. ``require``: raise when there are none."""
    root = cases_dir(dataset)
    if not root.is_dir():
        if require:
            raise InputError(f"{dataset} is not a SCORERefine dataset: no folder {root}. "
                             f"A dataset holds cases/<case_id>/image.nii.gz and initial.nii.gz; "
                             f"`scorerefine phantoms {dataset}` makes a synthetic one.")
        return []
    cases = [Case(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if require and not cases:
        raise InputError(f"dataset {dataset} has no cases under {root}.")
    return cases


def get_case(dataset: str | os.PathLike, case_id: str) -> Case:
    case = Case(cases_dir(dataset) / case_id)
    if not case.folder.is_dir():
        known = [c.case_id for c in list_cases(dataset, require=False)]
        raise InputError(f"no case '{case_id}' in {dataset}; known cases: {known[:20]}")
    return case


def write_case(dataset: str | os.PathLike, case_id: str, image: Volume, initial: Volume,
               regions: Optional[Volume] = None, reference: Optional[Volume] = None,
               scribbles: Optional[Volume] = None) -> Case:
    """Create or update a case folder. Masks must share the image grid."""
    from .imageio import check_same_grid

    for name, vol in (("initial", initial), ("regions", regions), ("reference", reference),
                      ("scribbles", scribbles)):
        if vol is not None:
            check_same_grid(image.geometry, vol.geometry, "image", name)
    case = Case(cases_dir(dataset) / case_id)
    case.folder.mkdir(parents=True, exist_ok=True)
    write_volume(image, case.folder / IMAGE_NAMES[0],
                 dtype=np.int16 if np.all(np.mod(image.array, 1) == 0) else np.float32)
    write_volume(initial, case.initial_path, dtype=np.uint8)
    if regions is not None:
        write_volume(regions, case.regions_path, dtype=np.int16)
    if reference is not None:
        write_volume(reference, case.reference_path, dtype=np.uint8)
    if scribbles is not None:
        from .scribbles import write_scribbles
        write_scribbles(scribbles, case.scribbles_path)
    return case
