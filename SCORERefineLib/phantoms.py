"""Synthetic humerus cohort with known truth and a TotalSegmentator-like error model.

Each phantom is a CT-like volume (int16 HU, arrays ``(z, y, x)``) of a humerus-like long bone along
the z axis: a rounded head with thin cortex and cancellous interior at high z (superior), a neck, a
shaft with a thick cortical shell and fatty marrow, and a flattened, widened distal end (condyles).
Around it: muscle, a subcutaneous fat layer and air at the corners; near the head a separate
glenoid cup (with the scapular neck) across a dark joint space, and an acromion plate above the
head. The anatomy is built from signed-distance-like fields in millimetres (negative inside), so it
does not depend on the voxel grid; partial volume comes from a linear occupancy ramp over one voxel
and a Gaussian point-spread function, noise is slightly correlated Gaussian.

The *reference* is the whole humerus (cortex + marrow). The *initial* mask is the reference with
systematic, learnable errors whose strengths vary per case (:data:`ERROR_TYPES`):

``head_under``  the head's thin cortex is missed (outer shell eroded by 1-2 in-plane voxels over a
                cap of the head surface): bright bone left outside the mask.
``leakage``     the mask leaks across the joint space into the glenoid (bridge + part of the cup).
``dilation``    the boundary is dilated by 1-2 voxels over one side of the shaft (covers muscle).
``holes``       holes in the fatty marrow / cancellous interior.
``blocky``      3 mm steps as from TotalSegmentator ``--fast`` (mask resampled to 3 mm and back).

Strengths lie in [0, 1]; 0 means the error is absent. They are drawn per case (probability
``error_prob[type]``, strength uniform in ``strength_range``) unless fixed with
``PhantomConfig.force_errors``. :func:`make_cohort` writes the cases with :func:`case.write_case`
plus a ``cohort.json`` (seed, preset, configuration, per-case anatomy and error parameters).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
from scipy import ndimage

from .case import Case, cases_dir, write_case
from .errors import InputError
from .atomicio import atomic_write_text
from .imageio import Geometry, Volume

ERROR_TYPES = ("head_under", "leakage", "dilation", "holes", "blocky")
COHORT_FILE = "cohort.json"
COHORT_FORMAT = "scorerefine-phantom-cohort"
COHORT_VERSION = 1

_DEFAULT_PROB = {"head_under": 0.9, "leakage": 0.85, "dilation": 0.85, "holes": 0.7, "blocky": 0.3}


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms are generated.

    ``shape`` and ``spacing_zyx`` are in array order ``(z, y, x)``; ``spacing_jitter`` is the
    half-width of a uniform per-case perturbation of the spacing (mm). ``scale`` multiplies every
    anatomical size (mm). ``force_errors`` fixes the strength of the named error types (0 = off);
    the others are drawn at random.
    """

    shape: tuple[int, int, int] = (96, 64, 64)
    spacing_zyx: tuple[float, float, float] = (2.0, 1.2, 1.2)
    spacing_jitter: tuple[float, float, float] = (0.25, 0.08, 0.08)
    scale: float = 1.0
    noise_hu: tuple[float, float] = (15.0, 28.0)
    psf_sigma_mm: tuple[float, float, float] = (0.9, 0.5, 0.5)
    error_prob: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_PROB))
    strength_range: tuple[float, float] = (0.5, 1.0)
    block_mm: float = 3.0
    force_errors: Optional[Mapping[str, float]] = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise InputError(f"phantom shape must be 3 sizes >= 8 (z, y, x), got {self.shape}")
        if min(self.spacing_zyx) <= 0:
            raise InputError(f"phantom spacing must be positive, got {self.spacing_zyx}")
        unknown = set(self.force_errors or {}) - set(ERROR_TYPES)
        if unknown:
            raise InputError(f"unknown phantom error type(s) {sorted(unknown)}; "
                             f"known: {list(ERROR_TYPES)}")
        for name, s in (self.force_errors or {}).items():
            if not 0.0 <= float(s) <= 1.0:
                raise InputError(f"error strength for {name} must lie in [0, 1], got {s}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_prob"] = dict(self.error_prob)
        d["force_errors"] = None if self.force_errors is None else dict(self.force_errors)
        return d


PRESETS: dict[str, PhantomConfig] = {
    # unit tests: 40x32x32 voxels, coarse spacing, anatomy scaled down
    "tiny": PhantomConfig(shape=(40, 32, 32), spacing_zyx=(2.5, 1.5, 1.5),
                          spacing_jitter=(0.0, 0.0, 0.0), scale=0.55, strength_range=(0.2, 0.7)),
    # demo and benchmark: trains on 2 CPU cores within minutes
    "default": PhantomConfig(),
}


