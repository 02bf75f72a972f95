"""One refiner API: anything that turns (image, initial mask) into a refined mask.

A :class:`Refiner` has a ``name``, its ``settings`` (written to each prediction's sidecar) and is
called as ``refiner(image, initial) -> Volume`` on the image grid. Implementations:

* :class:`IdentityRefiner`: returns the initial mask (the "initial" baseline);
* :class:`ClassicalRefiner`: closing, hole filling, largest component
  (:func:`~SCORERefineLib.refiner.postprocess.classical_postprocess`);
* :class:`ModelRefiner`: a trained checkpoint
  (:func:`~SCORERefineLib.refiner.inference.refine_volume`), followed by the do-no-harm guard
  (:func:`~SCORERefineLib.refiner.guard.guard_volume`, on by default); torch is imported when it
  is built.

Optional per-case context: a refiner with ``accepts_context = True`` is called as
``refiner(image, initial, context={"regions": Volume | None, "feedback": CaseFeedback | None})``
by the prediction loop when the case has them; the plain ``refiner(image, initial)`` call keeps
working. After a call, ``refiner.last_info`` (a dict, possibly empty) holds what the call wants in
the prediction's sidecar (the model refiner's ``confidence``, ``guard``, ``fragments`` and
``veto`` reports).

:func:`make_refiner` takes a built-in name from ``catalog.BUILTIN_REFINERS`` or a checkpoint path.
Reading and writing case folders is :mod:`SCORERefineLib.predictions`' job. This module does not
import torch at import time.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from .catalog import BUILTIN_REFINERS, DEFAULT_THICK_LAYER_LLR, add_threshold_for
from .errors import InputError
from .imageio import Volume
from .progress import CancelToken
from .refiner.decision import check_threshold


@runtime_checkable
class Refiner(Protocol):
    """``refiner(image, initial) -> refined mask`` (uint8 0/1 Volume on ``initial``'s grid)."""

    name: str
    settings: dict

    def __call__(self, image: Volume, initial: Volume) -> Volume: ...


class IdentityRefiner:
    """Returns the initial mask unchanged (a baseline)."""

    name = "identity"

    def __init__(self) -> None:
        self.settings = {"method": self.name}

    def __call__(self, image: Volume, initial: Volume) -> Volume:
        return initial.with_array(initial.array.copy())


class ClassicalRefiner:
    """The non-learned baseline; ``image`` is not used (may be None)."""

    name = "classical"

    def __init__(self, closing_mm: float = 2.0, keep_largest: bool = True, fill_holes: bool = True):
        self.settings = {"method": self.name, "closing_mm": float(closing_mm),
                         "keep_largest": bool(keep_largest), "fill_holes": bool(fill_holes)}

    def __call__(self, image: Volume | None, initial: Volume) -> Volume:
        from .refiner.postprocess import classical_postprocess

        s = self.settings
        out = classical_postprocess(initial.array, initial.geometry.spacing_zyx, s["closing_mm"],
                                    keep_largest=s["keep_largest"], fill_holes=s["fill_holes"])
        return initial.with_array(out)


class ModelRefiner:
    """A trained refiner checkpoint, loaded once on ``device``.

    Args:
        path: checkpoint written by ``scorerefine train``.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        margin_mm, threshold, overlap, sw_batch_size: inference settings
            (:func:`~SCORERefineLib.refiner.inference.refine_volume`; ``threshold``: a voxel of
            the initial mask is kept where the probability is at least this).
        add_threshold: a voxel outside the initial mask is added where the probability is at
            least this (:func:`~SCORERefineLib.refiner.decision.decide_change`). None: the
            default of the checkpoint's training mode
            (:func:`~SCORERefineLib.catalog.add_threshold_for`: 0.4 for score), or ``threshold``
            for the other modes. ``settings["add_threshold_source"]`` says which.
        cancel: checked between sliding windows.
        progress: ``progress(done, total)`` over sliding windows.
        guard: clip the network's proposal with the do-no-harm guard
            (:func:`~SCORERefineLib.refiner.guard.guard_volume`); ``False`` only for ablations.
            The guard's margin ties to the model: the band the checkpoint was trained on
            (``GuardLimits.for_regions`` of ``metadata["regions"]`` or
            ``metadata["training"]["regions"]``) when the checkpoint records it, else the inference
            ``margin_mm``. With a case's regions (and ratings) in ``context`` the guard also lets
            changes inside regions and enforces the ratings.
        fragment_share: after the guard, pieces the refinement cut off an initial component that
            are smaller than this share of its largest piece are dropped
            (:func:`~SCORERefineLib.refiner.fragments.drop_cut_fragments`: a cut leak's body that
            lies beyond the zone); 0 keeps them. Reported in ``last_info["fragments"]``.
        veto: the appearance veto (:func:`~SCORERefineLib.refiner.veto.appearance_veto`) after
            the guard and the fragment rule (then the guard once more): added voxels that look
            like the surroundings and structure-like layers peeled off the boundary (by the
            case's own intensity statistics, learnt from the initial mask in this image) are
            taken back. ``False`` switches it off; skipped with
            ``guard=False`` (the raw network output). Reported in ``last_info["veto"]``.
        veto_thick_llr: also veto removed layers of any thickness whose mean evidence is above
            this (``VetoLimits.thick_layer_llr``; default
            :data:`~SCORERefineLib.catalog.DEFAULT_THICK_LAYER_LLR`, 0.8; None = off): a
            layer peeled more than two voxels deep otherwise passes as a cut protrusion.
        confidence: the confidence rule, before the guard: added pieces of the proposal that
            the network is nowhere sure of and that grow from a part of the initial mask it
            doubts are taken back (:func:`~SCORERefineLib.refiner.confidence.take_back_unsure_additions`;
            ``True``: :class:`~SCORERefineLib.refiner.confidence.ConfidenceLimits` defaults,
            a ``ConfidenceLimits``: those, ``False``: off). Applies with ``guard=False`` too (it is
            part of turning the probability into a proposal). Reported in
            ``last_info["confidence"]``.
        tta: test-time augmentation: each sliding window's probability is the mean over its
            16 flipped and turned views
            (:func:`~SCORERefineLib.refiner.inference.view_mean_probability`; 16 network passes
            per window). ``False``: one pass. ``settings["tta"]`` records what ran (False for a
            checkpoint trained without augmentation, or an ensemble with such a member).
        also: more checkpoints of the same setting (e.g. ``scorerefine train --seed 1``, ``2``):
            the proposal is then the mean foreground probability of all the models, thresholded
            (an ensemble: ``model`` is then a
            :class:`~SCORERefineLib.refiner.inference.MeanProbability`, so inference runs once;
            on the real-CT presets three SCORE seeds averaged made no case worse where single
            seeds did, though not a harm that every seed agreed on; docs/score-loss.md, stop 22). They must share the first checkpoint's input
            channels, normalisation, patch size, spacing and trained regions (so one guard
            margin holds for all), else :class:`CheckpointError`. Listed in
            ``settings["ensemble"]`` (and so in the prediction sidecar).

    After each call ``last_info["guard"]`` is the guard's report (what it clipped and why, the
    margin and where it came from); the prediction loop writes it to the sidecar.

    Raises:
        InputError: no file at ``path``; CheckpointError: not a usable checkpoint.
    """

    name = "refiner"
    accepts_context = True

    def __init__(self, path: str | os.PathLike, device: str = "auto", margin_mm: float = 10.0,
                 threshold: float = 0.5, overlap: float = 0.25, sw_batch_size: int = 4,
                 cancel: CancelToken | None = None,
                 progress: Callable[[int, int], None] | None = None, guard: bool = True,
                 fragment_share: float | None = None,
                 also: Sequence[str | os.PathLike] = (),
                 veto: bool = True, tta: bool = True,
                 veto_thick_llr: float | None = DEFAULT_THICK_LAYER_LLR,
                 confidence: "ConfidenceLimits | bool | None" = True,
                 add_threshold: float | None = None):
        from .refiner.inference import MeanProbability, load_model, resolve_device, tta_allowed

        self.path = Path(path)
        self.device = resolve_device(device)
        self.model, self.metadata = load_model(self.path, self.device)
        views_suit = tta_allowed(self.metadata)
        if also:
            members = [self.model]
            for extra in also:
                model, meta = load_model(Path(extra), self.device)
                _check_same_setting(self.path, self.metadata, Path(extra), meta)
                members.append(model)
                views_suit = views_suit and tta_allowed(meta)   # every member was trained on them
            self.model = MeanProbability(members)
        self.cancel, self.progress = cancel, progress
        self.veto_limits = veto_limits_for(veto_thick_llr)
        self.confidence = confidence_limits_for(confidence)
        threshold = check_threshold(threshold)
        add_threshold, add_source = self._add_threshold(add_threshold, threshold)
        self.settings = {"method": self.name, "model": str(self.path), "device": str(self.device),
                         "margin_mm": float(margin_mm), "threshold": threshold,
                         "add_threshold": add_threshold, "add_threshold_source": add_source,
                         "overlap": float(overlap), "sw_batch_size": int(sw_batch_size),
                         "guard": bool(guard), "fragment_share": _fragment_share(fragment_share),
                         "veto": bool(veto),
                         "veto_thick_llr": self.veto_limits.thick_layer_llr,
                         "confidence": (None if self.confidence is None
                                        else asdict(self.confidence)),
                         "tta": bool(tta) and views_suit}
        if also:
            self.settings["ensemble"] = [str(self.path)] + [str(Path(p)) for p in also]
        self.last_info: dict = {}
        if guard:
            limits, source = self.guard_limits()
            self.settings.update(guard_margin_mm=float(limits.margin_mm),
                                 guard_margin_source=source)

    def _add_threshold(self, given: float | None, threshold: float) -> tuple[float, str]:
        """``(add threshold, where it came from)``: the one given, else the training mode's
        default (``mode <name>``), else ``threshold`` (``threshold``)."""
        if given is not None:
            return check_threshold(given, "add threshold"), "given"
        mode = (self.metadata or {}).get("mode")
        default = add_threshold_for(mode)
        if default is None:
            return threshold, "threshold"
        return default, f"mode {mode}"

    def guard_limits(self):
        """``(GuardLimits, source)``: the training band from the checkpoint's metadata when it
        records the regions it was trained on, else the inference margin."""
        from .refiner.guard import GuardLimits

        meta = self.metadata or {}
        training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
        for source, info in (("metadata.regions", meta.get("regions")),
                             ("metadata.training.regions", training.get("regions"))):
            if isinstance(info, dict) and ("band_mm" in info or "max_band_mm" in info):
                return GuardLimits.for_regions(info), source
        return GuardLimits(margin_mm=float(self.settings["margin_mm"])), "inference margin_mm"

    def __call__(self, image: Volume, initial: Volume, context: dict | None = None) -> Volume:
        from .refiner.inference import refine_volume

        if image is None:
            raise InputError("a trained refiner needs the CT image (--image) besides the mask.")
        s = self.settings
        self.last_info = {}
        stages: dict = {}
        proposed = refine_volume(self.model, self.metadata, image, initial, self.device,
                                 s["margin_mm"], s["threshold"], s["overlap"], s["sw_batch_size"],
                                 progress=self.progress, cancel=self.cancel, tta=s["tta"],
                                 timings=stages, confidence=self.confidence,
                                 add_threshold=s["add_threshold"])
        if "confidence" in stages:
            self.last_info["confidence"] = stages["confidence"]
        if not s["guard"]:
            return proposed
        from .refiner.guard import guard_volume
        from .refiner.fragments import drop_cut_fragments

        context = context or {}
        limits, source = self.guard_limits()
        regions, feedback = context.get("regions"), context.get("feedback")
        out, report = guard_volume(initial, proposed, limits=limits, regions=regions,
                                   feedback=feedback)
        report["margin_source"] = source
        report["used_regions"] = regions is not None
        report["used_ratings"] = feedback is not None and regions is not None
        self.last_info["guard"] = report
        if s["fragment_share"] > 0:
            kept, frag = drop_cut_fragments(initial.array, out.array, s["fragment_share"])
            out = initial.with_array(kept)
            self.last_info["fragments"] = frag
        if s["veto"]:
            out = self._veto(image, initial, out, limits, regions, feedback)
        return out

    def _veto(self, image: Volume, initial: Volume, guarded: Volume, limits, regions,
              feedback) -> Volume:
        """The appearance veto on the guarded result, then the guard once more: taking an added
        voxel back can leave added voxels beyond it detached, which the guard removes (counted
        in the report's ``guard_after``)."""
        from .refiner.guard import guard_volume
        from .refiner.veto import appearance_veto

        kept, veto = appearance_veto(image.array, initial.array, guarded.array,
                                     image.geometry.spacing_zyx,
                                     self.veto_limits,
                                     normalisation=(self.metadata or {}).get("normalisation"))
        out = initial.with_array(kept)
        if veto["vetoed_added"] or veto["vetoed_removed"]:
            out, again = guard_volume(initial, out, limits=limits, regions=regions,
                                      feedback=feedback)
            veto["guard_after"] = int(again.get("clipped_total", 0))
        self.last_info["veto"] = veto
        return out


#: metadata that must agree between the checkpoints of one ensemble
_ENSEMBLE_KEYS = ("channels", "normalisation", "patch_size", "spacing_mm", "regions")


def _check_same_setting(first: Path, meta: dict, other: Path, other_meta: dict) -> None:
    from .errors import CheckpointError

    def setting(m: dict | None) -> dict:
        m = m or {}
        training = m.get("training") if isinstance(m.get("training"), dict) else {}
        return {**{k: m.get(k) for k in _ENSEMBLE_KEYS},
                "training.regions": training.get("regions")}

    mine, theirs = setting(meta), setting(other_meta)
    for key in mine:
        if mine[key] != theirs[key]:
            raise CheckpointError(
                f"checkpoint {other} cannot join an ensemble with {first}: its '{key}' differs "
                f"({theirs[key]!r} against {mine[key]!r}). Average only models trained the same "
                "way on the same data (other seeds).")


def _fragment_share(value: float | None) -> float:
    from .refiner.fragments import FRAGMENT_SHARE

    v = FRAGMENT_SHARE if value is None else float(value)
    if not 0.0 <= v < 1.0:
        raise InputError(f"fragment share must be in [0, 1), got {value}.")
    return v


def parse_thick_llr(text: str) -> float | None:
    """A command line's thick-layer threshold: a number, or ``off`` (None)."""
    if str(text).strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--veto-thick-llr takes an evidence threshold (LLR units, e.g. 0.9) or "
                         f"'off', got {text!r}") from None


