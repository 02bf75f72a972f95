"""The appearance veto: changes the case's own image contradicts are taken back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SCORERefineLib.refiner.inputs import NORMALISATION, appearance_evidence
from SCORERefineLib.refiner.veto import (VetoLimits, appearance_veto, removed_layers,
                                         thick_layers)
from conftest import ellipsoid

SHAPE = (24, 40, 40)
SPACING = (1.0, 1.0, 1.0)


def _case():
    """A bright structure (300 HU) whose initial mask misses its right end (bright voxels
    outside) and leaks into dark surroundings on the left (dark voxels inside)."""
    truth = ellipsoid(SHAPE, (6, 8, 8), centre=(12, 20, 20)).astype(bool)
    rng = np.random.default_rng(0)
    hu = np.where(truth, 300.0, 0.0) + rng.normal(0.0, 10.0, SHAPE)
    initial = truth.copy()
    initial[:, :, 25:] = False                        # missed: bright, outside the mask
    initial[10:14, 18:22, 8:12] = True                # leak: dark, inside the mask
    return hu.astype(np.float32), truth, initial


def _llr(hu, initial):
    p = NORMALISATION["appearance"]
    return appearance_evidence(hu, initial, SPACING, ring_mm=p["ring_mm"], bins=p["bins"],
                               clip=p["clip"], sigma_mm=p["sigma_mm"])


def test_adds_only_what_looks_like_the_structure():
    hu, truth, initial = _case()
    right_add = truth & ~initial                      # bright voxels outside
    ring = np.zeros(SHAPE, bool)
    ring[:, :, 31:34] = True
    wrong_add = ring & ~truth & ~initial              # dark voxels outside
    out, report = appearance_veto(hu, initial, initial | right_add | wrong_add, SPACING)
    out = out.astype(bool)
    assert out[right_add].all() and not out[wrong_add].any()
    assert report["vetoed_added"] == int(wrong_add.sum()) > 0
    assert report["proposed_added"] == int((right_add | wrong_add).sum())
    assert report["vetoed_removed"] == 0


def test_an_addition_needs_evidence_for_the_structure_not_only_none_against_it():
    """Since stop 36 an added voxel needs evidence of at least ``add_min_llr`` (0.25): a shell of
    voxels half-way between the structure and its surroundings (partial volume, a vessel wall:
    evidence about +0.16) is taken back by default; the former rule (0: only evidence against
    the structure) kept it. On the organs at the hidden set's error size this took back the
    aortas' wrong additions (docs/score-loss.md, stop 36)."""
    hu, truth, initial = _case()
    right_add = truth & ~initial
    shell = np.zeros(SHAPE, bool)
    shell[:, :, 34:36] = True
    hu = hu.copy()
    hu[shell] = 170.0 + np.random.default_rng(2).normal(0.0, 10.0, int(shell.sum()))
    llr = _llr(hu, initial)
    weak = shell & (llr >= 0.0) & (llr < 0.25)
    assert weak.sum() > 0.5 * shell.sum()               # mostly weak evidence for the structure
    proposal = initial | right_add | shell
    out, report = appearance_veto(hu, initial, proposal, SPACING)
    assert VetoLimits().add_min_llr == 0.25
    want = proposal & ~((proposal & ~initial) & (llr < 0.25))
    np.testing.assert_array_equal(out.astype(bool), want)
    assert not out.astype(bool)[weak].any() and out.astype(bool)[right_add].mean() > 0.95
    before, r0 = appearance_veto(hu, initial, proposal, SPACING, VetoLimits(add_min_llr=0.0))
    assert before.astype(bool)[weak].all()
    assert report["vetoed_added"] - r0["vetoed_added"] >= int(weak.sum())
    assert report["limits"]["add_min_llr"] == 0.25 and report["version"] == 2


