"""Each SCORE loss term pushes the refined probability the right way (free logits, toy volume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataclasses import replace

from SCORERefineLib.calibration import score_to_agreement
from SCORERefineLib.refiner.targets import Batch
from SCORERefineLib.refiner.losses import (NONE, OVER, UNDER, ScoreLossWeights, amount_loss,
                                           anchor_loss, direction_loss, edge_loss, full_loss,
                                           net_direction_loss, pin_loss, pseudo_label_loss,
                                           pseudo_labels, score_loss, sharpness_loss,
                                           soft_dice_per_region, volume_loss)

N = 16


def toy():
    """M0: a cube; region 1 = the band on the x < 8 side, region 2 = the band on the x >= 8 side."""
    m0 = np.zeros((N, N, N), np.float32)
    m0[4:12, 4:12, 4:12] = 1
    from scipy import ndimage
    band = ndimage.binary_dilation(m0 > 0, iterations=2) & ~ndimage.binary_erosion(m0 > 0, iterations=2)
    regions = np.zeros((N, N, N), np.int64)
    xx = np.indices(m0.shape)[2]
    regions[band & (xx < 8)] = 1
    regions[band & (xx >= 8)] = 2
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt)[None, None]
    return t(m0), t(regions, torch.long)


def optimise(logits0, fn, steps=40, lr=0.1):
    z = logits0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        fn(z).backward()
        opt.step()
    return z.detach()


def tables(entries):
    """entries: {region: (score, error)} -> agreement, rated, error tables (1, 3)."""
    agreement = torch.zeros(1, 3)
    rated = torch.zeros(1, 3, dtype=torch.bool)
    error = torch.zeros(1, 3, dtype=torch.long)
    for r, (s, e) in entries.items():
        agreement[0, r] = score_to_agreement(s)
        rated[0, r] = True
        error[0, r] = e
    return agreement, rated, error


def start_logits(m0, gain=1.0, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gain * (2 * m0 - 1) + noise * torch.randn(m0.shape, generator=g)


def test_direction_over_lowers_p_outside_m0_in_region_only():
    m0, reg = toy()
    _, _, error = tables({1: (3, OVER)})
    z0 = start_logits(m0)
    z = optimise(z0, lambda z: direction_loss(torch.sigmoid(z), m0, reg, error))
    p0, p = torch.sigmoid(z0), torch.sigmoid(z)
    sel = (reg == 1) & (m0 == 0)
    assert p[sel].mean() < p0[sel].mean() - 0.2
    other = ~sel
    assert torch.allclose(p[other], p0[other])  # nothing else moves (incl. inside M0 in R)


def test_direction_under_raises_p_inside_m0_in_region_only():
    m0, reg = toy()
    _, _, error = tables({2: (2, UNDER)})
    z0 = start_logits(m0, gain=-0.5)  # P below 0.5 everywhere: under-confident inside M0
    z = optimise(z0, lambda z: direction_loss(torch.sigmoid(z), m0, reg, error))
    p0, p = torch.sigmoid(z0), torch.sigmoid(z)
    sel = (reg == 2) & (m0 == 1)
    assert p[sel].mean() > p0[sel].mean() + 0.2
    assert torch.allclose(p[~sel], p0[~sel])


def test_direction_ignores_regions_without_direction():
    m0, reg = toy()
    _, _, error = tables({1: (5, NONE)})
    z = start_logits(m0).requires_grad_(True)
    loss = direction_loss(torch.sigmoid(z), m0, reg, error)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(z.grad.abs().sum()) == 0.0


def test_amount_score5_pulls_p_to_m0():
    m0, reg = toy()
    agreement, rated, _ = tables({1: (5, NONE)})
    z0 = start_logits(m0, gain=0.5, noise=1.5)
    z = optimise(z0, lambda z: amount_loss(torch.sigmoid(z), m0, reg, agreement, rated))
    d0 = soft_dice_per_region(torch.sigmoid(z0), m0, reg, 3)[0, 1]
    d = soft_dice_per_region(torch.sigmoid(z), m0, reg, 3)[0, 1]
    assert d > d0 + 0.1 and d > 0.9
    sel = reg == 1
    err0 = (torch.sigmoid(z0) - m0)[sel].abs().mean()
    err = (torch.sigmoid(z) - m0)[sel].abs().mean()
    assert err < err0


@pytest.mark.parametrize("score", [1, 2, 3])
def test_amount_low_score_moves_dice_down_to_c(score):
    m0, reg = toy()
    agreement, rated, _ = tables({1: (score, OVER)})
    c = score_to_agreement(score)
    z0 = start_logits(m0, gain=3.0)
    d0 = float(soft_dice_per_region(torch.sigmoid(z0), m0, reg, 3)[0, 1])
    z = optimise(z0, lambda z: amount_loss(torch.sigmoid(z), m0, reg, agreement, rated), steps=80)
    d = float(soft_dice_per_region(torch.sigmoid(z), m0, reg, 3)[0, 1])
    assert d0 > 0.9
    assert d < d0 - 0.05
    assert abs(d - c) < abs(d0 - c) * 0.5


@pytest.mark.parametrize("voxel_form", [False, True])
def test_direction_resolves_amount_ambiguity(voxel_form):
    """Amount alone could reach c by adding or removing; 'over' must remove, 'under' must add."""
    m0, reg = toy()
    agreement, rated, error = tables({1: (2, OVER)})
    batch = Batch(image=m0, initial=m0, regions=reg, agreement=agreement, rated=rated, error=error)
    w = ScoreLossWeights(direction=0.0 if voxel_form else 1.0, direction_voxel=1.0 if voxel_form else 0.0,
                         amount=1.0, anchor=0.0, edge=0.0)
    z0 = start_logits(m0, gain=3.0)
    p0 = torch.sigmoid(z0)
    sel = reg == 1
    inside = sel & (m0 == 1)
    outside = sel & (m0 == 0)
    z = optimise(z0, lambda z: score_loss(z, batch, w)[0], steps=80)
    p = torch.sigmoid(z)
    assert p[sel].sum() < p0[sel].sum() - 0.2 * m0[sel].sum()   # net removal
    assert p[inside].mean() < p0[inside].mean() - 0.2            # removed inside M0
    if voxel_form:
        assert p[outside].mean() <= p0[outside].mean() + 1e-4   # and never grew outside
    # the same with "under": must grow outside M0
    agreement, rated, error = tables({1: (2, UNDER)})
    batch = replace(batch, agreement=agreement, rated=rated, error=error)
    z = optimise(z0, lambda z: score_loss(z, batch, w)[0], steps=80)
    p = torch.sigmoid(z)
    assert p[sel].sum() > p0[sel].sum() + 0.2 * m0[sel].sum()   # net growth
    assert p[outside].mean() > p0[outside].mean() + 0.2
    if voxel_form:
        assert p[inside].mean() >= p0[inside].mean() - 1e-3


def test_net_direction_penalises_only_net_change_the_wrong_way():
    m0, reg = toy()
    _, _, error = tables({1: (3, OVER), 2: (3, UNDER)})
    hard = lambda a: torch.where(a > 0, 6.0, -6.0)
    sel1 = (reg == 1)
    grown = m0.clone()
    grown[sel1 & (m0 == 0)] = 1          # region 1 (over) grew: penalised
    shrunk_swap = m0.clone()
    shrunk_swap[sel1 & (m0 == 1)] = 0    # region 1 lost its inside ...
    idx = torch.nonzero((sel1 & (m0 == 0)).flatten())[:10, 0]
    shrunk_swap.view(-1)[idx] = 1        # ... and gained a few outside: net shrink, no penalty
    f = lambda p: float(net_direction_loss(torch.sigmoid(hard(p)), m0, reg, error))
    assert f(m0) < 5e-3
    assert f(grown) > 0.1
    assert f(shrunk_swap) < 5e-3
    z0 = start_logits(grown, gain=1.0)
    z = optimise(z0, lambda z: net_direction_loss(torch.sigmoid(z), m0, reg, error))
    assert torch.sigmoid(z)[sel1].sum() < torch.sigmoid(z0)[sel1].sum() - 10


def test_anchor_pulls_p_to_m0_outside_regions_only():
    m0, reg = toy()
    z0 = start_logits(m0, gain=0.2, noise=1.0)
    z = optimise(z0, lambda z: anchor_loss(z, m0, reg))
    p0, p = torch.sigmoid(z0), torch.sigmoid(z)
    far = reg == 0
    assert (p - m0)[far].abs().mean() < (p0 - m0)[far].abs().mean() - 0.1
    assert torch.allclose(p[~far], p0[~far])
    # a zero anchor weight frees those voxels (ScoreMode: near regions scored <= 2)
    weight = torch.ones_like(m0)
    weight[..., :4] = 0
    z = optimise(z0, lambda z: anchor_loss(z, m0, reg, weight=weight))
    assert torch.allclose(torch.sigmoid(z)[..., :4], p0[..., :4])


def test_edge_term_moves_boundary_toward_edge():
    """M0 = slab x < 8; a synthetic edge at x = 10.5; the boundary (sum of P) moves toward x = 10."""
    m0 = torch.zeros(1, 1, N, N, N)
    m0[..., :8] = 1
    reg = torch.zeros(1, 1, N, N, N, dtype=torch.long)
    reg[..., 4:14] = 1
    xx = torch.arange(N, dtype=torch.float32)
    edge = torch.exp(-((xx - 10.5) ** 2) / 2.0).expand(1, 1, N, N, N).contiguous()

    def boundary_x(z):
        return float(torch.sigmoid(z)[0, 0, 8, 8, :].sum())  # = position of the 0.5 crossing

    z0 = 3.0 * (2 * m0 - 1)
    z = optimise(z0, lambda z: edge_loss(torch.sigmoid(z), edge, reg), steps=150, lr=0.1)
    assert boundary_x(z0) == pytest.approx(8.0, abs=0.3)
    assert boundary_x(z) > boundary_x(z0) + 0.5
    assert boundary_x(z) < 11.5
    # an edge on the other side pulls the other way
    edge2 = torch.exp(-((xx - 5.5) ** 2) / 2.0).expand(1, 1, N, N, N).contiguous()
    z = optimise(z0, lambda z: edge_loss(torch.sigmoid(z), edge2, reg), steps=150, lr=0.1)
    assert boundary_x(z) < boundary_x(z0) - 0.5


def test_score_loss_terms_and_switches():
    m0, reg = toy()
    agreement, rated, error = tables({1: (3, OVER), 2: (5, NONE)})
    batch = Batch(image=m0, initial=m0, regions=reg, agreement=agreement, rated=rated, error=error,
                  edge=torch.rand_like(m0), valid=torch.ones_like(m0), depth=_depth(m0))
    total, terms = score_loss(start_logits(m0, 2.0), batch, ScoreLossWeights())
    assert set(terms) == {"direction", "pseudo", "anchor", "edge", "pin"}
    assert np.isfinite(float(total))
    _, terms = score_loss(start_logits(m0, 2.0), batch, ScoreLossWeights(direction=0, pseudo=0))
    assert set(terms) == {"anchor", "edge", "pin"}
    every = ScoreLossWeights(direction_voxel=1.0, amount=1.0, volume=1.0, sharp=1.0)
    _, terms = score_loss(start_logits(m0, 2.0), batch, every)
    assert set(terms) == {"direction", "direction_voxel", "amount", "volume", "sharp", "pseudo",
                          "anchor", "edge", "pin"}


def test_padding_is_ignored():
    m0, reg = toy()
    agreement, rated, error = tables({1: (3, OVER)})
    valid = torch.ones_like(m0)
    valid[..., 12:] = 0
    z = start_logits(m0, 1.0).requires_grad_(True)
    batch = Batch(image=m0, initial=m0, regions=reg, agreement=agreement, rated=rated, error=error,
                  valid=valid)
    score_loss(z, batch, ScoreLossWeights(edge=0))[0].backward()
    assert float(z.grad[..., 12:].abs().sum()) == 0.0


def test_loss_weights_parse():
    w = ScoreLossWeights.parse("direction=2, edge=0")
    assert w.direction == 2.0 and w.edge == 0.0 and w.amount == ScoreLossWeights().amount
    with pytest.raises(ValueError):
        ScoreLossWeights.parse("bogus=1")
    with pytest.raises(ValueError, match="name a profile"):
        ScoreLossWeights.parse("direction")


def test_the_defaults_are_the_measured_organ_setting_and_broad_is_the_former_one():
    """The defaults are the setting docs/score-loss.md measured as ``organs`` (stops 30-34:
    removals only in regions rated <= 2 and weighted 12, additions only <= 3, thin parts exempt at
    8 mm), which ``--loss-weights organs`` still names; ``broad`` restores the defaults before
    stop 34 (every rated error region flips, removals weighted 3, no thin rule). Later parts
    override a profile, earlier ones are overridden."""
    from SCORERefineLib.refiner.losses import flip_limits

    d = ScoreLossWeights()
    assert (d.pseudo_remove_max_score, d.pseudo_add_max_score, d.pseudo_flip_weight,
            d.pseudo_thin_mm) == (2, 3, 12.0, 8.0)
    assert ScoreLossWeights.parse("organs") == d
    b = ScoreLossWeights.parse("broad")
    assert (b.pseudo_remove_max_score, b.pseudo_add_max_score, b.pseudo_flip_weight,
            b.pseudo_thin_mm) == (4, 4, 3.0, 0.0)
    assert b.pseudo_thin_flip_weight == d.pseudo_thin_flip_weight and b.pseudo_add_weight == 12.0
    assert flip_limits(d)["remove_max_agreement"] < flip_limits(b)["remove_max_agreement"]
    assert flip_limits(d)["add_max_agreement"] < flip_limits(b)["add_max_agreement"]
    assert ScoreLossWeights.parse("broad, pseudo_thin_mm=8").pseudo_thin_mm == 8.0
    assert ScoreLossWeights.parse("pseudo_thin_mm=8,Broad").pseudo_thin_mm == 0.0
    with pytest.raises(ValueError, match="broad"):
        ScoreLossWeights.parse("bones")


def test_full_loss_decreases_toward_reference():
    ref = torch.zeros(1, 1, 8, 8, 8)
    ref[..., 2:6, 2:6, 2:6] = 1
    z0 = torch.zeros_like(ref)
    z = optimise(z0, lambda z: full_loss(z, ref)[0], steps=30)
    assert float(full_loss(z, ref)[0]) < float(full_loss(z0, ref)[0]) - 0.3


def test_pin_holds_score5_regions_only():
    m0, reg = toy()
    agreement, rated, _ = tables({1: (5, NONE), 2: (3, OVER)})
    z0 = start_logits(m0, gain=0.5, noise=1.5)
    z = optimise(z0, lambda z: pin_loss(z, m0, reg, agreement, rated))
    p0, p = torch.sigmoid(z0), torch.sigmoid(z)
    five = reg == 1
    assert (p - m0)[five].abs().mean() < (p0 - m0)[five].abs().mean() - 0.2
    assert torch.allclose(p[~five], p0[~five])
    # the untrained residual refiner (logits +-4) is not pushed at all (hinge margin 2)
    zr = (4.0 * (2 * m0 - 1)).requires_grad_(True)
    pin_loss(zr, m0, reg, agreement, rated).backward()
    assert float(zr.grad.abs().sum()) == 0.0


def _depth(m0):
    from SCORERefineLib.refiner.modes import signed_depth
    return torch.as_tensor(signed_depth(m0[0, 0].numpy() > 0, (1.0, 1.0, 1.0)))[None, None]


def test_pseudo_labels_follow_score_type_and_ranking():
    m0, reg = toy()
    depth = _depth(m0)
    agreement, rated, error = tables({1: (2, OVER), 2: (3, UNDER)})
    rho_over = 0.6 / 1.4
    z = 4.0 * (2 * m0 - 1)
    target, weight = pseudo_labels(z, m0, reg, agreement, rated, error, depth)
    in1 = (reg == 1) & (m0 == 1)
    dropped = in1 & (target == 0)
    assert int(dropped.sum()) == round((1 - rho_over) * int(in1.sum()))
    # with equal logits the outermost voxels go first
    assert float(depth[dropped].max()) <= float(depth[in1 & (target == 1)].min())
    assert float(target[(reg == 1) & (m0 == 0)].sum()) == 0.0
    out2 = (reg == 2) & (m0 == 0)
    added = out2 & (target == 1)
    n_in2 = int(((reg == 2) & (m0 == 1)).sum())
    assert int(added.sum()) == min(round((1.225 / 0.775 - 1) * n_in2), int(out2.sum()))
    assert float(depth[added].min()) >= float(depth[out2 & (target == 0)].max())
    assert bool((target[(reg == 2) & (m0 == 1)] == 1).all())
    assert bool((weight == (reg > 0).float()).all())
    # the network's own doubt decides among equally deep voxels
    z2 = z.clone()
    doubted = in1 & (depth > 1.5)
    z2[doubted] = -1.0
    target2, _ = pseudo_labels(z2, m0, reg, agreement, rated, error, depth)
    assert bool((target2[doubted] == 0).all())
    # fraction: only that share of the implied count is labelled
    half, _ = pseudo_labels(z, m0, reg, agreement, rated, error, depth, fraction=0.5)
    assert int((in1 & (half == 0)).sum()) == round(0.5 * (1 - rho_over) * int(in1.sum()))
    # ignore: the candidates ranked next after the labelled share are left unlabelled (weight 0),
    # not labelled "as M0"; the labelled flips and the rest of the region are unchanged
    t_ig, w_ig = pseudo_labels(z, m0, reg, agreement, rated, error, depth, fraction=0.5, ignore=0.5)
    assert bool((t_ig == half).all())
    n_skip1 = round(0.5 * (1 - rho_over) * int(in1.sum()))
    skipped1 = in1 & (w_ig == 0)
    assert int(skipped1.sum()) == n_skip1
    # the skipped voxels are the next deepest after the dropped ones
    assert float(depth[skipped1].min()) >= float(depth[in1 & (half == 0)].max())
    assert float(depth[skipped1].max()) <= float(depth[in1 & (w_ig > 0) & (half == 1)].min())
    n_in2 = int(((reg == 2) & (m0 == 1)).sum())
    skipped2 = out2 & (w_ig == 0)
    assert int(skipped2.sum()) == round(0.5 * (1.225 / 0.775 - 1) * n_in2)
    assert float(depth[skipped2].min()) >= float(depth[out2 & (w_ig > 0) & (half == 0)].max())
    assert bool((w_ig[(reg > 0) & ~skipped1 & ~skipped2] == 1).all())
    # type-blind ablation: flips the same number, on either side, none of a type is used
    blind, _ = pseudo_labels(z, m0, reg, agreement, rated, error, depth, use_error_type=False)
    n_flip1 = int(((blind != m0) & (reg == 1)).sum())
    assert n_flip1 == round((1 - rho_over) * int(in1.sum()))


def test_pseudo_label_loss_moves_the_right_voxels():
    m0, reg = toy()
    depth = _depth(m0)
    agreement, rated, error = tables({1: (3, OVER), 2: (3, UNDER)})
    z0 = 4.0 * (2 * m0 - 1)
    z = optimise(z0, lambda z: pseudo_label_loss(z, m0, reg, agreement, rated, error, depth), steps=60)
    p = torch.sigmoid(z)
    in1, out2 = (reg == 1) & (m0 == 1), (reg == 2) & (m0 == 0)
    assert float((p[in1] < 0.5).sum()) > 0.2 * float(in1.sum())     # over: removed inside M0
    assert float((p[(reg == 1) & (m0 == 0)] > 0.5).sum()) == 0.0     # and never grew
    assert float((p[out2] > 0.5).sum()) > 0.1 * float(out2.sum())    # under: grew outside M0
    assert bool((p[(reg == 2) & (m0 == 1)] > 0.5).all())



def test_pseudo_label_additions_weigh_their_own_weight():
    """``add_weight`` scales the BCE of pseudo-label additions only (removals keep
    ``flip_weight``); without it additions weigh ``flip_weight`` like every flip."""
    m0, reg = toy()
    depth = _depth(m0)
    agreement, rated, error = tables({1: (3, OVER), 2: (3, UNDER)})
    z0 = (2.0 * (2 * m0 - 1)).requires_grad_(True)
    target, _ = pseudo_labels(z0.detach(), m0, reg, agreement, rated, error, depth)
    added = (target == 1) & (m0 == 0)
    dropped = (target == 0) & (m0 == 1)
    assert bool(added.any()) and bool(dropped.any())

    def grads(**kw):
        z = z0.detach().clone().requires_grad_(True)
        loss = pseudo_label_loss(z, m0, reg, agreement, rated, error, depth, **kw)
        loss.backward()
        # the normalisation (sum of weights) differs between settings: compare within one
        return float(z.grad[added].abs().mean()), float(z.grad[dropped].abs().mean())

    a3, r3 = grads(flip_weight=3.0)
    a12, r12 = grads(flip_weight=3.0, add_weight=12.0)
    assert abs(a3 / r3 - 1.0) < 1e-4                     # same logit distance, same weight
    assert abs(a12 / r12 - 4.0) < 1e-4                   # 12 against 3
    assert grads(flip_weight=3.0, add_weight=0.0) == (a3, r3)   # <= 0: flip_weight

def test_volume_and_sharpness_terms():
    m0, reg = toy()
    agreement, rated, error = tables({1: (2, OVER), 2: (5, NONE)})
    hard = lambda a: torch.where(a > 0, 8.0, -8.0)
    assert float(volume_loss(torch.sigmoid(hard(m0)), m0, reg, agreement, rated, error)) > 0.05
    z = optimise(hard(m0) * 0.5, lambda z: volume_loss(torch.sigmoid(z), m0, reg, agreement, rated, error))
    ratio = torch.sigmoid(z)[reg == 1].sum() / m0[reg == 1].sum()
    assert float(ratio) == pytest.approx(0.6 / 1.4, abs=0.05)
    assert float(sharpness_loss(torch.full_like(m0, 0.5), reg)) == pytest.approx(1.0)
    assert float(sharpness_loss(torch.sigmoid(hard(m0)), reg)) < 0.01


def test_pseudo_labels_flip_only_in_regions_rated_at_most_the_limits():
    """A region whose score is above its side's limit flips nothing: labelled as M0, or left
    unlabelled with ``above_max_unlabelled``; regions within the limits are as before."""
    from SCORERefineLib.refiner.losses import flip_limits

    m0, reg = toy()
    depth = _depth(m0)
    z = 4.0 * (2 * m0 - 1)
    agreement, rated, error = tables({1: (2, OVER), 2: (3, UNDER)})
    free, w_free = pseudo_labels(z, m0, reg, agreement, rated, error, depth)
    assert bool((free != m0).any())
    # removals only up to score 1: the over region rated 2 keeps M0; the under region still adds
    lim = flip_limits(ScoreLossWeights(pseudo_remove_max_score=1))
    t, w = pseudo_labels(z, m0, reg, agreement, rated, error, depth, **lim)
    assert bool((t[reg == 1] == m0[reg == 1]).all()) and bool((w[reg == 1] == 1).all())
    assert bool((t[reg == 2] == free[reg == 2]).all())
    # additions only up to score 2: the under region rated 3 is left unlabelled when asked
    lim = flip_limits(ScoreLossWeights(pseudo_add_max_score=2, pseudo_above_max_unlabelled=True))
    t, w = pseudo_labels(z, m0, reg, agreement, rated, error, depth, **lim)
    assert bool((w[reg == 2] == 0).all()) and bool((t[reg == 2] == m0[reg == 2]).all())
    assert bool((t[reg == 1] == free[reg == 1]).all()) and bool((w[reg == 1] == 1).all())
    # the defaults (4 and 4) flip every rated error region; limits at a region's own score flip it
    t, w = pseudo_labels(z, m0, reg, agreement, rated, error, depth,
                         **flip_limits(ScoreLossWeights()))
    assert bool((t == free).all()) and bool((w == w_free).all())
    t, _ = pseudo_labels(z, m0, reg, agreement, rated, error, depth, **flip_limits(
        ScoreLossWeights(pseudo_remove_max_score=2, pseudo_add_max_score=3)))
    assert bool((t == free).all())
    with pytest.raises(ValueError, match="pseudo_add_max_score"):
        flip_limits(ScoreLossWeights(pseudo_add_max_score=2.5))
    with pytest.raises(ValueError, match="pseudo_remove_max_score"):
        ScoreLossWeights.parse("pseudo_remove_max_score=7")
    assert flip_limits(ScoreLossWeights.parse("pseudo_remove_max_score=2"))["remove_max_agreement"] \
        == pytest.approx(score_to_agreement(2), abs=1e-5)
    # and the loss uses them: with both sides limited below the ratings nothing is asked to move
    zz = (2.0 * (2 * m0 - 1)).requires_grad_(True)
    pseudo_label_loss(zz, m0, reg, agreement, rated, error, depth, **flip_limits(
        ScoreLossWeights(pseudo_remove_max_score=1, pseudo_add_max_score=2))).backward()
    assert bool((zz.grad * (2 * m0 - 1) <= 0).all())        # every voxel pushed towards M0
    moved = zz.detach() - 0.1 * zz.grad.sign() * (zz.grad != 0)
    assert bool(((moved > 0) == (m0 > 0.5)).all())


def _block_and_slab():
    """A thick block (half-thickness 10 mm) and a thin slab (2 mm) in one mask, 1 mm voxels;
    region 1 = the band around the block, region 2 = the band around the slab."""
    from scipy import ndimage

    m0 = np.zeros((28, 28, 64), bool)
    m0[4:24, 4:24, 2:22] = True        # the block: 20 mm thick
    m0[12:16, 4:24, 40:60] = True      # the slab: 4 mm thick
    band = ndimage.binary_dilation(m0, iterations=2) & ~ndimage.binary_erosion(m0, iterations=2)
    regions = np.zeros(m0.shape, np.int64)
    xx = np.indices(m0.shape)[2]
    regions[band & (xx < 31)] = 1
    regions[band & (xx >= 31)] = 2
    return m0, regions


def test_thin_regions_mark_the_bands_of_thin_parts_only():
    from SCORERefineLib.refiner.inputs import signed_depth
    from SCORERefineLib.refiner.modes.score import thin_regions

    m0, regions = _block_and_slab()
    depth = signed_depth(m0, (1.0, 1.0, 1.0))
    thin = thin_regions(depth, regions, (1.0, 1.0, 1.0), thin_mm=5.0)
    assert thin.dtype == np.uint8
    assert bool((thin[regions == 2] == 1).all())          # the slab's band, inside and out
    assert not thin[regions == 1].any()                    # the block's band
    assert not thin[regions == 0].any()
    # a limit below the slab's half-thickness: nothing is thin; above the block's: all is
    assert not thin_regions(depth, regions, (1.0, 1.0, 1.0), thin_mm=1.5).any()
    assert bool((thin_regions(depth, regions, (1.0, 1.0, 1.0), 12.0)[regions > 0] == 1).all())
    # the box is in mm: at 2 mm voxels along x the same mask is still judged by depth in mm
    depth2 = signed_depth(m0, (1.0, 1.0, 2.0))
    thin2 = thin_regions(depth2, regions, (1.0, 1.0, 2.0), thin_mm=5.0)
    assert bool((thin2[regions == 2] == 1).all()) and not thin2[regions == 1].any()


def test_thin_regions_keep_the_default_removal_rule_under_flip_limits():
    """With ``thin``, regions on thin parts ignore the flip limits and their removals weigh
    ``thin_flip_weight``; regions elsewhere follow the limits and ``flip_weight``."""
    from SCORERefineLib.refiner.inputs import signed_depth
    from SCORERefineLib.refiner.losses import flip_limits
    from SCORERefineLib.refiner.modes.score import thin_regions

    m0_np, reg_np = _block_and_slab()
    depth_np = signed_depth(m0_np, (1.0, 1.0, 1.0))
    thin = torch.as_tensor(thin_regions(depth_np, reg_np, (1.0, 1.0, 1.0), 5.0))[None, None]
    m0 = torch.as_tensor(m0_np, dtype=torch.float32)[None, None]
    reg = torch.as_tensor(reg_np)[None, None]
    depth = torch.as_tensor(depth_np)[None, None]
    z = 4.0 * (2 * m0 - 1)
    agreement, rated, error = tables({1: (4, OVER), 2: (4, OVER)})
    free, _ = pseudo_labels(z, m0, reg, agreement, rated, error, depth)
    assert bool((free[reg == 1] != m0[reg == 1]).any()) and bool((free[reg == 2] != m0[reg == 2]).any())
    lim = flip_limits(ScoreLossWeights(pseudo_remove_max_score=2))
    limited, _ = pseudo_labels(z, m0, reg, agreement, rated, error, depth, **lim)
    assert bool((limited == m0).all())                     # both 4s above the limit
    t, w = pseudo_labels(z, m0, reg, agreement, rated, error, depth, **lim, thin=thin)
    assert bool((t[reg == 1] == m0[reg == 1]).all())       # the block keeps the limit
    assert bool((t[reg == 2] == free[reg == 2]).all())     # the slab removes as without limits
    # the loss: the slab's removals weigh thin_flip_weight, the rest flip_weight
    removed = (t < 0.5) & (m0 > 0.5)
    zz = torch.zeros_like(z, requires_grad=True)
    pseudo_label_loss(zz, m0, reg, agreement, rated, error, depth, flip_weight=12.0, **lim,
                      thin=thin, thin_flip_weight=3.0).backward()
    kept_in = (reg == 2) & (m0 > 0.5) & ~removed
    # BCE gradient at logit 0 is +-0.5 * weight / total: a removal weighs 3 (not 12) voxels' worth
    ratio = zz.grad[removed].abs().mean() / zz.grad[kept_in].abs().mean()
    assert float(ratio) == pytest.approx(3.0, rel=1e-4)
