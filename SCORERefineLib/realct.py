"""A real-CT development cohort: real anatomy, real references, our own error model.

Sources (nothing is downloaded):

``slicerio-chest``
    the chest CT that the ``slicerio`` package ships (``slicerio/data/CTChest4.nrrd``, 128x128x34
    at 3.05x3.05x10 mm) with its segmentation (``Segmentation.seg.nrrd``: ribs, cervical /
    thoracic / lumbar vertebral column, right and left lung, tissue). Structures: each lung, each
    vertebral column part, and every single rib (a connected component of the ``ribs`` segment of
    :attr:`RealConfig.rib_voxels` voxels; the larger components, where ribs merge with each
    other, are left out).
``totalseg-humerus`` (when ``../shared/data/totalseg-humerus`` exists)
    the TotalSegmentator test CT crops with TotalSegmentator ``--fast`` humerus masks. There is
    no manual reference: the TotalSegmentator mask is used as the reference (after a check that
    it is one bony component, see :func:`_check_humerus`), and the manifest says so
    (``reference_kind: "totalsegmentator-fast"``). These cases go to the training split only.
``totalseg-abdomen`` (opt-in: :attr:`RealConfig.include_abdomen`, benchmark preset ``real_abdomen``)
    the same folder's whole CT (``ct.nii.gz``, 512x512x20 at 0.98x0.98x2 mm) and its multi-label
    ``totalseg_fast.nii.gz``: the upper-abdominal structures of :data:`ABDOMEN_LABELS` (liver,
    spleen, stomach, aorta, inferior vena cava, T12, both autochthon muscles), again with
    TotalSegmentator's ``--fast`` label as the reference (``reference_kind:
    "totalsegmentator-fast"``, one dominant component, ``reference_check``) and the other labels
    as the neighbours a leak runs into. The spleen and the aorta are held out for testing. Only
    40 mm of the body is imaged, so each organ is a slab.

Each structure is one case: cropped around the structure with :attr:`RealConfig.margin_mm`,
resampled (SimpleITK) to an isotropic grid no larger than :attr:`RealConfig.max_size` per axis
(CT linear; the reference through its signed distance map, linear, so a 10 mm slice spacing does
not leave 10 mm steps in the reference) and corrupted by an error model unlike the phantoms'
(:data:`ERROR_TYPES`):

``shift``    the whole boundary moves in and out by a smooth random field (amplitude in mm)
``leak``     the mask spills into the nearest *neighbouring structure* of the segmentation
             (a ball around the contact point, with the bridge across the gap); with no neighbour
             close by, a bulge into the background
``missing``  a part of the structure is cut off (a ball around a surface point)
``holes``    holes inside
``blocky``   3 mm steps (the mask seen on a 3 mm grid and brought back), when the grid is finer

Where the crop's margin reaches past the scan's first or last slice, the grid is filled with
-1024; the reference stops at the scan and so does the initial mask (an error running past it is
cut there, as a segmenter's output is: error record ``outside_scan_voxels_cut``). Cohort version 1
let the errors run into that filler (a humerus crop and most abdominal organs, up to 4% of a
liver's mask), which taught a refiner that air inside a mask is over-segmentation. Each
structure draws its own errors (its whole name seeds them with the cohort seed); before cohort
version 3 only the first 8 bytes of the name did, so the training and test vertebrae, both
humeri and the ribs of one side shared their error types and sizes.

The split is by structure: a structure's case is in the training or the test split, never both
(:func:`plan_real_cohort`). :func:`make_real_cohort` writes the cases in the case-folder contract
and a manifest ``real_cohort.json`` (structure, group, source, split, reference kind, grid,
error record, initial Dice).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .atomicio import atomic_write_text
from .case import Case, cases_dir, write_case
from .errors import InputError
from .imageio import Volume

MANIFEST = "real_cohort.json"
MANIFEST_FORMAT = "scorerefine-real-cohort"
#: 2: initial masks cut to the scanned field; 3: every structure its own error draws
#: (:func:`_name_key` had read only a name's first 8 bytes, so all vertebrae, both humeri and
#: the ribs of one side had drawn the same error types and sizes)
MANIFEST_VERSION = 3
ERROR_TYPES = ("shift", "leak", "missing", "holes", "blocky")

#: labels of slicerio's chest segmentation
CHEST_LABELS = {"ribs": 1, "vertebrae_cervical": 2, "vertebrae_thoracic": 3,
                "vertebrae_lumbar": 4, "lung_right": 5, "lung_left": 6, "tissue": 7}
#: structures of the TotalSegmentator test CT (upper abdomen) used with its ``--fast`` output as
#: the reference: TotalSegmentator v2 class ids of ``totalseg_fast.nii.gz``, and each one's group.
#: Left out: T11 (three pieces, the largest 67%: not a usable reference), the pancreas and the
#: adrenal glands (a few hundred voxels), colon and costal cartilages (scattered pieces), the ribs
#: (the chest CT has them with a manual reference)
ABDOMEN_LABELS = {"liver": 5, "spleen": 1, "stomach": 6, "aorta": 52, "inferior_vena_cava": 63,
                  "vertebrae_T12": 32, "autochthon_left": 86, "autochthon_right": 87}
#: the whole TotalSegmentator test CT and its multi-label ``--fast`` output (shared/data)
ABDOMEN_FILES = ("ct.nii.gz", "totalseg_fast.nii.gz")
ABDOMEN_GROUPS = {"liver": "organ", "spleen": "organ", "stomach": "organ", "aorta": "vessel",
                  "inferior_vena_cava": "vessel", "vertebrae_T12": "vertebrae",
                  "autochthon_left": "muscle", "autochthon_right": "muscle"}
#: structures held out for testing (ribs: those on the patient's left go to the test split);
#: of the abdomen: one solid organ and one vessel (liver, stomach and the vena cava train)
DEFAULT_TEST = ("lung_left", "vertebrae_lumbar", "spleen", "aorta")

_FULL = np.ones((3, 3, 3), dtype=bool)


def default_shared_dir() -> Path:
    """``<repository>/../shared/data`` (beside the worktree), where optional real data lives."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class RealConfig:
    """How the real cohort is built (sizes in voxels, lengths in mm)."""

    max_size: int = 96
    min_spacing_mm: float = 1.5
    margin_mm: float = 12.0
    rib_voxels: tuple[int, int] = (150, 1000)
    error_prob: Mapping[str, float] = field(default_factory=lambda: {
        "shift": 0.9, "leak": 0.7, "missing": 0.5, "holes": 0.4, "blocky": 0.4})
    shift_mm: tuple[float, float] = (1.0, 2.5)
    shift_length_mm: float = 20.0
    leak_radius_mm: tuple[float, float] = (8.0, 16.0)
    missing_radius_mm: tuple[float, float] = (5.0, 10.0)
    hole_radius_mm: tuple[float, float] = (2.5, 4.5)
    block_mm: float = 3.0
    test_structures: tuple[str, ...] = DEFAULT_TEST
    include_humerus: bool = True
    #: the organs of the same TotalSegmentator CT (ABDOMEN_LABELS; benchmark preset
    #: ``real_abdomen``); off by default: their references are a model's output, not manual, and
    #: with them SCORE learnt nothing (docs/score-loss.md)
    include_abdomen: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_prob"] = dict(self.error_prob)
        return d


