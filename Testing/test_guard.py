"""The do-no-harm guard: each rule clips what it should and leaves legal changes alone."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from SCORERefineLib.refiner.guard import GuardLimits, allowed_fraction, apply_guard, guard_volume

FULL = np.ones((3, 3, 3), bool)


def ball(shape, centre, radius, spacing=(1, 1, 1)):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)],
                        indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius ** 2).astype(np.uint8)


def test_legal_changes_are_left_alone():
    ini = ball((30, 30, 30), (15, 15, 15), 7)
    prop = ini.copy()
    prop[15, 15, 22:24] = 1                      # grow the boundary by 1-2 voxels
    prop[15:17, 8:10, 15] = 0                    # shrink it somewhere else
    out, rep = apply_guard(ini, prop, (1, 1, 1))
    np.testing.assert_array_equal(out, prop)
    assert rep["clipped_total"] == 0 and rep["changed"] == int((ini != prop).sum())
    json.dumps(rep)                              # JSON-able
    out, rep = apply_guard(ini, ini, (1, 1, 1))
    np.testing.assert_array_equal(out, ini)
    assert rep["changed"] == 0


def test_zone_clips_changes_beyond_the_margin_with_spacing():
    sp = (2.0, 1.0, 1.0)
    ini = ball((30, 40, 40), (15, 20, 20), 8, sp)
    prop = ball((30, 40, 40), (15, 20, 20), 18, sp)     # grows by 10 mm everywhere
    out, rep = apply_guard(ini, prop, sp, GuardLimits(margin_mm=3.0))
    d_out = ndi.distance_transform_edt(ini == 0, sampling=sp)
    np.testing.assert_array_equal(out.astype(bool), (ini > 0) | ((prop > 0) & (d_out <= 3.0)))
    assert rep["clipped"]["outside_zone"] == int(((prop > 0) & (d_out > 3.0)).sum()) > 0
    # removing deep inside: only the outer 3 mm may go
    prop = np.zeros_like(ini)
    prop[15, 20, 20] = 1
    out, _ = apply_guard(ini, prop, sp, GuardLimits(margin_mm=3.0))
    d_in = ndi.distance_transform_edt(ini, sampling=sp)
    np.testing.assert_array_equal(out.astype(bool), (ini > 0) & (d_in > 3.0) | (prop > 0))


def test_regions_extend_the_zone():
    ini = ball((30, 30, 30), (15, 15, 15), 5)
    prop = ini.copy()
    prop[15, 15, 20:28] = 1                       # a spike 7 voxels out
    regions = np.zeros(ini.shape, np.int16)
    regions[10:21, 10:21, 18:30] = 1
    out, _ = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=2.0))
    assert out[15, 15, 21:28].sum() == 2          # only what lies within 2 mm of the mask
    out, rep = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=2.0), regions=regions)
    np.testing.assert_array_equal(out, prop)


def test_islands_that_do_not_touch_the_initial_structure_are_removed():
    ini = ball((30, 30, 30), (15, 15, 15), 6)
    prop = ini.copy()
    prop[15, 15, 23] = 1                          # 2 voxels off the surface (21): an island
    prop[15, 15, 22] = 0
    prop[3, 3, 3] = 1                             # far away (clipped by the zone anyway)
    attached = (15, 22, 15)                       # 26-adjacent to the surface at y=21: kept
    prop[attached] = 1
    out, rep = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=5.0))
    assert out[15, 15, 23] == 0 and out[3, 3, 3] == 0 and out[attached] == 1
    assert rep["components_removed"] == 1 and rep["clipped"]["unconnected"] == 1
    assert rep["clipped"]["outside_zone"] == 1


def test_added_fragments_cut_off_from_the_structure_are_removed():
    ini = ball((30, 30, 30), (15, 15, 15), 6)
    prop = ini.copy()
    prop[15, 15, 21] = 0                          # a surface voxel removed ...
    prop[15, 15, 22] = 1                          # ... and one added just beyond it: touches the
    prop[15, 15, 23] = 1                          # initial's one-voxel neighbourhood, not the result
    prop[14:17, 14:17, 21] = 0                    # no other voxel at x = 21 touches the piece
    out, rep = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=5.0))
    assert out[15, 15, 22] == 0 and out[15, 15, 23] == 0
    assert rep["components_removed"] == 1 and rep["clipped"]["unconnected"] == 2
    assert out[15, 15, 21] == 0                   # the removal itself is kept
    near = ndi.binary_dilation(ini.astype(bool), FULL)
    assert near[15, 15, 22]                       # the old rule (dilated neighbourhood) kept it


def test_a_whole_initial_component_is_never_removed():
    ini = ball((30, 30, 40), (15, 15, 10), 6) | ball((30, 30, 40), (15, 15, 31), 2)
    prop = ini.copy()
    prop[:, :, 26:] = 0                           # the small component is gone
    prop[15, 15, 4] = 0                           # a legal removal on the big one
    out, rep = apply_guard(ini, prop, (1, 1, 1))
    assert out[:, :, 26:].sum() == ini[:, :, 26:].sum() and out[15, 15, 4] == 0
    assert rep["initial_components_restored"] == 1
    out, _ = apply_guard(ini, prop, (1, 1, 1), GuardLimits(keep_initial_components=False))
    assert out[:, :, 26:].sum() == 0


def test_ratings_pin_direct_and_bound_each_region():
    ini = np.zeros((20, 20, 40), np.uint8)
    ini[5:15, 5:15, 5:35] = 1
    regions = np.zeros(ini.shape, np.int16)
    regions[2:18, 2:18, 2:14] = 1                 # rated 5
    regions[2:18, 2:18, 14:26] = 2                # rated 3, over
    regions[2:18, 2:18, 26:38] = 3                # rated 2, under
    ratings = {1: (5.0, "none"), 2: (3.0, "over"), 3: (2.0, "under")}
    prop = ini.copy()
    prop[4, 5:15, 5:35] = 1                       # grows everywhere by one layer (10x30 voxels)
    prop[14, 5:15, 5:35] = 0                      # and shrinks on the other side
    strict = GuardLimits(margin_mm=5.0, against_share=0.0)
    out, rep = apply_guard(ini, prop, (1, 1, 1), strict, regions, ratings)
    r1, r2, r3 = (regions == k for k in (1, 2, 3))
    assert (out[r1] == ini[r1]).all()             # rated 5: no change
    assert not (out.astype(bool) & ~ini.astype(bool) & r2).any()    # over: no addition
    assert (out.astype(bool) < ini.astype(bool))[r2].sum() > 0      # over: removals kept
    assert not (~out.astype(bool) & ini.astype(bool) & r3).any()    # under: no removal
    assert (out.astype(bool) > ini.astype(bool))[r3].sum() > 0      # under: additions kept
    assert rep["regions"]["1"]["clipped"] == 180 and rep["clipped"]["rated_5"] == 180  # 2x10x9
    assert rep["clipped"]["against_direction"] == 120 + 90
    json.dumps(rep)
    # with against_share, changes against the rating are kept up to that share of the others
    out, rep = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=5.0, against_share=0.5),
                           regions, ratings)
    added_r2 = int((out.astype(bool) & ~ini.astype(bool) & r2).sum())
    removed_r2 = int((~out.astype(bool) & ini.astype(bool) & r2).sum())
    assert removed_r2 == 120 and added_r2 == 60
    assert rep["clipped"]["against_direction"] == 60 + 45
    # the amount bound: a region rated 4 (over) may lose only a few of its 1200 initial voxels
    ratings = {2: (4.0, "over")}
    prop = ini.copy()
    prop[5:15, 5:15, 14:26] = 0                   # the proposal removes the whole middle part
    prop[9:11, 9:11, 14:26] = 1                   # (a thin core keeps it connected)
    out, rep = apply_guard(ini, prop, (1, 1, 1), GuardLimits(margin_mm=10.0), regions, ratings)
    entry = rep["regions"]["2"]
    n_ini = int((ini.astype(bool) & r2).sum())
    expected = int(np.floor(n_ini * allowed_fraction(4.0, "over") * 1.25)) + 8
    assert entry["allowed"] == expected and entry["kept_change"] == expected
    assert rep["clipped"]["over_amount"] == entry["proposed_change"] - expected
    # the kept removals are those nearest the surface
    removed = ini.astype(bool) & ~out.astype(bool)
    d_in = ndi.distance_transform_edt(ini)
    clipped = ini.astype(bool) & ~prop.astype(bool) & out.astype(bool)
    assert d_in[removed].max() <= d_in[clipped].min()


def test_allowed_fraction_follows_the_calibration_table():
    assert allowed_fraction(5, "over") == pytest.approx(2 * 0.05 / 1.05)
    assert allowed_fraction(3, "under") == pytest.approx(2 * 0.3 / 0.7)
    assert allowed_fraction(1, "under") == np.inf
    assert allowed_fraction(1, "over") == pytest.approx(1.0)
    assert allowed_fraction(3.5, "over") > allowed_fraction(4, "over")


def test_for_regions_margin():
    assert GuardLimits.for_regions({"band_mm": 3.0}).margin_mm == 5.0
    assert GuardLimits.for_regions({"band_mm": 3.0, "max_band_mm": 10.0}).margin_mm == 12.0


def test_empty_initial_allows_nothing():
    ini = np.zeros((8, 8, 8), np.uint8)
    prop = ini.copy()
    prop[2:4, 2:4, 2:4] = 1
    out, rep = apply_guard(ini, prop, (1, 1, 1))
    assert not out.any() and rep["changed"] == 0


@st.composite
def cases(draw):
    shape = tuple(draw(st.integers(10, 18)) for _ in range(3))
    spacing = tuple(draw(st.sampled_from([0.7, 1.0, 2.0])) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 10_000)))
    ini = np.zeros(shape, np.uint8)
    for _ in range(draw(st.integers(1, 3))):
        ini |= ball(shape, rng.uniform(0, shape), rng.uniform(1.5, 5.0))
    if not ini.any():
        ini[tuple(s // 2 for s in shape)] = 1
    noise = ndi.gaussian_filter(rng.standard_normal(shape), 1.0)
    prop = (ini.astype(bool) ^ (noise > draw(st.floats(0.1, 0.6)))).astype(np.uint8)
    margin = draw(st.sampled_from([1.0, 2.5, 4.0]))
    return ini, prop, spacing, margin


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=cases())
def test_guarantees_hold_for_any_proposal(data):
    ini, prop, spacing, margin = data
    out, rep = apply_guard(ini, prop, spacing, GuardLimits(margin_mm=margin))
    i, o = ini.astype(bool), out.astype(bool)
    dist = np.where(i, ndi.distance_transform_edt(i, sampling=spacing),
                    ndi.distance_transform_edt(~i, sampling=spacing))
    assert (dist[o != i] <= margin + 1e-9).all()             # (i) only near the surface
    lab, n = ndi.label(o, structure=FULL)
    for k in range(1, n + 1):                                 # (ii) every piece holds initial voxels
        assert (i & (lab == k)).any()
    ilab, m = ndi.label(i, structure=FULL)
    for k in range(1, m + 1):                                 # no initial component lost
        assert (o & (ilab == k)).any()
    # changes are a subset of the proposal's: the guard only ever takes changes away
    assert not ((o != i) & (prop.astype(bool) == i)).any()
    again, _ = apply_guard(ini, out, spacing, GuardLimits(margin_mm=margin))
    np.testing.assert_array_equal(again, out)                # idempotent
    json.dumps(rep)


def test_guard_volume_reads_feedback():
    from SCORERefineLib.feedback import CaseFeedback
    from SCORERefineLib.imageio import Geometry, Volume

    g = Geometry.isotropic((20, 20, 20), (1.0, 1.0, 1.0))
    ini = ball((20, 20, 20), (10, 10, 10), 5)
    prop = ball((20, 20, 20), (10, 10, 10), 7)
    regions = np.where(ini > -1, 1, 0).astype(np.int16)
    fb = CaseFeedback("c", [1], {"method": "patches", "band_mm": 3.0})
    fb.rate("a", 1, 5, "none")
    out, rep = guard_volume(Volume(ini, g), Volume(prop, g), regions=regions, feedback=fb)
    np.testing.assert_array_equal(out.array, ini)
    assert rep["limits"]["margin_mm"] == 5.0 and rep["clipped"]["rated_5"] > 0
    out, rep = guard_volume(Volume(ini, g), prop)
    np.testing.assert_array_equal(out.array, prop)


def test_the_guard_keeps_most_of_a_perfect_refinement_on_phantoms():
    """The guard's ceiling: refining to the reference, the guarded result (ratings from the
    simulated rater, poorly rated regions extended) keeps nearly all of the correction."""
    from SCORERefineLib.phantoms import case_seed, make_phantom
    from SCORERefineLib.rater import simulate_feedback
    from SCORERefineLib.regions import RegionParams, extend_regions, split_regions

    def dice(a, b):
        a, b = a > 0, b > 0
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    for i in range(3):
        ph = make_phantom(case_seed(7, i), "tiny")
        ini, ref = ph.initial.array, ph.reference.array
        sp = ph.initial.geometry.spacing_zyx
        params = RegionParams()
        regions = split_regions(ini, sp, params)
        ratings = simulate_feedback("c", ini, ref, regions).consensus()
        regions = extend_regions(regions, ini, sp, ratings, params)
        limits = GuardLimits.for_regions(params.info())
        for r, rt in ((None, None), (regions, ratings)):
            out, _ = apply_guard(ini, ref, sp, limits, r, rt)
            gain = dice(ref, ref) - dice(ini, ref)
            assert dice(out, ref) - dice(ini, ref) >= 0.8 * gain