@dataclass
class PhantomCase:
    """One generated case.

    ``image``: int16 HU; ``reference`` and ``initial``: uint8 {0, 1}; all ``(z, y, x)`` on one grid.
    ``errors``: per error type ``{"strength", ...parameters, "voxels"}`` plus ``"initial_dice"``.
    ``params``: anatomy parameters (mm, degrees). ``labels``: bool ``(z, y, x)`` helper masks
    ``"glenoid"`` (glenoid cup + scapular neck), ``"acromion"``, ``"head"`` (reference voxels of
    the head zone) and tissue samples ``"cortex"`` (shaft), ``"marrow"``, ``"fat"``,
    ``"muscle"``, ``"air"`` (may be empty on coarse grids).
    """

    image: Volume
    reference: Volume
    initial: Volume
    errors: dict
    params: dict
    labels: dict[str, np.ndarray]
    seed: int


# ----------------------------------------------------------------------------- field helpers

def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 at ``e0``, 1 at ``e1`` (either order), cubic in between."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two SDFs with blend radius ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _ellipsoid(u: np.ndarray, v: np.ndarray, w: np.ndarray, radii) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid centred at the origin."""
    a, b, c = radii
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2 + (w / c ** 2) ** 2)
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -min(a, b))


def _ellipse2d(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipse with semi-axes ``a``, ``b`` (arrays ok)."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    k1 = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2)
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -np.minimum(a, b))


def _box(u: np.ndarray, v: np.ndarray, w: np.ndarray, half, rounding: float) -> np.ndarray:
    """Signed distance (mm) to a rounded box of half-sizes ``half`` centred at the origin."""
    qu, qv, qw = (np.abs(c) - (h - rounding) for c, h in zip((u, v, w), half))
    outside = np.sqrt(np.maximum(qu, 0) ** 2 + np.maximum(qv, 0) ** 2 + np.maximum(qw, 0) ** 2)
    inside = np.minimum(np.maximum(qu, np.maximum(qv, qw)), 0.0)
    return outside + inside - rounding