@dataclass
class RealCase:
    """One built case: ``image`` (HU), ``reference`` and ``initial`` (uint8) on one grid;
    ``scanned`` (uint8) marks the voxels the scan covers (the rest is -1024 filler, and neither
    mask reaches it)."""

    case_id: str
    structure: dict
    image: Volume
    reference: Volume
    initial: Volume
    errors: dict
    scanned: Optional[Volume] = None


# ------------------------------------------------------------------------------- sources

def _chest_paths() -> tuple[Path, Path]:
    import slicerio

    data = Path(slicerio.__file__).parent / "data"
    img, seg = data / "CTChest4.nrrd", data / "Segmentation.seg.nrrd"
    if not img.exists() or not seg.exists():
        raise InputError(f"slicerio's sample chest CT is missing ({data}); reinstall slicerio.")
    return img, seg


def _load_chest() -> tuple[sitk.Image, sitk.Image]:
    img, seg = _chest_paths()
    return sitk.ReadImage(str(img), sitk.sitkFloat32), sitk.ReadImage(str(seg))


def _rib_components(labels: np.ndarray, config: RealConfig, image: sitk.Image) -> list[dict]:
    """Single ribs: 26-connected components of the ribs label of a size in ``rib_voxels``,
    named ``rib_<side>_<k>`` from top to bottom; ``side`` from the patient's left/right (LPS x)."""
    comp, n = ndi.label(labels == CHEST_LABELS["ribs"], structure=_FULL)
    sizes = np.bincount(comp.ravel())
    lo, hi = config.rib_voxels
    found = []
    for k in range(1, n + 1):
        if not lo <= sizes[k] <= hi:
            continue
        cz, cy, cx = (float(v) for v in ndi.center_of_mass(comp == k))
        x_lps = image.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))[0]
        found.append({"component": k, "z": cz, "x_lps": x_lps})
    mid = float(np.median([f["x_lps"] for f in found])) if found else 0.0
    out = []
    for side in ("left", "right"):
        mine = [f for f in found if (f["x_lps"] > mid) == (side == "left")]
        for i, f in enumerate(sorted(mine, key=lambda f: -f["z"])):
            out.append({"name": f"rib_{side}_{i + 1}", "group": "rib", "source": "slicerio-chest",
                        "component": f["component"], "side": side})
    return out


