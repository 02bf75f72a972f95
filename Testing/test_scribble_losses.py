"""Scribble losses: each term's gradient moves the prediction the right way."""

from __future__ import annotations

import pytest
import torch

from SCORERefineLib.refiner.network import build_network, network_config
from SCORERefineLib.refiner.scribble_losses import (BACKGROUND, FOREGROUND, STUDENT, TEACHER,
                                                    EMATeacher, ScribbleLossWeights,
                                                    competitive_pseudo_labels, partial_ce,
                                                    pseudo_label_loss, ramp_up, scribble_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scribbles(shape=(2, 1, 4, 5, 6)):
    s = torch.zeros(shape, dtype=torch.long)
    s[:, 0, 1, 1, 1:4] = FOREGROUND
    s[:, 0, 2, 3, 2:5] = BACKGROUND
    return s


def _step(loss_fn, logits0):
    z = logits0.clone().requires_grad_(True)
    loss = loss_fn(z)
    loss.backward()
    return z.grad, torch.sigmoid(z.detach() - 1.0 * z.grad)


def test_partial_ce_moves_prediction_towards_strokes():
    scr = _scribbles()
    z0 = torch.zeros(scr.shape)
    grad, p = _step(lambda z: partial_ce(z, scr), z0)
    assert torch.all(p[scr == FOREGROUND] > 0.5)       # foreground prob rises on fg strokes
    assert torch.all(p[scr == BACKGROUND] < 0.5)       # and falls on bg strokes
    assert torch.all(grad[scr == 0] == 0)              # unscribbled voxels get no gradient


def test_partial_ce_ignores_padding_and_empty_items():
    scr = _scribbles()
    valid = torch.ones(scr.shape)
    valid[:, :, 2] = 0                                 # the bg strokes lie in padding
    grad, _ = _step(lambda z: partial_ce(z, scr, valid), torch.zeros(scr.shape))
    assert torch.all(grad[scr == BACKGROUND] == 0)
    none = torch.zeros_like(scr)
    z = torch.zeros(scr.shape, requires_grad=True)
    loss = partial_ce(z, none)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(z.grad == 0)
    # a perfect prediction has (almost) no loss, a wrong one a large loss
    good = torch.where(scr == FOREGROUND, 10.0, -10.0)
    assert float(partial_ce(good, scr)) < 1e-3 < 5.0 < float(partial_ce(-good, scr))


def test_partial_ce_balance():
    scr = torch.zeros((1, 1, 2, 2, 10), dtype=torch.long)
    scr[0, 0, 0, 0, 0] = FOREGROUND                    # 1 fg voxel, 10 bg voxels
    scr[0, 0, 1, 0, :] = BACKGROUND
    z = torch.zeros(scr.shape, requires_grad=True)
    partial_ce(z, scr, balance=True).backward()
    assert torch.isclose(z.grad[scr == FOREGROUND].abs().sum(), z.grad[scr == BACKGROUND].abs().sum())


def test_pseudo_labels_choose_the_source_that_agrees_with_scribbles():
    scr = _scribbles()
    agree = torch.where(scr == BACKGROUND, 0.05, 0.95)     # fg everywhere but on bg strokes
    disagree = 1.0 - agree
    # item 0: the student agrees; item 1: the teacher agrees
    student = torch.stack([agree[0], disagree[1]])
    teacher = torch.stack([disagree[0], agree[1]])
    labels, mask, chosen = competitive_pseudo_labels(student, teacher, scr, threshold=0.8)
    assert chosen.tolist() == [STUDENT, TEACHER]
    assert torch.all(labels[scr == 0] == 1.0)             # the agreeing source's labels
    assert torch.all(mask[scr != 0] == 0)                 # strokes are not pseudo-labelled
    assert torch.all(mask[scr == 0] == 1)
    # unconfident voxels get no pseudo-label
    unsure = torch.full_like(student, 0.6)
    _, mask_u, _ = competitive_pseudo_labels(unsure, unsure, scr, threshold=0.8)
    assert float(mask_u.sum()) == 0.0


def test_pseudo_label_loss_moves_prediction_towards_labels():
    labels = torch.zeros((1, 1, 3, 3, 3))
    labels[..., 1, :, :] = 1.0
    mask = torch.ones_like(labels)
    mask[..., 2, :, :] = 0.0
    grad, p = _step(lambda z: pseudo_label_loss(z, labels, mask), torch.zeros_like(labels))
    assert torch.all(p[..., 1, :, :] > 0.5) and torch.all(p[..., 0, :, :] < 0.5)
    assert torch.all(grad[..., 2, :, :] == 0)


def test_ramp_up_monotone():
    vals = [ramp_up(s, 100) for s in range(0, 130, 5)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert vals[0] < 0.01 and vals[-1] == 1.0 and ramp_up(100, 100) == 1.0
    assert ramp_up(0, 0) == 1.0


def test_scribble_loss_pseudo_weight_ramps():
    scr = _scribbles()
    z = torch.full(scr.shape, 3.0)                      # confident foreground everywhere
    w = ScribbleLossWeights(pseudo=1.0, ramp_steps=100)
    early, t_early = scribble_loss(z, {"scribbles": scr}, None, step=0, weights=w)
    late, t_late = scribble_loss(z, {"scribbles": scr}, None, step=100, weights=w)
    assert t_early["pseudo"] == pytest.approx(t_late["pseudo"]) and t_late["pseudo"] > 0
    assert float(late) > float(early)
    assert t_late["ramp"] == 1.0 and t_early["ramp"] < 0.01


def test_ema_teacher_follows_student_and_training_with_pce_works():
    torch.manual_seed(0)
    net = build_network(network_config("tiny", residual_gain=2.0))
    teacher = EMATeacher(net, decay=0.9)
    x = torch.rand((1, 3, 8, 8, 8))
    x[:, 1] = 0.0
    x[:, 1, :, 2:6, 2:6] = 1.0                          # initial mask: a box
    scr = torch.zeros((1, 1, 8, 8, 8), dtype=torch.long)
    scr[0, 0, 4, 1, 2:6] = FOREGROUND                   # the initial mask missed this row
    scr[0, 0, 4, 3, 3:5] = BACKGROUND                   # and this inside part is a leak
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    p0 = torch.sigmoid(net(x)).detach()
    for _ in range(20):
        opt.zero_grad()
        partial_ce(net(x), scr).backward()
        opt.step()
        teacher.update(net)
    p1 = torch.sigmoid(net(x)).detach()
    assert p1[scr == FOREGROUND].mean() > p0[scr == FOREGROUND].mean() + 0.3
    assert p1[scr == BACKGROUND].mean() < p0[scr == BACKGROUND].mean() - 0.3
    # the teacher lags behind the student but has moved from the start
    pt = torch.sigmoid(teacher(x))
    assert p0[scr == FOREGROUND].mean() < pt[scr == FOREGROUND].mean() <= p1[scr == FOREGROUND].mean()
    assert not any(p.requires_grad for p in teacher.model.parameters())
    state = teacher.state_dict()
    other = EMATeacher(net)
    other.load_state_dict(state)
    assert other.updates == 20 and torch.allclose(other(x), teacher(x))


def test_stroke_anchor_resists_flips_only_where_selected():
    """The anchor is zero for the untrained residual network (logits +-2 on M0's side), pulls a
    flipped voxel back towards M0 where the map selects it, and leaves unselected voxels alone."""
    from SCORERefineLib.refiner.scribble_losses import stroke_anchor_loss

    m0 = torch.zeros((1, 1, 4, 5, 6))
    m0[..., 1:3, 1:4, 1:5] = 1.0
    z0 = 2.0 * (2.0 * m0 - 1.0)
    keep = torch.ones_like(m0)
    keep[..., 0, :, :] = 0.0
    assert float(stroke_anchor_loss(z0, m0, keep)) == 0.0
    z = z0.clone()
    z[0, 0, 1, 2, 2] = -1.0          # a selected foreground voxel flipped
    z[0, 0, 0, 0, 0] = 3.0           # an unselected background voxel flipped
    grad, _ = _step(lambda t: stroke_anchor_loss(t, m0, keep), z)
    assert grad[0, 0, 1, 2, 2] < 0    # descent raises the flipped logit back towards M0
    assert grad[0, 0, 0, 0, 0] == 0
    w = ScribbleLossWeights(pseudo=0.0)
    _, terms = scribble_loss(z, {"scribbles": _scribbles((1, 1, 4, 5, 6)), "initial": m0,
                                 "stroke_anchor": keep}, None, step=0, weights=w)
    assert terms["anchor"] > 0
    _, off = scribble_loss(z, {"scribbles": _scribbles((1, 1, 4, 5, 6)), "initial": m0,
                               "stroke_anchor": keep}, None, step=0,
                           weights=ScribbleLossWeights(pseudo=0.0, anchor=0.0))
    assert "anchor" not in off


def test_stroke_anchor_map_frees_the_neighbourhood_of_contradicting_strokes():
    import numpy as np

    from SCORERefineLib.refiner.modes.scribble import stroke_anchor_map

    m0 = np.zeros((9, 20, 20), np.uint8)
    m0[:, 5:15, 5:15] = 1
    scr = np.zeros_like(m0)
    scr[4, 10, 8:12] = FOREGROUND          # inside M0: agrees with it
    scr[4, 2, 2:6] = BACKGROUND            # outside M0: agrees
    scr[4, 16, 8:12] = FOREGROUND          # outside M0: M0 missed this
    keep = stroke_anchor_map(m0, scr, (1.0, 1.0, 1.0), exclusion_mm=3.0)
    assert keep[scr > 0].sum() == 0                      # never on a stroke
    assert keep[4, 16, 13] == 0 and keep[4, 18, 10] == 0   # near the contradicting stroke
    assert keep[4, 12, 10] == 1 and keep[4, 2, 8] == 1     # near agreeing strokes: anchored
    assert keep[0, 10, 10] == 1                           # far from every stroke