def veto_limits_for(thick_llr: float | None):
    """The appearance veto's limits with the thick-layer threshold (validated by
    :class:`~.refiner.veto.VetoLimits`; a bad one is refused as an InputError)."""
    from .refiner.veto import VetoLimits

    try:
        return VetoLimits(thick_layer_llr=thick_llr)
    except ValueError as exc:
        raise InputError(f"the thick-layer veto needs a finite evidence threshold (LLR units, "
                         f"e.g. 0.9), got {thick_llr!r}; 'off' (None) switches it "
                         f"off.") from exc


#: built-in refiner name -> class (names and labels: ``catalog.BUILTIN_REFINERS``)
BUILTIN: dict[str, type] = {
    IdentityRefiner.name: IdentityRefiner,
    ClassicalRefiner.name: ClassicalRefiner,
}


def confidence_limits_for(setting) -> "ConfidenceLimits | None":
    """The confidence rule's limits from a refiner setting: True (the defaults), False or None
    (off) or a :class:`~.refiner.confidence.ConfidenceLimits`.

    Raises:
        InputError: anything else (named, with the fix).
    """
    from .refiner.confidence import ConfidenceLimits

    if setting is True:
        return ConfidenceLimits()
    if setting is False or setting is None:
        return None
    if isinstance(setting, ConfidenceLimits):
        return setting
    raise InputError(f"the confidence rule takes True (on, the defaults), False (off) or a "
                     f"ConfidenceLimits, got {setting!r}")