def _humerus_dir(shared_dir: Optional[os.PathLike]) -> Optional[Path]:
    d = Path(shared_dir) if shared_dir is not None else default_shared_dir()
    d = d / "totalseg-humerus"
    return d if (d / "humerus_left_crop_ct.nii.gz").exists() else None


def missing_shared_data(config: Optional[RealConfig] = None,
                        shared_dir: Optional[os.PathLike] = None,
                        structures: Optional[Sequence[str]] = None) -> dict[str, str]:
    """What ``config`` asks for from the optional shared data (``../shared/data`` beside the
    repository, or ``shared_dir``) that is absent: ``{"humerus" | "abdomen": sentence naming the
    file looked for}``; {} when everything asked for is there. ``structures``: only these are
    built (:func:`make_real_cohort`), so only their sources count. :func:`plan_real_cohort` leaves
    such structures out silently; the benchmark states it (and refuses a preset made of them)."""
    config = config or RealConfig()
    base = (Path(shared_dir) if shared_dir is not None else default_shared_dir()) / "totalseg-humerus"

    def asked(source: str) -> bool:
        return structures is None or any(
            n.startswith("humerus") if source == "humerus" else n in ABDOMEN_LABELS
            for n in structures)

    out = {}
    if config.include_humerus and asked("humerus") and _humerus_dir(shared_dir) is None:
        out["humerus"] = (f"the TotalSegmentator humeri are left out: "
                          f"{base / 'humerus_left_crop_ct.nii.gz'} is absent")
    if (config.include_abdomen and asked("abdomen")
            and not all((base / f).exists() for f in ABDOMEN_FILES)):
        out["abdomen"] = (f"the upper-abdominal structures are left out: {base / ABDOMEN_FILES[0]} "
                          f"or {base / ABDOMEN_FILES[1]} is absent")
    return out


