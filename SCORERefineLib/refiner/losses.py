"""The SCORE loss: train a refiner from regional ratings alone (no dense reference).

Notation (all tensors on one patch batch):

* ``P = sigmoid(logits)``: refined foreground probability, shape ``(B, 1, z, y, x)``.
* ``M0``: initial mask, ``(B, 1, z, y, x)`` float 0/1.
* ``regions``: ``(B, 1, z, y, x)`` long region ids, 0 = in no region. Ids index per-item tables.
* ``agreement``: ``(B, K+1)`` float, c(s) of each region (:func:`calibration.score_to_agreement`),
  for rated regions; ``rated``: ``(B, K+1)`` bool (entry 0 always False).
* ``error``: ``(B, K+1)`` long, :data:`NONE`, :data:`OVER` or :data:`UNDER`.
* ``valid``: ``(B, 1, z, y, x)`` float, 1 inside the image (0 where a patch was padded).

Terms (each a function below, each returning a scalar; weights in :class:`ScoreLossWeights`):

direction
    Over-segmented region R: the truth lies inside M0 in R, so ``mean_{R \\ M0} P`` is penalised.
    Under-segmented: the truth contains M0 in R, so ``mean_{R & M0} (1 - P)`` is penalised. This
    resolves the sign ambiguity of the amount term (Dice drops by adding *or* removing voxels).
amount
    ``(softDice_R(P, M0) - c(s))^2`` per rated region: the refined mask should agree with the
    initial mask as much as the score says; a 5 (c = 1) pins P to M0 in R.
anchor
    Outside every region (far from the boundary) P follows M0: BCE(logits, M0) there.
edge
    A geodesic (edge-weighted total-variation) energy in the regions: ``mean (1 - E) |grad P|``
    with E the edge prior; minimising it moves P's boundary to where E is high.

Regions are averaged with weights = their voxel count in the patch, so a region grazed by a
patch corner has little say. ``trust`` ((B, K+1), optional, :class:`~.targets.RegionTables`)
scales a region's contribution (a filled-in rating counts ``q^2``) without entering the
normalisation; None or all ones gives exactly the untrusted loss. See docs/score-loss.md for choices and experiments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F

from ..calibration import score_to_agreement
from .targets import ERROR_CODES, NONE, OVER, UNDER, Batch, target_volume_ratio  # noqa: F401

_EPS = 1e-6


@dataclass
class ScoreLossWeights:
    """Weight of each SCORE loss term (0 switches a term off)."""

    direction: float = 1.0        # net-volume direction (:func:`net_direction_loss`)
    amount: float = 0.0           # soft-Dice amount (:func:`amount_loss`), the first form
    anchor: float = 0.5
    edge: float = 0.05
    direction_voxel: float = 0.0  # per-voxel direction (:func:`direction_loss`), the first form
    anchor_margin: float = 2.0    # squared-hinge anchor margin (logit); <= 0: plain BCE anchor
    pin: float = 0.5              # regions scored 5: per-voxel anchor inside them (:func:`pin_loss`)
    volume: float = 0.0           # volume form of the amount (:func:`volume_loss`)
    sharp: float = 0.0            # decisiveness in the band (:func:`sharpness_loss`)
    pseudo: float = 1.0           # ranked per-voxel pseudo-labels (:func:`pseudo_label_loss`)
    pseudo_depth_per_mm: float = 1.0  # ranking prior: logit units per mm of depth
    use_error_type: bool = True   # False: pseudo-labels ignore over/under (the no-direction ablation)
    pseudo_flip_weight: float = 12.0  # BCE weight of voxels whose pseudo-label differs from M0
    # BCE weight of pseudo-label additions (outside M0, target 1); <= 0: pseudo_flip_weight.
    # Rated bands hold more outside voxels than inside ones, and most outside voxels are labelled
    # "stay background", so at the removals' weight a network never learnt to add (real CT: not one
    # voxel added on 15 cases; docs/score-loss.md, stop 24)
    pseudo_add_weight: float = 12.0
    pseudo_fraction: float = 0.6  # share of the implied number of changed voxels actually labelled
    pseudo_ignore: float = 0.0    # next share of the implied count, after the labelled one, left unlabelled
    # regions rated above these scores get no flips on that side (removals for "over", additions
    # for "under"): a 4's count is within a rating's noise, and on real CT its flips were mostly
    # wrong (docs/score-loss.md, stop 30); 4 = every rated error region flips. Defaults since
    # stop 34 (before: 4, 4, removals weighted 3, no thin rule; the profile ``broad``): with
    # them the organs at the hidden set's error size lost no case where the old ones made 2-5
    # of 16 worse (docs/score-loss.md, stops 33-34)
    pseudo_remove_max_score: int = 2
    pseudo_add_max_score: int = 3
    # what such a region's voxels are labelled: False "as M0" (weight 1), True unlabelled (weight 0)
    pseudo_above_max_unlabelled: bool = False
    # > 0: regions on a part of the structure whose half-thickness is below this many mm (a rib;
    # ``modes.score.thin_regions``) keep the broad removal rule (``broad``), whatever the two
    # settings above and pseudo_flip_weight say: no score limits, removals weighted
    # pseudo_thin_flip_weight. The weighted, limited removals that the organs need peeled thin
    # bones on real CT (docs/score-loss.md, stops 30 and 31); 0: off
    pseudo_thin_mm: float = 8.0
    pseudo_thin_flip_weight: float = 3.0

    #: named settings for :meth:`parse` (``--loss-weights broad``, later ``name=value`` parts
    #: override them). ``organs``: the defaults since stop 34 (flips only in regions rated <= 2
    #: (removals) and <= 3 (additions), removals weighted as additions (12), thin parts (ribs,
    #: < 8 mm half-thickness) on the broad removal rule); the name stays for the commands of
    #: stops 31-33. ``broad``: the defaults before stop 34 (flips in every rated error region,
    #: removals weighted 3): more gain on structures absent from training (phantoms, the unseen
    #: test structures of ``real`` and ``real_abdomen_x2``), but on organs at the hidden set's
    #: error size it never removes and grows the initial leaks (docs/score-loss.md, stops 30-34).
    PROFILES = {"organs": {"pseudo_remove_max_score": 2, "pseudo_add_max_score": 3,
                           "pseudo_flip_weight": 12.0, "pseudo_thin_mm": 8.0},
                "broad": {"pseudo_remove_max_score": 4, "pseudo_add_max_score": 4,
                          "pseudo_flip_weight": 3.0, "pseudo_thin_mm": 0.0}}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> "ScoreLossWeights":
        """Weights from text.

        Args:
            text: ``"direction=1,amount=2,edge=0,use_error_type=false"``; unnamed terms keep
                their default. A part without ``=`` names a :attr:`PROFILES` entry
                (``"organs"``, ``"organs,pseudo_thin_mm=0"``); parts apply from left to right.

        Returns:
            The weights.

        Raises:
            ValueError: a part is not ``name=value``, names no setting, or has a bad value.
        """
        w = cls()
        kinds = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                if part.lower() not in cls.PROFILES:
                    raise ValueError(f"loss weight '{part}' must look like name=value or name a "
                                     f"profile ({', '.join(sorted(cls.PROFILES))})")
                for k, v in cls.PROFILES[part.lower()].items():
                    setattr(w, k, v)
                continue
            k, v = (s.strip() for s in part.split("=", 1))
            if k not in kinds:
                raise ValueError(f"unknown loss term '{k}'; terms: {sorted(kinds)}")
            if kinds[k] in (bool, "bool"):
                if v.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(f"loss switch '{k}' takes true/false, got '{v}'")
                setattr(w, k, v.lower() in ("1", "true", "yes", "on"))
            else:
                setattr(w, k, float(v))
        flip_limits(w)      # the per-side score limits are whole scores 1-5
        return w


def _flat_ids(regions: torch.Tensor, n_table: int) -> torch.Tensor:
    """(B,1,...) per-item ids -> (B*N,) ids into a flattened (B*(K+1),) table."""
    b = regions.shape[0]
    offs = (torch.arange(b, device=regions.device) * n_table).view(b, *([1] * (regions.dim() - 1)))
    return (regions.long() + offs).reshape(-1)


def region_sums(values: torch.Tensor, regions: torch.Tensor, n_table: int) -> torch.Tensor:
    """Sum ``values`` (B,1,...) per region: returns (B, n_table)."""
    ids = _flat_ids(regions, n_table)
    out = torch.zeros(regions.shape[0] * n_table, dtype=values.dtype, device=values.device)
    out.index_add_(0, ids, values.reshape(-1))
    return out.view(regions.shape[0], n_table)


def _weighted_mean(per_region: torch.Tensor, weight: torch.Tensor,
                   trust: torch.Tensor | None = None) -> torch.Tensor:
    total = weight.sum()
    if total <= 0:
        return per_region.sum() * 0.0
    if trust is not None:
        return (per_region * weight * trust.to(weight.dtype)).sum() / total
    return (per_region * weight).sum() / total


def _voxel_trust(trust: torch.Tensor | None, regions: torch.Tensor, like: torch.Tensor):
    """The per-region ``trust`` table spread over the voxels (B,1,...); None stays None."""
    if trust is None:
        return None
    k = trust.shape[1]
    return torch.gather(trust.reshape(-1).to(like.dtype), 0, _flat_ids(regions, k)).view_as(like)


def direction_loss(prob: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                   error: torch.Tensor, valid: torch.Tensor | None = None,
                   trust: torch.Tensor | None = None) -> torch.Tensor:
    """Over: mean P over R\\M0; under: mean (1-P) over R&M0; averaged over regions with a direction.

    Shapes: prob/initial/regions/valid (B,1,z,y,x); error (B, K+1). Returns a scalar >= 0.
    """
    v = torch.ones_like(prob) if valid is None else valid
    k = error.shape[1]
    out_m0 = (1.0 - initial) * v
    in_m0 = initial * v
    over_num = region_sums(prob * out_m0, regions, k)
    over_den = region_sums(out_m0, regions, k)
    under_num = region_sums((1.0 - prob) * in_m0, regions, k)
    under_den = region_sums(in_m0, regions, k)
    is_over = (error == OVER)
    is_under = (error == UNDER)
    is_over[:, 0] = False
    is_under[:, 0] = False
    per = torch.where(is_over, over_num / over_den.clamp_min(1.0),
                      torch.where(is_under, under_num / under_den.clamp_min(1.0),
                                  torch.zeros_like(over_num)))
    weight = torch.where(is_over, over_den, torch.where(is_under, under_den, torch.zeros_like(over_den)))
    return _weighted_mean(per, weight, trust)


def net_direction_loss(prob: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                       error: torch.Tensor, valid: torch.Tensor | None = None,
                       trust: torch.Tensor | None = None) -> torch.Tensor:
    """Net-volume direction: over -> ``relu(sum_R P - sum_R M0) / sum_R M0`` (no net growth),
    under -> ``relu(sum_R M0 - sum_R P) / sum_R M0`` (no net shrinkage).

    A softer form of :func:`direction_loss`: a region has one dominant error type, but often
    holds some voxels of the other kind (e.g. steps of a blocky mask); the truth then pays the
    per-voxel term but not this one. Shapes as :func:`direction_loss`.
    """
    v = torch.ones_like(prob) if valid is None else valid
    k = error.shape[1]
    sp = region_sums(prob * v, regions, k)
    sm = region_sums(initial * v, regions, k)
    is_over = (error == OVER)
    is_under = (error == UNDER)
    is_over[:, 0] = False
    is_under[:, 0] = False
    denom = sm.clamp_min(1.0)
    per = torch.where(is_over, F.relu(sp - sm) / denom,
                      torch.where(is_under, F.relu(sm - sp) / denom, torch.zeros_like(sp)))
    weight = torch.where(is_over | is_under, region_sums(v, regions, k), torch.zeros_like(sp))
    return _weighted_mean(per, weight, trust)


def soft_dice_per_region(prob: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                         n_table: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice between P and M0 inside each region: (B, K+1), ``2 sum PM0 / (sum P + sum M0)``."""
    v = torch.ones_like(prob) if valid is None else valid
    inter = region_sums(prob * initial * v, regions, n_table)
    sp = region_sums(prob * v, regions, n_table)
    sm = region_sums(initial * v, regions, n_table)
    return (2.0 * inter + _EPS) / (sp + sm + _EPS)