def checkpoint_list(text: str) -> list[Path]:
    """The checkpoints of a ``;``-separated list (the panel's "Also average" field; blanks
    ignored), each checked to exist.

    Raises:
        InputError: a listed file does not exist (named, with the fix).
    """
    paths = [Path(p.strip()) for p in str(text or "").split(";") if p.strip()]
    for p in paths:
        if not p.is_file():
            raise InputError(f"no checkpoint at {p} (in the list of models to average with); "
                             f"give the .pt files of the same setting trained with other seeds, "
                             f"separated by ';', or clear the field.")
    return paths


def make_refiner(name_or_path: str | os.PathLike, device: str = "auto", **settings) -> Refiner:
    """A refiner from a built-in name or a checkpoint path.

    Args:
        name_or_path: ``"identity"``, ``"classical"`` (``catalog.BUILTIN_REFINERS``) or the path
            of a checkpoint.
        device: device of a model refiner (ignored by the built-ins).
        **settings: the refiner's own settings (``closing_mm`` for classical; ``margin_mm``,
            ``threshold``, ``add_threshold``, ``overlap``, ``sw_batch_size``, ``cancel``, ``progress``, ``guard``,
            ``fragment_share``, ``veto``, ``veto_thick_llr``, ``confidence``, ``tta`` and ``also`` (more
            checkpoints to average with) for a model).

    Returns:
        The refiner.

    Raises:
        InputError: a missing checkpoint file or a setting the refiner does not take.
    """
    key = str(name_or_path).strip().lower()
    if key in BUILTIN and key in BUILTIN_REFINERS:
        cls = BUILTIN[key]
        try:
            return cls(**settings)
        except TypeError as exc:
            raise InputError(f"refiner '{key}' does not take settings {sorted(settings)}: {exc}") from exc
    return ModelRefiner(name_or_path, device=device, **settings)