def plan_real_cohort(config: Optional[RealConfig] = None,
                     shared_dir: Optional[os.PathLike] = None) -> list[dict]:
    """Every available structure ``{"name", "group", "source", "split", ...}``, in build order.

    The split is by structure: ``config.test_structures`` and the ribs on the patient's left
    are ``test``, everything else (and every humerus) is ``train``.
    """
    config = config or RealConfig()
    _, seg = _load_chest()
    labels = sitk.GetArrayFromImage(seg)
    plan = []
    for name in ("lung_right", "lung_left", "vertebrae_cervical", "vertebrae_thoracic",
                 "vertebrae_lumbar"):
        if (labels == CHEST_LABELS[name]).any():
            plan.append({"name": name, "group": name.split("_")[0], "source": "slicerio-chest",
                         "label": CHEST_LABELS[name]})
    plan += _rib_components(labels, config, seg)
    for s in plan:
        s["reference_kind"] = "manual (slicerio sample segmentation)"
        s["split"] = "test" if (s["name"] in config.test_structures
                                or s.get("side") == "left") else "train"
    hum = _humerus_dir(shared_dir)
    if hum is not None and config.include_humerus:
        for side in ("left", "right"):
            plan.append({"name": f"humerus_{side}", "group": "humerus",
                         "source": "totalseg-humerus", "split": "train",
                         "reference_kind": "totalsegmentator-fast", "dir": str(hum)})
    if hum is not None and config.include_abdomen and (hum / ABDOMEN_FILES[1]).exists():
        present = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(hum / ABDOMEN_FILES[1])))))
        for name, label in ABDOMEN_LABELS.items():
            if label in present:
                plan.append({"name": name, "group": ABDOMEN_GROUPS[name],
                             "source": "totalseg-abdomen", "label": label,
                             "split": "test" if name in config.test_structures else "train",
                             "reference_kind": "totalsegmentator-fast", "dir": str(hum)})
    return plan


# ------------------------------------------------------------------------------- grid

def _target_grid(mask_img: sitk.Image, mask: np.ndarray, config: RealConfig
                 ) -> tuple[sitk.Image, float]:
    """An isotropic grid (same direction) around ``mask`` plus the margin, <= max_size voxels."""
    idx = np.argwhere(mask)
    lo_zyx, hi_zyx = idx.min(0), idx.max(0)
    corners = [mask_img.TransformIndexToPhysicalPoint([int(c[2]), int(c[1]), int(c[0])])
               for c in (lo_zyx, hi_zyx)]
    direction = np.array(mask_img.GetDirection()).reshape(3, 3)
    # extent in the image's own axes (x, y, z), mm
    a = direction.T @ np.array(corners[0])
    b = direction.T @ np.array(corners[1])
    lo, hi = np.minimum(a, b) - config.margin_mm, np.maximum(a, b) + config.margin_mm
    extent = hi - lo
    spacing = max(config.min_spacing_mm, float(extent.max()) / config.max_size)
    size = [int(min(config.max_size, math.ceil(e / spacing))) for e in extent]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(mask_img.GetDirection())
    ref.SetOrigin(tuple(float(v) for v in direction @ lo))
    return ref, spacing