def amount_loss(prob: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                agreement: torch.Tensor, rated: torch.Tensor,
                valid: torch.Tensor | None = None, trust: torch.Tensor | None = None) -> torch.Tensor:
    """``(softDice_R(P, M0) - c(s_R))^2`` averaged (voxel-count weighted) over rated regions.

    Shapes: prob/initial/regions/valid (B,1,z,y,x); agreement (B,K+1) float; rated (B,K+1) bool.
    """
    v = torch.ones_like(prob) if valid is None else valid
    k = agreement.shape[1]
    dice = soft_dice_per_region(prob, initial, regions, k, v)
    count = region_sums(v, regions, k)
    r = rated.clone()
    r[:, 0] = False
    weight = torch.where(r, count, torch.zeros_like(count))
    return _weighted_mean((dice - agreement) ** 2, weight, trust)


def volume_loss(prob: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                agreement: torch.Tensor, rated: torch.Tensor, error: torch.Tensor,
                valid: torch.Tensor | None = None, trust: torch.Tensor | None = None) -> torch.Tensor:
    """``(sum_R P / sum_R M0 - rho(c, t))^2``, voxel-count weighted over rated regions.

    The amount and the direction in one number: the refined volume in R should be the truth's
    volume the score and error type imply (:func:`target_volume_ratio`). Unlike the soft Dice it
    cannot be met by blurring P (blurring keeps the volume). Shapes as :func:`amount_loss`;
    ``error`` (B, K+1).
    """
    v = torch.ones_like(prob) if valid is None else valid
    k = agreement.shape[1]
    sp = region_sums(prob * v, regions, k)
    sm = region_sums(initial * v, regions, k)
    rho = target_volume_ratio(agreement, error)
    r = rated.clone()
    r[:, 0] = False
    r = r & (sm > 0)
    weight = torch.where(r, region_sums(v, regions, k), torch.zeros_like(sp))
    return _weighted_mean((sp / sm.clamp_min(1.0) - rho) ** 2, weight, trust)