def _occupancy(d: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel inside the surface ``d = 0`` (linear ramp over ``width`` mm)."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rotation matrix acting on (u, v, w) = (x, y, z) vectors: Rz @ Ry @ Rx."""
    a, b, c = (math.radians(v) for v in (ax_deg, ay_deg, az_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise smoothed with ``sigma_vox`` (float32)."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if any(s > 0 for s in sigma_vox):
        n = ndimage.gaussian_filter(n, sigma_vox, mode="nearest")
    return n / max(float(n.std()), 1e-6)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _angle_to(du, dv, dw, rho, axis) -> np.ndarray:
    """Angle (rad) between the vectors (du, dv, dw) of length ``rho`` and unit ``axis``."""
    c = (du * axis[0] + dv * axis[1] + dw * axis[2]) / np.maximum(rho, 1e-6)
    return np.arccos(np.clip(c, -1.0, 1.0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary arrays (1.0 when both are empty); a cheap numpy helper."""
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


# ----------------------------------------------------------------------------- anatomy

def _sample_anatomy(rng: np.random.Generator, fov_zyx, scale: float, spacing_zyx) -> dict:
    """Per-case anatomy parameters (mm, degrees) for a field of view ``fov_zyx`` (mm)."""
    Z, Y, X = fov_zyx
    u = rng.uniform
    p: dict[str, Any] = {}
    p["head_radius"] = u(16.0, 20.5) * scale
    p["shaft_radius"] = u(8.5, 11.0) * scale
    p["condyle_halfwidth"] = u(2.2, 2.6) * p["shaft_radius"]
    p["condyle_height"] = u(0.8, 1.05) * p["shaft_radius"]
    p["w_distal"] = -0.5 * Z + Z * u(0.03, 0.08)
    p["w_head"] = 0.5 * Z - Z * u(0.0, 0.03) - p["head_radius"] - 13.0 * scale
    p["length"] = p["w_head"] - p["w_distal"]
    p["bend_mm"] = [u(-4.0, 4.0) * scale, u(-4.0, 4.0) * scale]
    p["tilt_deg"] = [u(-2.5, 2.5), u(-2.5, 2.5), u(-25.0, 25.0)]
    p["pivot_zyx"] = [0.5 * Z, 0.5 * Y + u(-0.04, 0.04) * Y, 0.4 * X + u(-0.03, 0.03) * X]
    p["head_offset"] = [u(0.35, 0.5) * p["head_radius"], u(-0.15, 0.15) * p["head_radius"]]
    p["cortex_shaft_mm"] = u(3.0, 4.5) * scale
    p["cortex_end_mm"] = max(u(0.9, 1.4) * scale, 0.6)
    p["cortex_hu"] = u(1250.0, 1650.0)
    p["marrow_hu"] = u(0.0, 120.0)
    p["cancellous_hu"] = u(180.0, 320.0)
    p["muscle_hu"] = u(40.0, 60.0)
    p["fat_hu"] = u(-120.0, -80.0)
    p["fat_mm"] = u(3.0, 8.0) * scale
    p["joint_gap_mm"] = max(u(2.8, 4.5) * scale, 1.6 * min(spacing_zyx[1:]))
    p["glenoid_thickness"] = u(4.0, 7.0) * scale
    p["glenoid_angle_deg"] = u(28.0, 38.0)
    p["glenoid_dir"] = _unit([1.0, u(-0.25, 0.25), u(-0.05, 0.3)]).tolist()
    p["acromion_gap_mm"] = u(6.0, 9.0) * scale
    p["acromion_thickness"] = u(4.0, 6.0) * scale
    p["body_distal"] = [u(0.42, 0.47), u(0.45, 0.5)]
    return p


def _fields(p: dict, shape, spacing_zyx, scale: float) -> dict[str, np.ndarray]:
    """Signed-distance-like fields (mm, float32 ``(z, y, x)``) and helper fields of one phantom."""
    nz, ny, nx = shape
    sz, sy, sx = spacing_zyx
    zz = (np.arange(nz, dtype=np.float32) * sz)[:, None, None]
    yy = (np.arange(ny, dtype=np.float32) * sy)[None, :, None]
    xx = (np.arange(nx, dtype=np.float32) * sx)[None, None, :]
    pz, py, px = p["pivot_zyx"]
    R = _rotation(*p["tilt_deg"]).astype(np.float32)
    # bone frame q = R^T (p - pivot): u ~ x (medial +), v ~ y, w ~ z (superior +)
    dx, dy, dz = xx - px, yy - py, zz - pz
    u = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
    v = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
    w = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz

    L, wd, wh = p["length"], p["w_distal"], p["w_head"]
    t = (w - wd) / L                                   # 0 distal end .. 1 head centre
    bend = np.sin(np.pi * np.clip(t, 0.0, 1.0))
    cu = p["bend_mm"][0] * bend
    cv = p["bend_mm"][1] * bend
    du, dv = u - cu, v - cv

    rs, cw, ch = p["shaft_radius"], p["condyle_halfwidth"], p["condyle_height"]
    s_d = _smoothstep(0.34, 0.05, t)                   # distal flare (supracondylar widening)
    s_p = _smoothstep(0.68, 0.92, t)                   # proximal metaphysis
    ru = rs * (1.0 + (0.8 * cw / rs - 1.0) * s_d ** 1.5) * (1.0 + 0.3 * s_p)
    rv = rs * (1.0 - 0.3 * s_d) * (1.0 + 0.3 * s_p)
    w_c = wd + ch
    d_shaft = np.maximum(_ellipse2d(du, dv, ru, rv), np.maximum(w_c - w, w - wh))

    # condyles: trochlea (medial, +u) and capitulum (lateral), plus the medial epicondyle
    cu_c = float(p["bend_mm"][0] * math.sin(math.pi * ch / L))
    cv_c = float(p["bend_mm"][1] * math.sin(math.pi * ch / L))
    d_troch = _ellipsoid(u - cu_c - 0.42 * cw, v - cv_c, w - w_c, (0.6 * cw, 0.85 * rs, ch))
    d_capit = _ellipsoid(u - cu_c + 0.45 * cw, v - cv_c + 0.1 * rs, w - w_c - 0.1 * ch,
                         (0.5 * cw, 0.8 * rs, 0.9 * ch))
    d_epic = _ellipsoid(u - cu_c - 0.95 * cw, v - cv_c, w - w_c - 0.6 * ch,
                        (0.3 * cw, 0.45 * rs, 0.8 * ch))
    d_cond = _smin(_smin(d_troch, d_capit, 0.3 * rs), d_epic, 0.4 * rs)
    d = _smin(d_shaft, d_cond, 0.6 * rs)

    # head (medial, +u) and greater tubercle (lateral)
    Rh = p["head_radius"]
    hc = np.array([p["head_offset"][0], p["head_offset"][1], wh], dtype=np.float32)
    hu_, hv_, hw_ = u - hc[0], v - hc[1], w - hc[2]
    d_head = _ellipsoid(hu_, hv_, hw_, (Rh, Rh, 0.92 * Rh))
    d_tub = _ellipsoid(hu_ + 0.95 * Rh, hv_ - 0.1 * Rh, hw_ + 0.1 * Rh,
                       (0.5 * Rh, 0.55 * Rh, 0.7 * Rh))
    d = _smin(d, d_head, 0.3 * Rh)
    d = _smin(d, d_tub, 0.25 * Rh)

    # cortex thickness and interior HU blend: thick/fatty in the diaphysis, thin/cancellous at ends
    m = _smoothstep(0.15, 0.35, t) * _smoothstep(0.85, 0.62, t)
    cortex = p["cortex_end_mm"] + (p["cortex_shaft_mm"] - p["cortex_end_mm"]) * m

    # glenoid cup concentric with the head, with the scapular neck going medially
    g = np.asarray(p["glenoid_dir"], dtype=np.float32)
    gap, tg = p["joint_gap_mm"], p["glenoid_thickness"]
    alpha = math.radians(p["glenoid_angle_deg"])
    rho = np.sqrt(hu_ ** 2 + hv_ ** 2 + hw_ ** 2)
    r_in = Rh + gap
    d_shell = np.abs(rho - (r_in + 0.5 * tg)) - 0.5 * tg
    ang = _angle_to(hu_, hv_, hw_, rho, g)
    d_cup = np.maximum(d_shell, (ang - alpha) * rho)
    s0 = r_in + 0.7 * tg
    along = hu_ * g[0] + hv_ * g[1] + hw_ * g[2] - s0
    radial = np.sqrt(np.maximum(rho ** 2 - (along + s0) ** 2, 0.0))
    r_neck = 0.7 * r_in * math.sin(alpha)
    d_neck = np.maximum(radial - r_neck * (1.0 + 0.15 * np.clip(along / max(r_neck, 1e-3), 0, 3)),
                        -along)
    d_glen = _smin(d_cup, d_neck, 0.25 * r_neck)
    # acromion: a plate above the head, shifted laterally
    ag, at = p["acromion_gap_mm"], p["acromion_thickness"]
    d_acro = _box(hu_ + 0.3 * Rh, hv_ + 0.15 * Rh, hw_ - (0.92 * Rh + ag + 0.5 * at),
                  (1.1 * Rh, 0.65 * Rh, 0.5 * at), rounding=min(0.45 * at, 2.0))
    # keep the neighbours apart from the humerus by at least 60 % of the joint gap
    keep_off = 0.6 * gap - d
    d_glen = np.maximum(d_glen, keep_off)
    d_acro = np.maximum(d_acro, keep_off)

    # body contour in the world frame: wide at the shoulder (no air), narrower at the elbow
    fz = zz / (nz * sz)
    Y, X = ny * sy, nx * sx
    by = Y * (p["body_distal"][0] + (0.62 - p["body_distal"][0]) * fz)
    bx = X * (p["body_distal"][1] + (0.64 - p["body_distal"][1]) * fz)
    d_body = _ellipse2d(yy - 0.5 * Y, xx - 0.5 * X, by, bx)

    head_zone = (rho <= Rh + 2.5 * scale + max(spacing_zyx)) & (w >= wh - 0.45 * Rh)
    return {"bone": d.astype(np.float32), "cortex": np.broadcast_to(cortex, d.shape),
            "diaphysis": np.broadcast_to(m, d.shape), "glenoid": d_glen.astype(np.float32),
            "acromion": d_acro.astype(np.float32), "body": np.broadcast_to(d_body, d.shape),
            "u": u, "v": v, "w": w, "du": du, "dv": dv, "t": t, "rho": rho,
            "hu": hu_, "hv": hv_, "hw": hw_, "head_zone": head_zone, "head_centre": hc,
            "glenoid_dir": g}


def _labels(f: dict, p: dict, ref: np.ndarray, spacing_zyx) -> dict[str, np.ndarray]:
    """Helper masks (bool ``(z, y, x)``): neighbours, the head zone and tissue samples."""
    width = float(np.mean(spacing_zyx))
    d, cortex, m, body = f["bone"], f["cortex"], f["diaphysis"], f["body"]
    glenoid, acromion = f["glenoid"] <= 0.0, f["acromion"] <= 0.0
    away = (f["glenoid"] > width) & (f["acromion"] > width) & (d > width)
    return {"glenoid": glenoid, "acromion": acromion,
            "head": np.asarray(f["head_zone"] & ref),
            "cortex": (np.abs(d + 0.5 * cortex) < 0.25 * cortex) & (m > 0.9) & ref,
            "marrow": (d < -(cortex + width)) & (m > 0.9) & ref,
            "fat": (body < -width) & (body > -p["fat_mm"] + width) & away,
            "muscle": (body < -(p["fat_mm"] + width)) & away & (d > 2 * width),
            "air": body > width}


def _render(p: dict, f: dict, spacing_zyx, rng: np.random.Generator, config: PhantomConfig,
            scale: float) -> tuple[np.ndarray, float]:
    """CT image (float32 HU) from the fields; returns (image, noise std)."""
    shape = f["bone"].shape
    sz, sy, sx = spacing_zyx
    width = float(np.mean(spacing_zyx))
    tex = _smooth_noise(rng, shape, (3.0 / sz, 3.0 / sy, 3.0 / sx))
    occ_body = _occupancy(f["body"], width)
    occ_muscle = _occupancy(f["body"] + p["fat_mm"], width)
    septa_field = _smooth_noise(rng, shape, (6.0 / sz, 6.0 / sy, 6.0 / sx))
    septa = np.clip(1.0 - np.abs(septa_field) / 0.12, 0.0, 1.0)      # thin sinuous sheets
    muscle = p["muscle_hu"] + 8.0 * tex + (p["fat_hu"] - p["muscle_hu"]) * 0.7 * septa
    skin = _occupancy(f["body"], width) - _occupancy(f["body"] + 1.5, width)
    soft = p["fat_hu"] * (1 - occ_muscle) + muscle * occ_muscle
    soft = soft + (30.0 - soft) * np.clip(skin, 0.0, 1.0) * 0.8
    img = -1000.0 * (1 - occ_body) + soft * occ_body

    trab = _smooth_noise(rng, shape, (0.7 / sz, 0.7 / sy, 0.7 / sx))
    m = f["diaphysis"]
    interior = p["cancellous_hu"] + (p["marrow_hu"] - p["cancellous_hu"]) * m
    interior = interior + (1.0 - m) * 45.0 * trab + m * 10.0 * tex
    cortex_hu = p["cortex_hu"] * (0.8 + 0.2 * m)
    bones = ((f["bone"], f["cortex"], cortex_hu, interior),
             (f["glenoid"], 1.2 * scale + 0.3, 0.85 * p["cortex_hu"], 260.0 + 45.0 * trab),
             (f["acromion"], 1.2 * scale + 0.3, 0.85 * p["cortex_hu"], 260.0 + 45.0 * trab))
    for d, thick, c_hu, in_hu in bones:
        outer = _occupancy(d, width)
        inner = _occupancy(d + thick, width)
        img = img * (1.0 - outer) + c_hu * (outer - inner) + in_hu * inner

    sigma = tuple(s / sp for s, sp in zip(config.psf_sigma_mm, spacing_zyx))
    img = ndimage.gaussian_filter(img.astype(np.float32), sigma, mode="nearest")
    noise_std = float(rng.uniform(*config.noise_hu))
    img = img + noise_std * _smooth_noise(rng, shape, (0.0, 0.5, 0.5))
    return img, noise_std


# ----------------------------------------------------------------------------- error model

def _draw_strengths(rng: np.random.Generator, config: PhantomConfig) -> dict[str, float]:
    forced = dict(config.force_errors or {})
    out = {}
    for name in ERROR_TYPES:
        on = rng.random() < float(config.error_prob.get(name, 0.0))
        s = float(rng.uniform(*config.strength_range))
        out[name] = float(forced[name]) if name in forced else (s if on else 0.0)
    return out


@dataclass
class _ErrorContext:
    """What every error function reads: the reference, the anatomy fields, the grid, distances."""

    ref: np.ndarray
    f: dict
    p: dict
    sp: tuple
    s_ip: float
    dist_in: np.ndarray
    dist_out: np.ndarray
    near_nb: np.ndarray
    labels: dict
    config: "PhantomConfig"


def _head_under(c: _ErrorContext, init: np.ndarray, s: float, rng) -> tuple[np.ndarray, dict]:
    """(a) head cortex under-segmented over a cap of the head surface."""
    depth = c.s_ip * (1.0 + 1.5 * s) + 0.01
    axis = _unit([-rng.uniform(0.2, 1.0), rng.uniform(-0.5, 0.5), rng.uniform(0.3, 1.0)])
    cap = 50.0 + 60.0 * s
    f = c.f
    ang = _angle_to(f["hu"], f["hv"], f["hw"], f["rho"], axis)
    zone = f["head_zone"] & (ang <= math.radians(cap))
    removed = c.ref & zone & (c.dist_in <= depth)
    return init & ~removed, {"strength": s, "depth_mm": depth, "cap_deg": cap,
                             "axis_uvw": axis.tolist(), "voxels": int(removed.sum())}


def _holes(c: _ErrorContext, init: np.ndarray, s: float, rng) -> tuple[np.ndarray, dict]:
    """(d) holes in the marrow / cancellous interior (never through the cortex)."""
    ref, sp, s_ip = c.ref, c.sp, c.s_ip
    interior = ref & (c.f["bone"] < -(c.f["cortex"] + 0.5)) & (c.dist_in > 2.0 * s_ip)
    cand = np.flatnonzero(interior & (c.dist_in > 3.0 * s_ip))
    n = 1 + int(round(3 * s))
    radius = (3.0 + 4.0 * s) * c.config.scale
    removed = np.zeros_like(ref)
    centres = []
    if cand.size:
        zz, yy, xx = (np.arange(k, dtype=np.float32) * spc for k, spc in zip(ref.shape, sp))
        for idx in rng.choice(cand, size=min(n, cand.size), replace=False):
            cz, cy, cx = np.unravel_index(idx, ref.shape)
            r2 = (((zz - cz * sp[0]) ** 2)[:, None, None]
                  + ((yy - cy * sp[1]) ** 2)[None, :, None]
                  + ((xx - cx * sp[2]) ** 2)[None, None, :])
            removed |= (r2 <= radius ** 2) & interior
            centres.append([int(cz), int(cy), int(cx)])
    return init & ~removed, {"strength": s, "n": len(centres), "radius_mm": radius,
                             "centres_zyx": centres, "voxels": int(removed.sum())}


def _dilation(c: _ErrorContext, init: np.ndarray, s: float, rng) -> tuple[np.ndarray, dict]:
    """(c) boundary dilated over one side of the shaft."""
    f = c.f
    depth = c.s_ip * (1.0 + 1.4 * s) + 0.01
    phi0 = rng.uniform(-math.pi, math.pi)
    half = math.radians(45.0 + 45.0 * s)
    t_lo = rng.uniform(-0.05, 0.55)
    t_hi = t_lo + rng.uniform(0.3, 0.5)
    phi = np.arctan2(f["dv"], f["du"])
    dphi = np.abs(np.angle(np.exp(1j * (phi - phi0))))
    zone = (dphi <= half) & (f["t"] >= t_lo) & (f["t"] <= t_hi)
    added = ~c.ref & (c.dist_out <= depth) & zone & ~c.near_nb
    return init | added, {"strength": s, "depth_mm": depth, "azimuth_deg": math.degrees(phi0),
                          "half_width_deg": math.degrees(half), "t_range": [t_lo, t_hi],
                          "voxels": int(added.sum())}


def _leakage(c: _ErrorContext, init: np.ndarray, s: float, rng) -> tuple[np.ndarray, dict]:
    """(b) leakage across the joint space into the glenoid."""
    f, p, labels = c.f, c.p, c.labels
    g = f["glenoid_dir"]
    Rh, gap = p["head_radius"], p["joint_gap_mm"]
    contact = f["head_centre"] + g * (Rh + 0.5 * gap)
    radius = (8.0 + 16.0 * s) * c.config.scale
    dc = np.sqrt((f["u"] - contact[0]) ** 2 + (f["v"] - contact[1]) ** 2
                 + (f["w"] - contact[2]) ** 2)
    ang = _angle_to(f["hu"], f["hv"], f["hw"], f["rho"], g)
    bridge = (f["rho"] <= Rh + gap + 0.5 * c.s_ip) & (ang <= math.radians(p["glenoid_angle_deg"]))
    added = (dc <= radius) & (labels["glenoid"] | bridge) & ~init
    lab, _ = ndimage.label(init | added)
    keep = np.unique(lab[init])
    added &= np.isin(lab, keep[keep > 0])
    return init | added, {"strength": s, "radius_mm": radius, "contact_uvw": contact.tolist(),
                          "voxels": int(added.sum()),
                          "glenoid_voxels": int((added & labels["glenoid"]).sum())}


def _blocky_error(c: _ErrorContext, init: np.ndarray, s: float, rng) -> tuple[np.ndarray, dict]:
    """(e) blocky steps: the mask seen on a coarse grid and brought back by nearest neighbour."""
    after = _blocky(init, c.sp, c.config.block_mm)
    return after, {"strength": s, "block_mm": c.config.block_mm, "voxels": int((init ^ after).sum())}


#: error type -> (function, its record when switched off), in the order they are applied
_ERROR_STEPS = {
    "head_under": (_head_under, {"voxels": 0}),
    "holes": (_holes, {"voxels": 0}),
    "dilation": (_dilation, {"voxels": 0}),
    "leakage": (_leakage, {"voxels": 0, "glenoid_voxels": 0}),
    "blocky": (_blocky_error, {"voxels": 0}),
}


def _apply_errors(ref: np.ndarray, f: dict, p: dict, strengths: dict[str, float],
                  spacing_zyx, seed: int, config: PhantomConfig,
                  labels: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """The initial mask (bool) and the error record. All distances in mm.

    Each error type (one function each, :data:`_ERROR_STEPS`) draws its location from its own
    random stream, so switching one error off (``force_errors``) leaves the others where they were.

    Returns:
        ``(initial mask, {error type: record})``.
    """
    streams = {name: np.random.default_rng([int(seed), 101 + i])
               for i, name in enumerate(ERROR_TYPES)}
    sp = tuple(float(v) for v in spacing_zyx)
    ctx = _ErrorContext(ref=ref, f=f, p=p, sp=sp, s_ip=min(sp[1], sp[2]),
                        dist_in=ndimage.distance_transform_edt(ref, sampling=sp),
                        dist_out=ndimage.distance_transform_edt(~ref, sampling=sp),
                        near_nb=ndimage.binary_dilation(labels["glenoid"] | labels["acromion"],
                                                        iterations=2),
                        labels=labels, config=config)
    init = ref.copy()
    rec: dict[str, dict] = {}
    for name, (step, off) in _ERROR_STEPS.items():
        s = strengths[name]
        if s > 0:
            init, rec[name] = step(ctx, init, s, streams[name])
        else:
            rec[name] = {"strength": 0.0, **off}
    return init, rec


def _blocky(mask: np.ndarray, spacing_zyx, block_mm: float) -> np.ndarray:
    """Resample a mask to ``block_mm`` voxels (area-weighted) and back (nearest neighbour)."""
    sp = np.asarray(spacing_zyx, dtype=float)
    shape = np.asarray(mask.shape)
    coarse_n = np.maximum(np.ceil(shape * sp / block_mm).astype(int), 1)
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), block_mm / 2.5 / sp, mode="constant")
    axes = [(-0.5 * s + (np.arange(n) + 0.5) * block_mm) / s for n, s in zip(coarse_n, sp)]
    grid = np.meshgrid(*axes, indexing="ij")
    coarse = ndimage.map_coordinates(smooth, grid, order=1, mode="nearest") >= 0.5
    idx = [np.clip(((np.arange(n) + 0.5) * s / block_mm).astype(int), 0, c - 1)
           for n, s, c in zip(shape, sp, coarse_n)]
    return coarse[np.ix_(*idx)]


# ----------------------------------------------------------------------------- public API

def case_spacing(seed: int, config: PhantomConfig) -> tuple[float, float, float]:
    """The (z, y, x) spacing of phantom ``seed`` (the base spacing plus its jitter)."""
    rng = np.random.default_rng([int(seed), 7])
    return tuple(round(float(s + rng.uniform(-j, j)), 4)
                 for s, j in zip(config.spacing_zyx, config.spacing_jitter))  # type: ignore


def make_phantom(seed: int, config: Union[PhantomConfig, str] = PRESETS["default"]) -> PhantomCase:
    """Generate one phantom, deterministic for ``seed`` and ``config`` (a config or preset name).

    Anatomy, image and reference depend only on the seed and grid; each error type has its own
    random stream, so forcing errors on or off changes only the initial mask.
    """
    if isinstance(config, str):
        config = get_preset(config)
    seed = int(seed)
    rng = np.random.default_rng(seed)
    spacing = case_spacing(seed, config)
    shape = tuple(int(v) for v in config.shape)
    fov = tuple(n * s for n, s in zip(shape, spacing))
    p = _sample_anatomy(rng, fov, config.scale, spacing)
    f = _fields(p, shape, spacing, config.scale)
    img, noise_std = _render(p, f, spacing, rng, config, config.scale)
    p["noise_hu"] = noise_std

    ref = f["bone"] <= 0.0
    lab, n_comp = ndimage.label(ref)
    if n_comp > 1:  # keep the largest component (thin parts may break up on coarse grids)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        ref = lab == int(np.argmax(sizes))
    labels = _labels(f, p, ref, spacing)
    strengths = _draw_strengths(np.random.default_rng([seed, 100]), config)
    init, rec = _apply_errors(ref, f, p, strengths, spacing, seed, config, labels)
    rec["initial_dice"] = dice(init, ref)

    origin = tuple(-0.5 * n * s for n, s in zip(reversed(shape), reversed(spacing)))
    geom = Geometry.isotropic(shape, spacing, origin=origin)
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    params = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
    params.update(shape_zyx=list(shape), spacing_zyx=list(spacing))
    return PhantomCase(image=Volume(image, geom), reference=Volume(ref.astype(np.uint8), geom),
                       initial=Volume(init.astype(np.uint8), geom), errors=rec, params=params,
                       labels=labels, seed=seed)


def get_preset(preset: Union[str, PhantomConfig]) -> PhantomConfig:
    """A :class:`PhantomConfig` from a preset name (or the config itself)."""
    if isinstance(preset, PhantomConfig):
        return preset
    if preset not in PRESETS:
        raise InputError(f"unknown phantom preset '{preset}'; choose one of {sorted(PRESETS)}.")
    return PRESETS[preset]


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` in a cohort made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_cohort(dataset: Union[str, os.PathLike], n: int, seed: int,
                preset: Union[str, PhantomConfig] = "default", overwrite: bool = False,
                progress: str = "none", cancel=None) -> list[Case]:
    """Write ``n`` phantoms as cases ``case_000``.. of ``dataset`` plus ``<dataset>/cohort.json``.

    Each case gets image (int16 HU), initial and reference; no regions (``scorerefine regions``
    makes those). Existing case folders of the same names are refused unless ``overwrite``.
    ``progress``: ``bar`` | ``json`` | ``none``; ``cancel``: a :class:`progress.CancelToken`.
    """
    from .progress import Progress

    config = get_preset(preset)
    if int(n) < 1:
        raise InputError(f"the number of phantom cases must be at least 1, got {n}.")
    dataset = Path(dataset)
    ids = [f"case_{i:03d}" for i in range(int(n))]
    existing = [c for c in ids if (cases_dir(dataset) / c).exists()]
    if existing and not overwrite:
        raise InputError(f"{dataset} already holds case(s) {existing[:5]}; choose another folder "
                         f"or overwrite them (--force).")
    dataset.mkdir(parents=True, exist_ok=True)
    cohort = {"format": COHORT_FORMAT, "version": COHORT_VERSION, "seed": int(seed),
              "preset": preset if isinstance(preset, str) else "custom", "n": int(n),
              "config": config.to_dict(), "cases": []}
    cases = []
    with Progress("phantoms", len(ids), mode=progress) as bar:
        for i, cid in enumerate(ids):
            if cancel is not None:
                cancel.raise_if_cancelled()
            ph = make_phantom(case_seed(seed, i), config)
            cases.append(write_case(dataset, cid, ph.image, ph.initial, reference=ph.reference))
            cohort["cases"].append({"case_id": cid, "seed": ph.seed,
                                    "initial_dice": ph.errors["initial_dice"],
                                    "errors": {k: v for k, v in ph.errors.items()
                                               if k != "initial_dice"},
                                    "params": ph.params})
            bar.update(dice=round(ph.errors["initial_dice"], 4))
    atomic_write_text(dataset / COHORT_FILE, json.dumps(cohort, indent=1, default=float))
    return cases


def load_cohort(dataset: Union[str, os.PathLike]) -> dict:
    """The ``cohort.json`` of a phantom dataset."""
    path = Path(dataset) / COHORT_FILE
    if not path.exists():
        raise InputError(f"{dataset} has no {COHORT_FILE}; it was not made by "
                         f"`scorerefine phantoms`.")
    return json.loads(path.read_text())


__all__ = ["ERROR_TYPES", "PRESETS", "PhantomConfig", "PhantomCase", "make_phantom", "make_cohort",
           "get_preset", "case_seed", "case_spacing", "load_cohort", "dice"]