def _resample(image: sitk.Image, grid: sitk.Image, interp, default: float) -> np.ndarray:
    out = sitk.Resample(image, grid, sitk.Transform(), interp, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _resample_mask(mask: np.ndarray, like: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A binary mask on ``grid``: the mask, lightly smoothed in-plane (sigma half a voxel),
    interpolated linearly and thresholded at 0.5. This keeps the volume of thin structures
    (a rib one 10 mm slice thick) and leaves no step of the coarse slices."""
    sp_zyx = np.array(like.GetSpacing()[::-1], dtype=float)
    sigma = [0.5 if s <= 2.0 * sp_zyx.min() else 0.0 for s in sp_zyx]
    m = sitk.GetImageFromArray(ndi.gaussian_filter(mask.astype(np.float32), sigma))
    m.CopyInformation(like)
    return _resample(m, grid, sitk.sitkLinear, 0.0) >= 0.5


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask, structure=_FULL)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _check_reference(mask: np.ndarray) -> dict:
    """A TotalSegmentator label used as a reference: one dominant component (the rest, dropped,
    is the model's scatter)."""
    lab, n = ndi.label(mask, structure=_FULL)
    sizes = np.bincount(lab.ravel())[1:]
    check = {"voxels": int(mask.sum()), "components": int(n),
             "largest_share": float(sizes.max() / sizes.sum()) if n else 0.0}
    check["ok"] = bool(n >= 1 and check["largest_share"] >= 0.95)
    return check


def _check_humerus(ct: np.ndarray, mask: np.ndarray) -> dict:
    """The TotalSegmentator humerus used as a reference: one dominant *bony* component."""
    check = _check_reference(mask)
    check["median_hu"] = float(np.median(ct[mask])) if mask.any() else math.nan
    check["ok"] = bool(check["ok"] and check["median_hu"] > 150)
    return check


def _scanned(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """The voxels of ``grid`` that the scan covers: where :func:`_resample` interpolates the CT
    rather than filling in -1024 (a crop's margin can reach past the first or last slice)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(image)
    return _resample(ones, grid, sitk.sitkLinear, 0.0) > 0.5


def _load_structure(s: dict, config: RealConfig
                    ) -> tuple[Volume, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(image Volume on the case grid, reference bool, neighbours bool, scanned bool, notes).
    ``scanned``: the voxels inside the scan (:func:`_scanned`); the rest of the grid is -1024
    filler, where the reference and its neighbours are empty."""
    notes: dict = {}
    if s["source"] == "slicerio-chest":
        img, seg = _load_chest()
        labels = sitk.GetArrayFromImage(seg)
        if s["group"] == "rib":
            comp, _ = ndi.label(labels == CHEST_LABELS["ribs"], structure=_FULL)
            mask = comp == s["component"]
        else:
            mask = labels == s["label"]
        neighbours = (labels > 0) & ~mask
        if s["name"] != "tissue":
            neighbours &= labels != CHEST_LABELS["tissue"]   # the body: too wide to leak into
        like = seg
    elif s["source"] == "totalseg-abdomen":
        d = Path(s["dir"])
        img = sitk.ReadImage(str(d / ABDOMEN_FILES[0]), sitk.sitkFloat32)
        seg = sitk.ReadImage(str(d / ABDOMEN_FILES[1]))
        labels = sitk.GetArrayFromImage(seg)
        mask = labels == s["label"]
        notes["reference_check"] = _check_reference(mask)
        mask = _largest(mask)
        neighbours = (labels > 0) & ~mask
        like = seg
    else:
        d = Path(s["dir"])
        side = s["name"].split("_")[1]
        img = sitk.ReadImage(str(d / f"humerus_{side}_crop_ct.nii.gz"), sitk.sitkFloat32)
        seg = sitk.ReadImage(str(d / f"humerus_{side}_crop_totalseg_fast.nii.gz"))
        mask = sitk.GetArrayFromImage(seg) > 0
        notes["reference_check"] = _check_humerus(sitk.GetArrayFromImage(img), mask)
        mask = _largest(mask)
        neighbours = np.zeros_like(mask)
        like = seg
    grid, spacing = _target_grid(like, mask, config)
    ct = _resample(img, grid, sitk.sitkLinear, -1024.0)
    scanned = _scanned(img, grid)
    ref = _largest(_resample_mask(mask, like, grid) & scanned)
    nb = (_resample_mask(neighbours, like, grid) & ~ref & scanned if neighbours.any()
          else np.zeros_like(ref))
    out = sitk.GetImageFromArray(np.clip(np.rint(ct), -1024, 3071).astype(np.int16))
    out.CopyInformation(grid)
    notes["spacing_mm"] = spacing
    notes["scanned_share"] = float(scanned.mean())
    return Volume.from_sitk(out), ref, nb, scanned, notes


# ------------------------------------------------------------------------------- errors

def _ball(shape, sp, centre_zyx, radius_mm) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_zyx, sp))
    return d2 <= radius_mm ** 2


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndi.binary_erosion(m, border_value=1)


def _apply_real_errors(ref: np.ndarray, nb: np.ndarray, sp, rng: np.random.Generator,
                       config: RealConfig) -> tuple[np.ndarray, dict]:
    sp = np.asarray(sp, dtype=float)
    # sizes scale with the structure (a lung's leak is larger than a rib's) and the grid
    size = float(np.clip((ref.sum() * np.prod(sp)) ** (1 / 3) / 30.0, 0.5, 3.0))
    grid = max(1.0, float(sp.max()) / 1.5)
    on = {k: bool(rng.random() < config.error_prob.get(k, 0.0)) for k in ERROR_TYPES}
    if sum(on.values()) < 2:                        # at least two kinds of error per case
        for k in rng.permutation(list(ERROR_TYPES[:4]))[:2]:
            on[str(k)] = True
    rec: dict = {}
    d_in = ndi.distance_transform_edt(ref, sampling=sp)
    d_out = ndi.distance_transform_edt(~ref, sampling=sp)
    sdf = np.where(ref, -d_in, d_out)
    surf = np.argwhere(_surface(ref))
    init = ref.copy()

    if on["shift"]:
        amp = float(rng.uniform(*config.shift_mm)) * grid
        noise = ndi.gaussian_filter(rng.standard_normal(ref.shape),
                                    config.shift_length_mm * size / 2 / sp)
        noise = np.clip(noise / max(float(noise.std()), 1e-6), -2.0, 2.0)   # at most 2 x amp
        init = sdf + amp * noise <= 0.0     # may break a thin structure (a rib) into pieces
        if not init.any():
            init = ref.copy()
        rec["shift"] = {"amplitude_mm": amp, "length_mm": config.shift_length_mm * size,
                        "voxels": int((init != ref).sum())}
    if on["missing"]:
        r = float(rng.uniform(*config.missing_radius_mm)) * min(size, 1.5)
        c = surf[rng.integers(len(surf))]
        removed = init & _ball(ref.shape, sp, c, r)
        if removed.sum() < 0.5 * init.sum():
            init &= ~removed
        rec["missing"] = {"radius_mm": r, "centre_zyx": c.tolist(), "voxels": int(removed.sum())}
    if on["holes"]:
        r = float(rng.uniform(*config.hole_radius_mm)) * size
        cand = np.argwhere(init & (d_in > r + sp.max()))
        removed = np.zeros_like(ref)
        if len(cand):
            for c in cand[rng.choice(len(cand), size=min(2, len(cand)), replace=False)]:
                removed |= _ball(ref.shape, sp, c, r)
            removed &= init
            init &= ~removed
        rec["holes"] = {"radius_mm": r, "voxels": int(removed.sum())}
    if on["leak"]:
        r = float(rng.uniform(*config.leak_radius_mm)) * size
        d_nb = ndi.distance_transform_edt(~nb, sampling=sp) if nb.any() else None
        if d_nb is not None and float(d_nb[ref].min()) <= 15.0:
            on_surf = d_nb[tuple(surf.T)]
            c = surf[int(np.argmin(on_surf))]
            gap = float(on_surf.min()) + sp.max()
            zone = _ball(ref.shape, sp, c, r)
            bridge = zone & (d_out <= gap) & (d_nb <= gap)
            added = zone & (nb | bridge) & ~init
            kind = "neighbour"
        else:
            c = surf[rng.integers(len(surf))]
            added = _ball(ref.shape, sp, c, r) & ~init & (d_out <= 0.5 * r)
            kind = "background"
        lab, _ = ndi.label(init | added, structure=_FULL)
        keep = np.unique(lab[init])
        added &= np.isin(lab, keep[keep > 0])
        init |= added
        rec["leak"] = {"into": kind, "radius_mm": r, "contact_zyx": c.tolist(),
                       "voxels": int(added.sum())}
    if on["blocky"] and config.block_mm > 1.5 * sp.max():
        from .phantoms import _blocky
        before = init.copy()
        init = _blocky(init, sp, config.block_mm)
        if not init.any():
            init = before
        rec["blocky"] = {"block_mm": config.block_mm, "voxels": int((before != init).sum())}
    for k in ERROR_TYPES:
        rec.setdefault(k, {"voxels": 0})
    rec["size_factor"] = size
    return init, rec


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def make_real_case(structure: dict, seed: int, config: Optional[RealConfig] = None) -> RealCase:
    """Build one case for a structure of :func:`plan_real_cohort` (deterministic in ``seed``)."""
    config = config or RealConfig()
    image, ref, nb, scanned, notes = _load_structure(structure, config)
    rng = np.random.default_rng([int(seed), _name_key(structure["name"])])
    init, rec = _apply_real_errors(ref, nb, image.geometry.spacing_zyx, rng, config)
    # a segmenter labels only what was scanned: errors that ran past the scan's first or last
    # slice (into the crop's -1024 margin) are cut there, as a real model's output would be
    rec["outside_scan_voxels_cut"] = int((init & ~scanned).sum())
    init &= scanned
    rec["initial_dice"] = _dice(init, ref)
    s = {k: v for k, v in structure.items() if k != "dir"}
    s.update(notes)
    return RealCase(structure["name"], s, image, image.with_array(ref.astype(np.uint8)),
                    image.with_array(init.astype(np.uint8)), rec,
                    image.with_array(scanned.astype(np.uint8)))


def _name_key(name: str) -> int:
    """A stable key of the whole structure name (CRC-32), so that each structure draws its own
    errors at a given seed."""
    return zlib.crc32(name.encode("utf-8"))


def make_real_cohort(out_dir: Union[str, os.PathLike], seed: int = 0,
                     config: Optional[RealConfig] = None,
                     structures: Optional[Sequence[str]] = None,
                     shared_dir: Optional[os.PathLike] = None) -> tuple[list[Case], list[Case]]:
    """Write the real-CT cohort under ``out_dir`` (``cases/<structure>/``: image, initial,
    reference) plus ``real_cohort.json``; returns ``(train_cases, test_cases)``.

    ``structures``: build only these names (e.g. a subset in tests); default all of
    :func:`plan_real_cohort`. The humerus cases are built when ``shared_dir`` (default
    ``../shared/data``) holds ``totalseg-humerus``; without it the slicerio part still works.
    """
    config = config or RealConfig()
    plan = plan_real_cohort(config, shared_dir)
    if structures is not None:
        known = {s["name"] for s in plan}
        unknown = sorted(set(structures) - known)
        if unknown:
            raise InputError(f"unknown real-CT structure(s) {unknown}; available: {sorted(known)}.")
        plan = [s for s in plan if s["name"] in set(structures)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "seed": int(seed),
                "config": config.to_dict(), "cases": []}
    train, test = [], []
    for s in plan:
        rc = make_real_case(s, seed, config)
        case = write_case(out_dir, rc.case_id, rc.image, rc.initial, reference=rc.reference)
        (test if s["split"] == "test" else train).append(case)
        manifest["cases"].append({"case_id": rc.case_id, "structure": s["name"],
                                  "group": s["group"], "source": s["source"], "split": s["split"],
                                  "reference_kind": s["reference_kind"],
                                  "shape_zyx": list(rc.image.geometry.shape),
                                  "spacing_zyx": list(rc.image.geometry.spacing_zyx),
                                  "reference_voxels": int(rc.reference.array.sum()),
                                  "initial_dice": rc.errors["initial_dice"],
                                  "errors": {k: v for k, v in rc.errors.items()
                                             if k != "initial_dice"},
                                  "notes": {k: v for k, v in rc.structure.items()
                                            if k in ("reference_check", "spacing_mm")}})
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, default=float))
    return train, test


def load_manifest(out_dir: Union[str, os.PathLike]) -> dict:
    """The ``real_cohort.json`` of a real-CT cohort folder."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise InputError(f"{out_dir} has no {MANIFEST}; build it with realct.make_real_cohort.")
    return json.loads(path.read_text())


__all__ = ["RealConfig", "RealCase", "ERROR_TYPES", "plan_real_cohort", "make_real_case",
           "make_real_cohort", "load_manifest", "default_shared_dir"]
