"""Regions: band geometry, partition properties, methods, components, real anatomy."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from conftest import ellipsoid
from SCORERefineLib.errors import InputError
from SCORERefineLib.imageio import Geometry, Volume, read_mask
from SCORERefineLib.regions import (METHODS, RegionParams, boundary_band, error_coverage,
                                    extend_regions, extension_depth, make_regions, region_band, region_centres,
                                    region_sizes, split_regions, subdivide_regions)

FACE = ndi.generate_binary_structure(3, 1)


def reference_band(mask: np.ndarray, spacing, band_mm: float) -> np.ndarray:
    """The documented band, computed on the whole volume (no crop) as an oracle."""
    m = mask != 0
    surface = m & ~ndi.binary_erosion(m, FACE, border_value=1)
    outer = ~m & ndi.binary_dilation(m, FACE)
    d_in = ndi.distance_transform_edt(m, sampling=spacing)
    d_out = ndi.distance_transform_edt(~m, sampling=spacing)
    return surface | outer | (m & (d_in <= band_mm)) | (~m & (d_out <= band_mm))


def check_partition(mask, spacing, params, regions):
    """Assert every documented property of a region map."""
    band = region_band(mask, spacing, params)
    assert (band >= boundary_band(mask, spacing, params.band_mm)).all()   # band_mm is the minimum
    assert regions.dtype == np.int16 and regions.shape == mask.shape
    np.testing.assert_array_equal(regions > 0, band)            # band voxels labelled, nothing else
    labels = np.unique(regions[regions > 0])
    k = len(labels)
    assert 1 <= k <= params.n_regions
    np.testing.assert_array_equal(labels, np.arange(1, k + 1))   # consecutive, no empty label
    assert (band & (mask != 0)).any() and (band & (mask == 0)).any()
    centres = region_centres(regions, spacing)
    assert sorted(centres) == list(labels)
    for lab, c in centres.items():
        assert regions[c] == lab
    # each band voxel takes the region of its nearest surface voxel (mm), so inner and outer
    # band voxels at one place share a region
    crop = ndi.find_objects(band.astype(np.uint8))[0]   # the band's bounding box: fast on big volumes
    m, regions = mask[crop] != 0, regions[crop]
    surface = m & ~ndi.binary_erosion(m, FACE, border_value=1)
    d_any = ndi.distance_transform_edt(~surface, sampling=spacing)
    for lab in labels:
        d_own = ndi.distance_transform_edt(~(surface & (regions == lab)), sampling=spacing)
        sel = regions == lab
        np.testing.assert_allclose(d_own[sel], d_any[sel], atol=1e-9)
    return k


# ------------------------------------------------------------------------- hypothesis


@st.composite
def blob_masks(draw):
    shape = tuple(draw(st.integers(14, 24)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.5, 3.0)) for _ in range(3))
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(draw(st.integers(1, 3))):
        radii = tuple(draw(st.floats(1.0, 6.0)) for _ in range(3))
        centre = tuple(draw(st.floats(0, s - 1)) for s in shape)
        mask |= ellipsoid(shape, radii, centre)
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = 1
    return mask, spacing


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=blob_masks(), method=st.sampled_from(METHODS), n=st.integers(1, 12),
       band=st.floats(0.5, 5.0), seed=st.integers(0, 3))
def test_partition_properties(data, method, n, band, seed):
    mask, spacing = data
    params = RegionParams(method=method, n_regions=n, band_mm=band, seed=seed)
    regions = split_regions(mask, spacing, params)
    check_partition(mask, spacing, params, regions)
    np.testing.assert_array_equal(regions, split_regions(mask.copy(), spacing, params))  # deterministic
    # without widening the crop does not change the band: compare with a whole-volume oracle
    plain = RegionParams(method=method, n_regions=n, band_mm=band, seed=seed, widen="none")
    regions = split_regions(mask, spacing, plain)
    check_partition(mask, spacing, plain, regions)
    np.testing.assert_array_equal(regions > 0, reference_band(mask, spacing, band))


# ------------------------------------------------------------------------- band geometry


def test_band_is_in_millimetres_with_anisotropic_spacing():
    mask = np.zeros((20, 20, 30), np.uint8)
    mask[5:15, 5:15, 8:22] = 1
    band = boundary_band(mask, (4.0, 1.0, 1.0), 3.0)
    # along x (1 mm): 3 voxels inside and 3 outside the surface
    assert band[10, 10, 5:11].tolist() == [1, 1, 1, 1, 1, 1]
    assert not band[10, 10, 4] and not band[10, 10, 11]
    # along z (4 mm > 3 mm): only the layer touching the surface on each side
    assert band[4:6, 10, 15].all() and not band[3, 10, 15] and not band[6, 10, 15]


def test_band_does_not_treat_volume_edge_as_surface():
    mask = np.zeros((10, 12, 12), np.uint8)
    mask[:, 4:8, 4:8] = 1                    # a rod running through the whole z extent
    band = boundary_band(mask, (1, 1, 1), 1.0)
    assert not band[:, 5:7, 5:7].any()       # rod core is 2 voxels from its sides: not in band
    regions = split_regions(mask, (1, 1, 1), RegionParams("slabs", 3, 1.0))
    check_partition(mask, (1, 1, 1), RegionParams("slabs", 3, 1.0), regions)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 8)), np.zeros((4, 4))])
def test_empty_or_2d_mask_is_refused(bad):
    with pytest.raises(InputError, match="empty|3D"):
        split_regions(bad, (1, 1, 1))


def test_full_mask_and_bad_parameters_are_refused():
    with pytest.raises(InputError, match="fills the whole volume"):
        split_regions(np.ones((6, 6, 6)), (1, 1, 1))
    mask = ellipsoid((16, 16, 16), (5, 5, 5))
    with pytest.raises(InputError, match="unknown region method 'voronoi'"):
        split_regions(mask, (1, 1, 1), RegionParams(method="voronoi"))
    with pytest.raises(InputError, match="n_regions"):
        split_regions(mask, (1, 1, 1), RegionParams(n_regions=0))
    with pytest.raises(InputError, match="band_mm"):
        split_regions(mask, (1, 1, 1), RegionParams(band_mm=-1))
    with pytest.raises(InputError, match="spacing"):
        split_regions(mask, (1, 0, 1))


# ------------------------------------------------------------------------- methods


def test_patches_make_the_target_count_of_compact_balanced_regions():
    mask = ellipsoid((28, 28, 32), (10, 10, 12))
    params = RegionParams("patches", 12, 2.0)
    regions = split_regions(mask, (1, 1, 1), params)
    assert check_partition(mask, (1, 1, 1), params, regions) == 12
    sizes = np.array(list(region_sizes(regions).values()))
    assert sizes.max() < 3 * sizes.min()
    # compact: each patch spans far less than the object's diameter (24 voxels)
    for lab in range(1, 13):
        idx = np.argwhere(regions == lab)
        assert np.linalg.norm(idx.max(0) - idx.min(0)) < 20
    # another seed gives another (still valid) split
    other = split_regions(mask, (1, 1, 1), RegionParams("patches", 12, 2.0, seed=7))
    assert not np.array_equal(other, regions)


@pytest.mark.parametrize("spacing,shape,radii,axis", [
    ((1.0, 1.0, 1.0), (16, 16, 48), (5, 5, 20), 2),    # long along x in voxels
    ((5.0, 1.0, 1.0), (14, 30, 30), (5.5, 10, 10), 0),  # long along z only in millimetres
])
def test_slabs_follow_the_long_axis_in_order(spacing, shape, radii, axis):
    mask = ellipsoid(shape, radii)
    params = RegionParams("slabs", 5, 2.0)
    regions = split_regions(mask, spacing, params)
    assert check_partition(mask, spacing, params, regions) == 5
    cents = np.array([np.argwhere(regions == lab).mean(0) for lab in range(1, 6)])
    along = cents[:, axis] * spacing[axis]
    assert np.all(np.diff(along) > 0)
    across = [a for a in range(3) if a != axis]
    assert np.ptp(along) > 3 * np.ptp(cents[:, across] * np.asarray(spacing)[across])


def test_components_each_get_regions_in_proportion_to_surface():
    mask = ellipsoid((24, 24, 60), (9, 9, 9), (12, 12, 14))
    mask |= ellipsoid((24, 24, 60), (1.2, 1.2, 1.2), (12, 12, 50))  # a tiny fragment
    mask |= ellipsoid((24, 24, 60), (5, 5, 5), (12, 12, 38))
    params = RegionParams("patches", 10, 1.5)
    regions = split_regions(mask, (1, 1, 1), params)
    assert check_partition(mask, (1, 1, 1), params, regions) == 10
    comp, _ = ndi.label(mask)
    def labels_near(c):  # regions holding that component's voxels
        return set(np.unique(regions[(comp == c) & (regions > 0)]))
    big, tiny, mid = comp[12, 12, 14], comp[12, 12, 50], comp[12, 12, 38]
    assert len(labels_near(tiny)) == 1
    assert labels_near(tiny).isdisjoint(labels_near(big) | labels_near(mid))
    assert len(labels_near(big)) > len(labels_near(mid)) >= 1


def test_more_components_than_regions_stays_within_target():
    mask = np.zeros((10, 10, 60), np.uint8)
    for i in range(6):
        mask[3:7, 3:7, 2 + 10 * i: 6 + 10 * i] = 1
    for method in METHODS:
        params = RegionParams(method, 3, 1.0)
        regions = split_regions(mask, (1, 1, 1), params)
        assert check_partition(mask, (1, 1, 1), params, regions) == 3


def test_tiny_mask_gets_fewer_regions():
    mask = np.zeros((9, 9, 9), np.uint8)
    mask[4, 4, 4] = 1
    for method in METHODS:
        params = RegionParams(method, 12, 1.0)
        regions = split_regions(mask, (1, 1, 1), params)
        assert check_partition(mask, (1, 1, 1), params, regions) == 1


def test_make_regions_keeps_the_grid():
    geom = Geometry.isotropic((16, 18, 20), (2.0, 0.8, 0.8), origin=(5, 6, 7))
    vol = Volume(ellipsoid((16, 18, 20), (4, 6, 6)), geom)
    out = make_regions(vol, RegionParams("patches", 6, 2.0))
    assert out.geometry == geom and out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, split_regions(vol.array, geom.spacing_zyx,
                                                           RegionParams("patches", 6, 2.0)))


def test_region_centres_nearest_to_centroid_and_inside():
    regions = np.zeros((5, 5, 12), np.int16)
    regions[2, 2, 0:5] = 1
    regions[2, 0:5, 8] = 2
    regions[0, 0, 11] = 2          # an outlier pulls the centroid, the centre stays in the region
    c = region_centres(regions)
    assert c[1] == (2, 2, 2)
    assert regions[c[2]] == 2
    assert region_centres(np.zeros((3, 3, 3))) == {}


# ------------------------------------------------------------------------- real data


def test_real_totalsegmentator_humerus(shared_humerus):
    vol = read_mask(shared_humerus / "totalseg_fast.nii.gz", label=69)
    spacing = vol.geometry.spacing_zyx
    assert spacing[0] > 1.5 * spacing[1]          # really anisotropic
    for method in METHODS:
        params = RegionParams(method, 12, 3.0)
        t0 = time.perf_counter()
        regions = split_regions(vol.array, spacing, params)
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, f"{method} took {elapsed:.2f} s on a 512x512x20 mask"
        assert check_partition(vol.array, spacing, params, regions) == 12
        sizes = np.array(list(region_sizes(regions).values()))
        assert sizes.min() > 0.1 * sizes.mean()
    slabs = split_regions(vol.array, spacing, RegionParams("slabs", 4, 3.0))
    z_of = [np.argwhere(slabs == lab)[:, 0].mean() for lab in range(1, 5)]
    assert np.all(np.diff(z_of) > 0) or np.all(np.diff(z_of) < 0)   # the shaft runs along z


@pytest.mark.parametrize("label,name", [(3, "thoracic vertebral column"), (1, "ribs")])
def test_real_chest_ct_structures(slicerio_data, label, name):
    seg = sitk.ReadImage(str(slicerio_data / "Segmentation.seg.nrrd"))
    mask = (sitk.GetArrayFromImage(seg) == label).astype(np.uint8)
    spacing = tuple(reversed(seg.GetSpacing()))                  # 10 x 3.05 x 3.05 mm
    n_comp = ndi.label(mask, structure=np.ones((3, 3, 3)))[1]
    for method in METHODS:
        params = RegionParams(method, 12, 3.0)
        regions = split_regions(mask, spacing, params)
        assert check_partition(mask, spacing, params, regions) == 12, (name, method)
        sizes = np.array(list(region_sizes(regions).values()))
        if method == "patches":                                  # slabs: equal length, not size
            assert sizes.max() < 6 * sizes.min(), (name, sizes)
    if label == 1:
        assert n_comp > 12          # the ribs: more fragments than regions, still 12 regions


# ------------------------------------------------------------------------- widening, coverage


def test_band_widens_over_holes_and_thin_protrusions_only_up_to_the_cap():
    shape = (40, 40, 60)
    zz, yy, xx = np.mgrid[:40, :40, :60]
    mask = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 14 ** 2).astype(np.uint8)
    hole = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 6 ** 2
    mask[hole] = 0                                   # an enclosed hole, radius 6 (deeper than 3 mm)
    mask[16:24, 16:24, 34:56] = 1                    # a thin (8 mm) protrusion, 22 mm long: a leak
    params = RegionParams(band_mm=2.0, max_band_mm=8.0, thin_mm=4.5)
    band = region_band(mask, (1, 1, 1), params)
    plain = boundary_band(mask, (1, 1, 1), 2.0)
    assert band[hole].all() and not plain[hole].all()
    leak = np.zeros_like(band)
    leak[16:24, 16:24, 36:56] = True
    assert band[leak].all() and not plain[leak].all()   # the leak's core is in the band
    capped = region_band(mask, (1, 1, 1), RegionParams(band_mm=2.0, max_band_mm=3.0, thin_mm=4.5))
    assert not capped[19:21, 19:21, 40:50].any()     # 4 mm deep: beyond a 3 mm cap
    d_out = ndi.distance_transform_edt(mask == 0)
    d_in = ndi.distance_transform_edt(mask)
    assert (np.where(mask > 0, d_in, d_out)[band] <= 8.0).all()
    assert band.sum() < 1.5 * plain.sum()            # judgeable: not the whole structure
    with pytest.raises(InputError):
        RegionParams(widen="everything").validate()


def test_edge_widening_needs_the_image_and_widens_where_the_edge_is_weak():
    mask = np.zeros((30, 30, 30), np.uint8)
    mask[8:22, 8:22, 8:22] = 1
    image = np.where(mask > 0, 1000, 0).astype(np.int16)
    image[:, :, 15:] = 0                             # no edge on the right half of the box
    params = RegionParams(band_mm=2.0, max_band_mm=6.0, widen="shape+edge")
    band = region_band(mask, (1, 1, 1), params, image=image)
    shape_only = region_band(mask, (1, 1, 1), params)
    assert band.sum() > shape_only.sum()
    assert band[15, 15, 26] and not band[15, 15, 3]  # wider where weak (right), not where strong
    regions = make_regions(Volume(mask, Geometry.isotropic(mask.shape, (1, 1, 1))), params,
                           image=Volume(image, Geometry.isotropic(mask.shape, (1, 1, 1))))
    np.testing.assert_array_equal(regions.array > 0, band)


def test_extend_regions_grows_poorly_rated_regions_on_their_side():
    mask = np.zeros((30, 30, 40), np.uint8)
    mask[5:25, 5:25, 5:35] = 1
    params = RegionParams("slabs", 3, 2.0, widen="none", max_band_mm=6.0)
    regions = split_regions(mask, (1, 1, 1), params)
    ratings = {1: (1.0, "over"), 2: (4.0, "over"), 3: (2.0, "under")}
    params = RegionParams("slabs", 3, 2.0, widen="none", max_band_mm=6.0, extend_max_score=2.5)
    ext = extend_regions(regions, mask, (1, 1, 1), ratings, params)
    np.testing.assert_array_equal(ext[regions > 0], regions[regions > 0])   # nothing relabelled
    grown = (ext > 0) & (regions == 0)
    assert set(np.unique(ext[grown])) == {1, 3}
    assert (mask[grown & (ext == 1)] == 1).all() and (mask[grown & (ext == 3)] == 0).all()
    assert not ((ext == 2) & (regions == 0)).any()
    np.testing.assert_array_equal(extend_regions(regions, mask, (1, 1, 1), {}, params), regions)
    # graded along sqrt((5 - s) / 4): a 1 reaches max_band_mm, a 4 half-way, a 2 sqrt(3/4) of it
    assert extension_depth(1.0, params) == 6.0 and extension_depth(4.0, params) == 4.0
    assert extension_depth(2.0, params) == pytest.approx(2.0 + 4.0 * np.sqrt(0.75))
    assert extension_depth(5.0, params) == 2.0
    d_in = ndi.distance_transform_edt(mask)
    assert d_in[grown & (ext == 1)].max() == pytest.approx(6.0, abs=1.0)


def test_error_coverage():
    ini = np.zeros((6, 6, 6), np.uint8)
    ref = ini.copy()
    ini[1:3, 1:3, 1:3] = 1
    ref[1:3, 1:3, 1:4] = 1
    reg = np.zeros_like(ini)
    assert error_coverage(ini, ini, reg) == 1.0
    assert error_coverage(ini, ref, reg) == 0.0
    reg[1:2, :, :] = 1
    assert error_coverage(ini, ref, reg) == 0.5


@pytest.mark.parametrize("preset,n", [("tiny", 4), ("default", 3)])
def test_regions_reach_the_errors_on_phantoms(preset, n):
    """>= 95 % of the voxels where the initial mask is wrong lie in a region once poorly rated
    regions are extended (the phantom cohort of seed 7)."""
    from SCORERefineLib.phantoms import case_seed, make_phantom
    from SCORERefineLib.rater import simulate_feedback

    wrong = covered = 0
    for i in range(n):
        ph = make_phantom(case_seed(7, i), preset)
        ini, ref = ph.initial.array, ph.reference.array
        sp = ph.initial.geometry.spacing_zyx
        regions = split_regions(ini, sp)
        fb = simulate_feedback("c", ini, ref, regions)
        ext = extend_regions(regions, ini, sp, fb.consensus())
        cov = error_coverage(ini, ref, ext)
        assert cov >= 0.95 - 1e-9 or (ini != ref).sum() < 50
        wrong += int((ini != ref).sum())
        covered += cov * int((ini != ref).sum())
    assert covered / wrong >= 0.95


def test_splitters_agree_with_the_catalog():
    from SCORERefineLib.catalog import REGION_METHODS, names
    from SCORERefineLib.regions import SPLITTERS

    assert list(SPLITTERS) == names(REGION_METHODS) == list(METHODS)
    for splitter in SPLITTERS.values():
        assert callable(splitter.split) and callable(splitter.capacity)


def test_dataset_coverage_reads_cases(tmp_path):
    from SCORERefineLib.case import write_case
    from SCORERefineLib.feedback import save_feedback
    from SCORERefineLib.phantoms import case_seed, make_phantom
    from SCORERefineLib.rater import simulate_feedback
    from SCORERefineLib.regions import dataset_coverage

    ph = make_phantom(case_seed(7, 1), "tiny")
    params = RegionParams()
    regions = make_regions(ph.initial, params)
    case = write_case(tmp_path, "a", ph.image, ph.initial, regions, ph.reference)
    save_feedback(simulate_feedback("a", ph.initial, ph.reference, regions,
                                    region_info=params.info()), case.feedback_path)
    got = dataset_coverage(tmp_path)
    row = got["cases"]["a"]
    assert row["coverage"] == pytest.approx(error_coverage(ph.initial.array, ph.reference.array,
                                                           regions.array))
    assert row["coverage_extended"] >= row["coverage"] and got["pooled_extended"] >= 0.95
    assert row["region_voxels_extended"] >= row["region_voxels"]


def test_subdivide_splits_only_the_named_regions_into_compact_pieces():
    mask = ellipsoid((28, 28, 32), (10, 10, 12))
    spacing = (2.0, 1.0, 1.0)
    regions = split_regions(mask, spacing, RegionParams("patches", 6, 2.0))
    out = subdivide_regions(regions, spacing, [2, 5], parts=4, seed=3)
    assert out.dtype == np.int16
    assert np.array_equal(out > 0, regions > 0)            # the band is unchanged
    assert sorted(region_sizes(out)) == list(range(1, 13))  # 6 - 2 + 2 * 4 labels, no gap
    # the others keep their voxels, renumbered in order: 1 -> 1, 3 -> 6, 4 -> 7, 6 -> 12
    for old, new in ((1, 1), (3, 6), (4, 7), (6, 12)):
        assert np.array_equal(out == new, regions == old)
    # each split region's pieces are consecutive labels inside it, smaller and compact
    for old, first in ((2, 2), (5, 8)):
        pieces = range(first, first + 4)
        assert np.array_equal(np.isin(out, pieces), regions == old)
        span = lambda sel: np.linalg.norm(np.ptp(np.argwhere(sel), axis=0) * np.array(spacing))
        assert all(span(out == p) < span(regions == old) for p in pieces)
    assert np.array_equal(out, subdivide_regions(regions, spacing, [2, 5], parts=4, seed=3))
    assert np.array_equal(subdivide_regions(regions, spacing, [2], parts=1), regions)
    assert np.array_equal(subdivide_regions(regions, spacing, []), regions)


def test_subdivide_refuses_a_missing_region_and_a_bad_count():
    regions = split_regions(ellipsoid(), (1, 1, 1), RegionParams("patches", 4, 2.0))
    with pytest.raises(InputError, match=r"no such region"):
        subdivide_regions(regions, (1, 1, 1), [9])
    with pytest.raises(InputError, match="parts"):
        subdivide_regions(regions, (1, 1, 1), [1], parts=0)
