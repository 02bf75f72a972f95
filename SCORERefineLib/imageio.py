"""Image and mask IO with geometry carried through every read and write (SimpleITK).

Arrays are numpy in SimpleITK's order ``(z, y, x)``; :class:`Geometry` keeps ITK's physical
conventions (``spacing``/``origin`` in ``(x, y, z)``, LPS millimetres, row-major 3x3 direction).
Use :attr:`Geometry.spacing_zyx` for array-axis computations.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .atomicio import atomic_path
from .errors import GridMismatchError, InputError

_GRID_TOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    """A voxel grid: size ``(x, y, z)``, spacing ``(x, y, z)`` mm, origin (LPS mm), direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        return cls(
            size=tuple(int(v) for v in image.GetSize()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def isotropic(cls, shape_zyx: Sequence[int], spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                  origin: Sequence[float] = (0.0, 0.0, 0.0)) -> "Geometry":
        """A grid for an array of ``shape_zyx`` with ``spacing_zyx`` (mm), identity direction."""
        return cls(size=tuple(int(v) for v in reversed(shape_zyx)),
                   spacing=tuple(float(v) for v in reversed(spacing_zyx)),
                   origin=tuple(float(v) for v in origin))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(reversed(self.size))  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array-axis order ``(z, y, x)``, mm."""
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: "Geometry", tol: float = _GRID_TOL) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tol, rtol=tol)
                and np.allclose(self.origin, other.origin, atol=tol * 10, rtol=tol)
                and np.allclose(self.direction, other.direction, atol=tol))

    def describe(self) -> str:
        sp = "x".join(f"{v:.4g}" for v in self.spacing)
        org = ", ".join(f"{v:.4g}" for v in self.origin)
        return f"size {self.size[0]}x{self.size[1]}x{self.size[2]}, spacing {sp} mm, origin ({org})"

    def index_to_physical(self, index_zyx: Sequence[float]) -> tuple[float, float, float]:
        """Physical (LPS mm) position of a continuous array index ``(z, y, x)``."""
        ijk = np.asarray(list(reversed(index_zyx)), dtype=float)
        d = np.asarray(self.direction).reshape(3, 3)
        return tuple(float(v) for v in np.asarray(self.origin) + d @ (ijk * np.asarray(self.spacing)))

    def index_to_ras(self, index_zyx: Sequence[float]) -> tuple[float, float, float]:
        """RAS (Slicer's world) position of an array index ``(z, y, x)``: RAS = diag(-1, -1, 1) LPS."""
        x, y, z = self.index_to_physical(index_zyx)
        return (-x, -y, z)

    def ras_to_index(self, ras: Sequence[float]) -> Optional[tuple[int, int, int]]:
        """The array index ``(z, y, x)`` nearest a RAS point; None outside the grid."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3) @ np.diag(self.spacing)
        lps = np.array([-float(ras[0]), -float(ras[1]), float(ras[2])])
        ijk = np.linalg.solve(d, lps - np.asarray(self.origin))
        i, j, k = (int(round(v)) for v in ijk)
        if not (0 <= i < self.size[0] and 0 <= j < self.size[1] and 0 <= k < self.size[2]):
            return None
        return (k, j, i)


@dataclass
class Volume:
    """A numpy array ``(z, y, x)`` with its :class:`Geometry`."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.geometry.shape:
            raise InputError(f"array shape {self.array.shape} does not match geometry shape "
                             f"{self.geometry.shape} (z, y, x)")

    def to_sitk(self) -> sitk.Image:
        return self.geometry.apply_to(sitk.GetImageFromArray(self.array))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        return cls(sitk.GetArrayFromImage(image), Geometry.from_sitk(image))

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on the same grid."""
        return Volume(array, self.geometry)


def _read_sitk(path: Path, what: str) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found: {path}. Check the path (case folders hold "
                         f"image.nii.gz, initial.nii.gz, regions.nii.gz, feedback.json).")
    if path.is_dir():
        raise InputError(f"{what} path {path} is a folder; give the image file itself "
                         f"(NIfTI .nii/.nii.gz or NRRD .nrrd).")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"cannot read {what} {path}: the file is unreadable or truncated "
                         f"({first}). Re-export it as NIfTI (.nii.gz) or NRRD.") from exc
    _check_complete(path, image, what)
    return image


def _nifti_stream_length(path: Path) -> tuple[int, bytes]:
    """(decompressed length, first 352 bytes) of a .nii/.nii.gz file; raises on a broken gzip stream."""
    opener = gzip.open if path.name.endswith(".gz") else open
    total, head = 0, b""
    with opener(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            if len(head) < 352:
                head += chunk[: 352 - len(head)]
            total += len(chunk)
    return total, head


def _check_complete(path: Path, image: sitk.Image, what: str) -> None:
    """ITK reads a truncated NIfTI without complaint; compare the data the header promises
    with what the file holds, and check a gzip stream's integrity."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    try:
        total, head = _nifti_stream_length(path)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"cannot read {what} {path}: the file is unreadable or truncated "
                         f"(compressed stream ends early: {exc}). Re-export it.") from exc
    if len(head) < 352:
        return
    endian = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
    vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    expected = vox_offset + int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() \
        * np.dtype(sitk.GetArrayViewFromImage(image).dtype).itemsize
    if total < expected:
        raise InputError(f"cannot read {what} {path}: the file is unreadable or truncated "
                         f"(holds {total} of the {expected} bytes its header promises). Re-export it.")


def _check_3d(image: sitk.Image, path: Path, what: str) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} components per "
                         f"voxel; give a single-component (scalar) volume.")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(f"{what} {path} is {image.GetDimension()}D with size {image.GetSize()}; "
                         f"SCORERefine needs a 3D volume with at least 2 slices.")
    return image