def test_a_peeled_layer_that_looks_like_structure_comes_back_a_cut_leak_goes():
    hu, truth, initial = _case()
    layer = initial & ~ndimage.binary_erosion(initial) & truth
    layer &= np.indices(SHAPE)[0] < 8                         # the bottom face: bright, a layer
    leak = initial & ~truth                                    # dark: goes in any case
    proposal = initial & ~layer & ~leak
    out, report = appearance_veto(hu, initial, proposal, SPACING)
    out = out.astype(bool)
    bright_layer = layer & (_llr(hu, initial) > 0.5)
    assert bright_layer.sum() > 20
    assert out[bright_layer].all() and not out[leak].any()
    assert report["vetoed_removed"] == int(bright_layer.sum())


def test_a_structure_like_protrusion_may_be_cut_off():
    """A leak into a neighbour of the structure's own intensity: removed as a piece that
    touches the rest only at its neck, so the veto lets it go."""
    truth = ellipsoid(SHAPE, (6, 8, 8), centre=(12, 20, 14)).astype(bool)
    neighbour = ellipsoid(SHAPE, (6, 6, 6), centre=(12, 20, 31)).astype(bool)
    hu = np.where(truth | neighbour, 300.0, 0.0).astype(np.float32)
    leak = neighbour & (np.indices(SHAPE)[2] <= 30)
    neck = np.zeros(SHAPE, bool)
    neck[11:13, 19:21, 21:27] = True
    initial = truth | leak | neck
    proposal = truth.copy()
    removed = initial & ~proposal
    layers = removed_layers(initial, proposal, 0.5)
    assert not layers[leak].any()                              # a protrusion, not a layer
    out, report = appearance_veto(hu, initial, proposal, SPACING)
    assert not out.astype(bool)[leak].any()
    assert report["vetoed_removed"] < 0.2 * removed.sum()
    # the thick-layer rule too sees a protrusion: it touches the rest only at its neck
    assert not thick_layers(initial, proposal, _llr(hu, initial), 0.5, 1.0)[leak].any()
    out, report = appearance_veto(hu, initial, proposal, SPACING, VetoLimits(thick_layer_llr=1.0))
    assert not out.astype(bool)[leak].any() and report["vetoed_removed_thick"] == 0


def _peel(depth: int):
    """A bright structure whose initial mask is right, and a proposal that peels its lower half
    ``depth`` voxels deep (the peel touches the kept body and the outside alike)."""
    truth = ellipsoid(SHAPE, (8, 12, 12), centre=(12, 20, 20)).astype(bool)
    rng = np.random.default_rng(2)
    hu = (np.where(truth, 300.0, 0.0) + rng.normal(0.0, 10.0, SHAPE)).astype(np.float32)
    core = ndimage.binary_erosion(truth, iterations=depth)
    peel = truth & ~core & (np.indices(SHAPE)[0] < 12)
    return hu, truth, truth & ~peel, peel


def test_a_thick_structure_like_peel_passes_the_layer_rule_and_the_thick_rule_takes_it_back():
    """Peeled three voxels deep, fewer than half the layer's voxels touch the kept body: the
    layer rule reads it as a protrusion (what let a model peel the lumbar column on
    real_abdomen_x2). With ``thick_layer_llr`` (by default 0.8) it is a layer that looks like the
    structure."""
    hu, truth, proposal, peel = _peel(3)
    llr = _llr(hu, truth)
    assert removed_layers(truth, proposal, 0.5)[peel].mean() < 0.05     # not a layer by share
    assert llr[peel].mean() > 1.0
    out, report = appearance_veto(hu, truth, proposal, SPACING, VetoLimits(thick_layer_llr=None))
    assert out.astype(bool)[peel].mean() < 0.05                          # without the rule it goes
    assert report["vetoed_removed_thick"] == 0
    assert VetoLimits().thick_layer_llr == 0.8
    by_default = appearance_veto(hu, truth, proposal, SPACING)[0]
    out, report = appearance_veto(hu, truth, proposal, SPACING, VetoLimits(thick_layer_llr=1.0))
    np.testing.assert_array_equal(by_default, out)                       # the rule is on by default
    back = out.astype(bool) & peel
    want = peel & (llr > 0.5)
    assert want.sum() > 0.8 * peel.sum()
    np.testing.assert_array_equal(back, want)                            # voxelwise, as layers
    assert report["vetoed_removed"] == report["vetoed_removed_thick"] == int(want.sum())
    # a one-voxel peel is a layer by both rules: the thick rule adds nothing to it
    hu1, truth1, proposal1, peel1 = _peel(1)
    r_default = appearance_veto(hu1, truth1, proposal1, SPACING, VetoLimits(thick_layer_llr=None))[1]
    r_thick = appearance_veto(hu1, truth1, proposal1, SPACING, VetoLimits(thick_layer_llr=1.0))[1]
    assert r_default["vetoed_removed"] == r_thick["vetoed_removed"] > 0
    assert r_thick["vetoed_removed_thick"] == 0