def sharpness_loss(prob: torch.Tensor, regions: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_{band} 4 P (1 - P)``: P decisive (near 0 or 1) in the regions, so the amount and
    volume terms are met by moving the boundary, not by making P fuzzy."""
    band = (regions > 0).to(prob.dtype)
    if valid is not None:
        band = band * valid
    return (4.0 * prob * (1.0 - prob) * band).sum() / band.sum().clamp_min(1.0)


def pseudo_labels(logits: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                  agreement: torch.Tensor, rated: torch.Tensor, error: torch.Tensor,
                  depth: torch.Tensor, valid: torch.Tensor | None = None,
                  depth_per_mm: float = 1.0, use_error_type: bool = True,
                  fraction: float = 1.0, ignore: float = 0.0,
                  remove_max_agreement: float = 1.0, add_max_agreement: float = 1.0,
                  above_max_unlabelled: bool = False,
                  thin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-voxel targets implied by each rated region's score and error type (no gradient).

    Over region R: the truth is M0 minus a share ``1 - rho(c)`` of M0&R (:func:`target_volume_ratio`);
    the voxels dropped are those ranked lowest by ``logit + depth_per_mm * depth`` (depth: signed
    distance to the M0 surface in mm, positive inside), i.e. first the ones the network already
    doubts, ties broken by "outermost first". R\M0 is background. Under: the ``(rho - 1) |M0&R|``
    voxels of R\M0 ranked highest by ``logit + depth_per_mm * depth`` (nearest the mask first) are
    foreground, M0&R stays foreground. Regions with error none get M0.
    ``fraction`` < 1 labels only that share of the implied count (the most certain ones): c(s)
    is the middle of a score's Dice interval and regions are rarely pure, so the full count
    over-shoots (measured: 57% of pseudo-added voxels right at fraction 1).
    ``ignore`` > 0 leaves the next ``ignore`` share of the implied count (the candidates ranked
    just after the labelled ones) unlabelled (weight 0) instead of labelling them "as M0": they
    are as likely wrong in M0 as the labelled flips, so asking the network to keep them would
    teach it to under-correct.
    ``remove_max_agreement`` / ``add_max_agreement``: an over / under region whose agreement c
    is above it flips nothing; its voxels are labelled as M0, or left unlabelled (weight 0) with
    ``above_max_unlabelled``. ``thin`` (B,1,z,y,x), optional: regions whose voxels are mostly
    > 0.5 there (thin parts of the structure, ``modes.score.thin_regions``) ignore both limits.
    ``use_error_type=False`` (ablation): the type is not used; the ``(1 - rho_over) |M0&R|`` voxels
    of R that agree least with M0 (inside: lowest key; outside: highest) flip. Returns
    ``(target, weight)`` (B,1,z,y,x), weight 1 on rated region voxels inside the image.
    """
    with torch.no_grad():
        v = torch.ones_like(logits) if valid is None else valid
        k = agreement.shape[1]
        rho = target_volume_ratio(agreement, error)
        target = initial.clone()
        weight = torch.zeros_like(logits)
        key = logits.float() + float(depth_per_mm) * depth.float()
        for b in range(logits.shape[0]):
            reg_b = regions[b, 0]
            labels = torch.unique(reg_b)
            for r in labels.tolist():
                if r == 0 or r >= k or not bool(rated[b, r]):
                    continue
                sel = (reg_b == r) & (v[b, 0] > 0)
                if not bool(sel.any()):
                    continue
                weight[b, 0][sel] = 1.0
                m = initial[b, 0]
                inside = sel & (m > 0.5)
                outside = sel & (m <= 0.5)
                n_in = int(inside.sum())
                e = int(error[b, r])
                c_r = float(agreement[b, r])
                limited = thin is None or float(thin[b, 0][sel].float().mean()) <= 0.5
                if use_error_type and limited and ((e == OVER and c_r > remove_max_agreement)
                                                   or (e == UNDER and c_r > add_max_agreement)):
                    if above_max_unlabelled:
                        weight[b, 0][sel] = 0.0
                    continue
                if not use_error_type:
                    if e == NONE:
                        continue
                    n_flip = int(round(fraction * (1.0 - c_r / (2.0 - c_r)) * n_in))
                    idx = torch.nonzero(sel.reshape(-1)).squeeze(1)
                    sign = 2.0 * m.reshape(-1)[idx] - 1.0
                    order = torch.argsort(sign * key[b, 0].reshape(-1)[idx])
                    flip = idx[order[:n_flip]]
                    target[b, 0].view(-1)[flip] = 1.0 - target[b, 0].view(-1)[flip]
                elif e == OVER and n_in:
                    n_drop = int(round(fraction * (1.0 - float(rho[b, r])) * n_in))
                    n_skip = int(round(ignore * (1.0 - float(rho[b, r])) * n_in))
                    if n_drop + n_skip > 0:
                        idx = torch.nonzero(inside.reshape(-1)).squeeze(1)
                        order = torch.argsort(key[b, 0].reshape(-1)[idx])
                        target[b, 0].view(-1)[idx[order[:n_drop]]] = 0.0
                        weight[b, 0].view(-1)[idx[order[n_drop:n_drop + n_skip]]] = 0.0
                elif e == UNDER:
                    n_add = int(round(fraction * (float(rho[b, r]) - 1.0) * n_in))
                    n_skip = int(round(ignore * (float(rho[b, r]) - 1.0) * n_in))
                    idx = torch.nonzero(outside.reshape(-1)).squeeze(1)
                    n_add = min(n_add, int(idx.numel()))
                    if n_add + n_skip > 0:
                        order = torch.argsort(key[b, 0].reshape(-1)[idx], descending=True)
                        target[b, 0].view(-1)[idx[order[:n_add]]] = 1.0
                        weight[b, 0].view(-1)[idx[order[n_add:n_add + n_skip]]] = 0.0
    return target, weight


def pseudo_label_loss(logits: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                      agreement: torch.Tensor, rated: torch.Tensor, error: torch.Tensor,
                      depth: torch.Tensor, valid: torch.Tensor | None = None,
                      depth_per_mm: float = 1.0, use_error_type: bool = True,
                      flip_weight: float = 1.0, fraction: float = 1.0,
                      trust: torch.Tensor | None = None, ignore: float = 0.0,
                      add_weight: float | None = None, remove_max_agreement: float = 1.0,
                      add_max_agreement: float = 1.0,
                      above_max_unlabelled: bool = False,
                      thin: torch.Tensor | None = None,
                      thin_flip_weight: float | None = None) -> torch.Tensor:
    """BCE(logits, :func:`pseudo_labels`) over rated region voxels: the amount and the direction
    as dense per-voxel targets, chosen by the network's own ranking (learning from label
    proportions, top-k). A per-voxel target gives every voxel a full-strength gradient, where
    the region-level soft Dice spreads one number thinly over the region and can be met by
    blurring P instead of moving the boundary.

    Voxels whose target differs from M0 weigh ``flip_weight``; additions (M0 = 0, target 1)
    weigh ``add_weight`` instead when it is given and positive. Without it the additions were
    never learnt on real CT: in the rated bands the outside voxels labelled "stay background"
    outnumbered the additions 16 to 1 (the removals 3.5 to 1), so the network's best guess for
    an outside voxel stayed below 0.5 (docs/score-loss.md, stop 24).
    ``thin`` (B,1,z,y,x) with ``thin_flip_weight``: removals where ``thin > 0.5`` weigh
    ``thin_flip_weight`` instead of ``flip_weight`` (and :func:`pseudo_labels` ignores the limits
    on those regions)."""
    target, weight = pseudo_labels(logits, initial, regions, agreement, rated, error, depth, valid,
                                   depth_per_mm, use_error_type, fraction, ignore,
                                   remove_max_agreement, add_max_agreement, above_max_unlabelled,
                                   thin)
    add_w = float(flip_weight) if add_weight is None or add_weight <= 0 else float(add_weight)
    if flip_weight != 1.0 or add_w != 1.0 or thin is not None:
        remove_w = torch.full_like(weight, float(flip_weight))
        if thin is not None and thin_flip_weight is not None:
            remove_w = torch.where(thin > 0.5, torch.full_like(weight, float(thin_flip_weight)),
                                   remove_w)
        flip = (target - initial).abs() > 0.5
        weight = weight * torch.where(
            flip & (initial < 0.5), torch.full_like(weight, add_w),
            torch.where(flip, remove_w, torch.ones_like(weight)))
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    tv = _voxel_trust(trust, regions, bce)
    if tv is not None:
        return (bce * weight * tv).sum() / weight.sum().clamp_min(1.0)
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def _follow_initial(logits: torch.Tensor, initial: torch.Tensor, selection: torch.Tensor,
                    margin: float | None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over ``selection`` (weights, (B,1,z,y,x)) of how far the logits are from following
    M0: BCE when ``margin`` is None, else the squared hinge ``relu(margin - (2 M0 - 1) z)^2``
    (zero once a voxel agrees with M0 by ``margin`` logits)."""
    if margin is None:
        per = F.binary_cross_entropy_with_logits(logits, initial, reduction="none")
    else:
        per = F.relu(float(margin) - (2.0 * initial - 1.0) * logits) ** 2
    if scale is not None:   # per-voxel trust: scales the terms, not the normalisation
        return (per * selection * scale).sum() / selection.sum().clamp_min(1.0)
    return (per * selection).sum() / selection.sum().clamp_min(1.0)


def anchor_loss(logits: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
                valid: torch.Tensor | None = None,
                weight: torch.Tensor | None = None,
                margin: float | None = None) -> torch.Tensor:
    """P follows M0 on voxels in no region (``regions == 0``) inside the image.

    ``margin=None``: BCE(logits, M0). ``margin=m``: the squared hinge
    ``relu(m - (2 M0 - 1) * logits)^2``: the logit must stay on M0's side by at least ``m``.
    The hinge is zero (with zero gradient) for the untrained residual network (logit
    ``+-residual_gain``), so the anchor only resists changes instead of asking the network to
    sharpen every far voxel (which BCE does, and which swamped the rating terms).
    ``weight`` (B,1,z,y,x), optional: a per-voxel anchor weight (ScoreMode sets it to 0 within
    ``anchor_exclusion_mm`` of regions scored <= 2, whose errors often reach past the band).
    """
    mask = (regions == 0).to(logits.dtype)
    if valid is not None:
        mask = mask * valid
    if weight is not None:
        mask = mask * weight
    return _follow_initial(logits, initial, mask, margin)


def pin_loss(logits: torch.Tensor, initial: torch.Tensor, regions: torch.Tensor,
             agreement: torch.Tensor, rated: torch.Tensor, valid: torch.Tensor | None = None,
             margin: float | None = 2.0, min_agreement: float = 0.999,
             trust: torch.Tensor | None = None) -> torch.Tensor:
    """Per-voxel anchor inside rated regions whose c(s) >= ``min_agreement`` (a consensus 5:
    "no visible error"): the same hinge/BCE as :func:`anchor_loss`, averaged over those voxels.

    The amount term pins such regions too, but only through one soft Dice per region (a weak,
    diluted gradient); a 5 is in effect a dense label of a correct boundary, the best example the
    network gets of what a right boundary looks like. Shapes as :func:`amount_loss`.
    """
    r = rated & (agreement >= min_agreement)
    r = r.clone()
    r[:, 0] = False
    k = agreement.shape[1]
    sel = torch.gather(r.reshape(-1).to(logits.dtype), 0, _flat_ids(regions, k)).view_as(logits)
    if valid is not None:
        sel = sel * valid
    return _follow_initial(logits, initial, sel, margin, _voxel_trust(trust, regions, logits))


def spatial_gradient_magnitude(prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """|grad P| by forward differences (voxel units), (B,1,z,y,x) -> (B,1,z-1,y-1,x-1)."""
    dz = prob[:, :, 1:, :-1, :-1] - prob[:, :, :-1, :-1, :-1]
    dy = prob[:, :, :-1, 1:, :-1] - prob[:, :, :-1, :-1, :-1]
    dx = prob[:, :, :-1, :-1, 1:] - prob[:, :, :-1, :-1, :-1]
    return torch.sqrt(dz * dz + dy * dy + dx * dx + eps)


def edge_loss(prob: torch.Tensor, edge: torch.Tensor, regions: torch.Tensor,
              valid: torch.Tensor | None = None, tau: float = 1.0) -> torch.Tensor:
    """Geodesic energy ``mean_{regions} (tau - E) |grad (box3 * P)|``: P's boundary pulled onto high E.

    Shapes: prob/edge/regions/valid (B,1,z,y,x). P is first smoothed by a 3x3x3 box filter: on a
    sharp step the plain total variation has zero gradient beside the step (flat neighbours), so
    the boundary could only spread symmetrically, never move; the smoothing lets the energy feel
    the edge one voxel away. ``tau = 1`` only penalises boundary where the edge prior is low;
    ``tau < 1`` also rewards boundary on strong edges (moves further, can create spurious ones).
    Only voxels inside a region (the boundary band) count.
    """
    ps = F.avg_pool3d(prob, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    g = spatial_gradient_magnitude(ps)
    w = (tau - edge[:, :, :-1, :-1, :-1])
    band = (regions[:, :, :-1, :-1, :-1] > 0).to(prob.dtype)
    if valid is not None:
        band = band * valid[:, :, :-1, :-1, :-1]
    return (g * w * band).sum() / band.sum().clamp_min(1.0)


#: ``term(logits, prob, batch, weights) -> scalar`` (or None when the batch lacks what it needs)
LossTerm = Callable[[torch.Tensor, torch.Tensor, Batch, "ScoreLossWeights"], "torch.Tensor | None"]

#: the SCORE loss terms by name; each name is also a :class:`ScoreLossWeights` field (its weight).
#: A term whose weight is 0 is not computed. Add a term: write its function, register it here and
#: give it a weight field (default 0 keeps it off the main path).
TERMS: dict[str, LossTerm] = {}


def register_term(name: str) -> Callable[[LossTerm], LossTerm]:
    """Decorator: register a loss term under ``name`` (a :class:`ScoreLossWeights` field)."""
    def deco(fn: LossTerm) -> LossTerm:
        TERMS[name] = fn
        return fn
    return deco


def _margin(weights: ScoreLossWeights) -> float | None:
    return weights.anchor_margin if weights.anchor_margin > 0 else None


# the main path (on by default) ------------------------------------------------------------
@register_term("direction")
def _direction_term(logits, prob, b: Batch, w):
    return net_direction_loss(prob, b.initial, b.regions, b.error, b.valid, b.trust)


@register_term("anchor")
def _anchor_term(logits, prob, b: Batch, w):
    return anchor_loss(logits, b.initial, b.regions, b.valid, b.anchor_weight, margin=_margin(w))


@register_term("pseudo")
def _pseudo_term(logits, prob, b: Batch, w):
    if b.depth is None:
        return None
    return pseudo_label_loss(logits, b.initial, b.regions, b.agreement, b.rated, b.error, b.depth,
                             b.valid, w.pseudo_depth_per_mm, use_error_type=bool(w.use_error_type),
                             flip_weight=w.pseudo_flip_weight, fraction=w.pseudo_fraction,
                             trust=b.trust, ignore=w.pseudo_ignore,
                             add_weight=w.pseudo_add_weight,
                             thin=b.map("thin") if w.pseudo_thin_mm > 0 else None,
                             thin_flip_weight=w.pseudo_thin_flip_weight,
                             **flip_limits(w))


def flip_limits(w: ScoreLossWeights) -> dict:
    """:func:`pseudo_labels`' per-side score limits from the weights, as agreements c(s)."""
    def limit(name: str) -> float:
        score = getattr(w, name)
        if float(score) != int(score) or not 1 <= int(score) <= 5:
            raise ValueError(f"{name} must be a whole score from 1 to 5, got {score!r}")
        return 1.0 if int(score) == 5 else score_to_agreement(int(score)) + 1e-6
    return {"remove_max_agreement": limit("pseudo_remove_max_score"),
            "add_max_agreement": limit("pseudo_add_max_score"),
            "above_max_unlabelled": bool(w.pseudo_above_max_unlabelled)}


@register_term("pin")
def _pin_term(logits, prob, b: Batch, w):
    return pin_loss(logits, b.initial, b.regions, b.agreement, b.rated, b.valid, margin=_margin(w),
                    trust=b.trust)


@register_term("edge")
def _edge_term(logits, prob, b: Batch, w):
    if b.edge is None:
        return None
    return edge_loss(prob, b.edge.float(), b.regions, b.valid)


# earlier forms and experiments (off by default; see docs/score-loss.md) -------------------
@register_term("direction_voxel")
def _direction_voxel_term(logits, prob, b: Batch, w):
    return direction_loss(prob, b.initial, b.regions, b.error, b.valid, b.trust)


@register_term("amount")
def _amount_term(logits, prob, b: Batch, w):
    return amount_loss(prob, b.initial, b.regions, b.agreement, b.rated, b.valid, b.trust)


@register_term("volume")
def _volume_term(logits, prob, b: Batch, w):
    return volume_loss(prob, b.initial, b.regions, b.agreement, b.rated, b.error, b.valid, b.trust)


@register_term("sharp")
def _sharp_term(logits, prob, b: Batch, w):
    return sharpness_loss(prob, b.regions, b.valid)


# evaluation order (kept from the first implementation, so totals sum in the same order)
_ORDER = ("direction", "direction_voxel", "amount", "anchor", "volume", "pseudo", "sharp", "pin",
          "edge")
TERMS.update({name: TERMS.pop(name) for name in _ORDER})


def score_loss(logits: torch.Tensor, batch: Batch, weights: ScoreLossWeights
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the registered SCORE terms (:data:`TERMS`) whose weight is non-zero.

    Args:
        logits: network output (B, 1, z, y, x).
        batch: a :class:`~.targets.Batch` with ``initial``, ``regions``, the tables
            (``agreement``, ``rated``, ``error``) and optionally ``valid``, ``anchor_weight``,
            ``edge`` (edge term) and ``depth`` (pseudo-label term).
        weights: the term weights.

    Returns:
        ``(total, {term: value})``.
    """
    logits = logits.float()
    prob = torch.sigmoid(logits)
    b = batch if batch.initial.dtype == torch.float32 else _with_float_initial(batch)
    total = logits.sum() * 0.0
    values: dict[str, float] = {}
    for name, term in TERMS.items():
        weight = float(getattr(weights, name))
        if not weight:
            continue
        value = term(logits, prob, b, weights)
        if value is None:
            continue
        total = total + weight * value
        values[name] = float(value.detach())
    return total, values


def _with_float_initial(batch: Batch) -> Batch:
    from dataclasses import replace
    return replace(batch, initial=batch.initial.float())


def full_loss(logits: torch.Tensor, reference: torch.Tensor,
              valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Fully supervised DiceCE (MONAI ``DiceCELoss``, sigmoid) against the dense reference."""
    from monai.losses import DiceCELoss

    logits = logits.float()
    if valid is not None:
        # padded voxels: make them certain background on both sides so they add nothing
        logits = torch.where(valid > 0, logits, torch.full_like(logits, -20.0))
        reference = reference * valid
    loss = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, reference.float())
    return loss, {"dice_ce": float(loss.detach())}