def read_image(path: str | os.PathLike) -> Volume:
    """Read a CT (HU) as float32. Raises :class:`InputError` for 2D, non-finite or unreadable files."""
    path = Path(path)
    image = _check_3d(_read_sitk(path, "image"), path, "image")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(f"image {path} has {int(bad.sum())} NaN or infinite voxels; "
                         f"fix or replace them (e.g. with the minimum HU) before refining.")
    return Volume(array, Geometry.from_sitk(image))


def to_binary_mask(array: np.ndarray, source: str, label: Optional[int] = None,
                   allow_empty: bool = False) -> np.ndarray:
    """Turn a label array into a uint8 {0, 1} mask.

    ``label`` picks one label of a multi-label map; without it a map with more than one
    foreground value is refused, with the labels listed.
    """
    if not np.all(np.isfinite(array)):
        raise InputError(f"mask {source} has NaN or infinite voxels; a mask must hold integer labels.")
    values = np.unique(array)
    if label is not None:
        if label not in values:
            raise InputError(f"label {label} is not in mask {source}; it holds labels "
                             f"{[int(v) for v in values if v != 0]}.")
        mask = (array == label)
    else:
        fg = [v for v in values if v != 0]
        if len(fg) > 1:
            shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in fg[:20])
            raise InputError(f"mask {source} is multi-label (labels {shown}); say which label to use "
                             f"(--label N, e.g. 69 for TotalSegmentator's humerus_left).")
        mask = array != 0
    if not allow_empty and not mask.any():
        raise InputError(f"mask {source} is empty (no foreground voxel); nothing to refine. "
                         f"Check that the segmentation ran and the right label was chosen.")
    return mask.astype(np.uint8)


def read_mask(path: str | os.PathLike, label: Optional[int] = None,
              like: Optional[Geometry] = None, allow_empty: bool = False) -> Volume:
    """Read a binary mask (uint8 0/1). ``like``: the grid it must share (else GridMismatchError)."""
    path = Path(path)
    image = _check_3d(_read_sitk(path, "mask"), path, "mask")
    vol = Volume(to_binary_mask(sitk.GetArrayFromImage(image), str(path), label, allow_empty),
                 Geometry.from_sitk(image))
    if like is not None:
        check_same_grid(like, vol.geometry, "image", f"mask {path.name}")
    return vol


def read_labels(path: str | os.PathLike, like: Optional[Geometry] = None) -> Volume:
    """Read an integer label map (e.g. regions) as int16 without binarising it."""
    path = Path(path)
    image = _check_3d(_read_sitk(path, "label map"), path, "label map")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(np.mod(array, 1) == 0):
            raise InputError(f"label map {path} holds non-integer values; regions must be integer labels.")
    vol = Volume(array.astype(np.int16), Geometry.from_sitk(image))
    if like is not None:
        check_same_grid(like, vol.geometry, "image", f"label map {path.name}")
    return vol


def check_same_grid(a: Geometry, b: Geometry, name_a: str = "image", name_b: str = "mask") -> None:
    """Raise :class:`GridMismatchError` naming both grids when ``a`` and ``b`` differ."""
    if not a.matches(b):
        raise GridMismatchError(
            f"{name_a} and {name_b} are on different voxel grids: {name_a} has {a.describe()}, "
            f"{name_b} has {b.describe()}. Resample the {name_b} onto the {name_a} grid "
            f"(nearest neighbour for masks) or export both from the same scene.")


def write_volume(volume: Volume, path: str | os.PathLike, dtype=None) -> Path:
    """Write atomically (temporary file in the same folder, then rename). Returns the path."""
    path = Path(path)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    image = volume.geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def resample_mask_to(mask: Volume, target: Geometry) -> Volume:
    """Nearest-neighbour resampling of a mask/label volume onto ``target``'s grid (SimpleITK)."""
    ref = target.apply_to(sitk.Image(list(target.size), sitk.sitkUInt8))
    out = sitk.Resample(mask.to_sitk(), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        mask.to_sitk().GetPixelID())
    return Volume(sitk.GetArrayFromImage(out), target)