def test_a_thick_layer_that_looks_like_the_surroundings_goes():
    """An initial mask three voxels too wide all round (dark surroundings inside it): removing
    that layer is right, its mean evidence is below the threshold, the veto keeps it removed."""
    hu, truth, _, _ = _peel(3)
    initial = ndimage.binary_dilation(truth, iterations=3)
    extra = initial & ~truth
    llr = _llr(hu, initial)
    assert llr[extra].mean() < 1.0
    # the evidence is learnt from this too-wide mask, so 40% of the dark layer's voxels still
    # read above 0.5 one by one: the piece's mean is what keeps them removed
    assert (llr[extra] > 0.5).mean() > 0.3
    assert thick_layers(initial, truth, _llr(hu, initial), 0.5, -3.5)[extra].all()   # a layer
    out, report = appearance_veto(hu, initial, truth, SPACING, VetoLimits(thick_layer_llr=1.0))
    assert out.astype(bool)[extra].mean() < 0.05


def test_the_cropped_evidence_is_the_whole_volume_evidence():
    """The veto works in a box around the masks; what it keeps must be what the whole-volume
    evidence keeps."""
    hu, truth, initial = _case()
    rng = np.random.default_rng(1)
    near = np.abs(np.indices(SHAPE)[2] - 25) <= 2
    proposal = initial ^ (near & (rng.random(SHAPE) < 0.5))
    limits = VetoLimits(add_min_llr=-0.25, remove_margin=0.25)
    out, _ = appearance_veto(hu, initial, proposal, SPACING, limits)
    llr = _llr(hu, initial)
    want = proposal.copy()
    want[(proposal & ~initial) & (llr < -0.25)] = False
    want[removed_layers(initial, proposal, 0.5) & (llr > 0.25)] = True
    np.testing.assert_array_equal(out.astype(bool), want)


def test_wide_margins_veto_nothing_and_no_change_is_left_alone():
    hu, truth, initial = _case()
    proposal = truth.copy()
    proposal[:8] = False                                       # a wrong erosion of the body too
    loose, r3 = appearance_veto(hu, initial, proposal, SPACING, VetoLimits(-3.0, 3.0))
    assert r3["vetoed_added"] + r3["vetoed_removed"] == 0      # the ratio is clipped to +-3
    np.testing.assert_array_equal(loose.astype(bool), proposal)
    same, rep = appearance_veto(hu, initial, initial, SPACING)
    np.testing.assert_array_equal(same.astype(bool), initial)
    assert rep["proposed_added"] == rep["proposed_removed"] == 0


def test_bad_input_is_named():
    hu, truth, initial = _case()
    with pytest.raises(ValueError, match="one grid"):
        appearance_veto(hu[:-1], initial, truth, SPACING)
    with pytest.raises(ValueError, match="add_min_llr must be a finite number"):
        VetoLimits(add_min_llr=float("inf"))
    with pytest.raises(ValueError, match="remove_margin must be >= 0"):
        VetoLimits(remove_margin=-1.0)
    with pytest.raises(ValueError, match="layer_share"):
        VetoLimits(layer_share=2.0)
    with pytest.raises(ValueError, match="thick_layer_llr must be a finite number"):
        VetoLimits(thick_layer_llr=float("nan"))
    with pytest.raises(ValueError, match="thick_layer_llr must be a finite number"):
        VetoLimits(thick_layer_llr="high")
    assert VetoLimits(thick_layer_llr=np.float32(1.0)).thick_layer_llr == 1.0
    assert type(VetoLimits(thick_layer_llr="1.5").thick_layer_llr) is float     # stored as a float
