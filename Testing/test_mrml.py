"""The MRML bridge on real Slicer MRML (slicer-core, no Qt): volumes, segments, regions,
refinement in place with undo, and the rating session kept through a scene save and reload."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for real MRML")

import slicer  # noqa: E402,F401  (real MRML from slicer-core)
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

from SCORERefineLib import mrml as mb  # noqa: E402
from SCORERefineLib.errors import InputError  # noqa: E402
from SCORERefineLib.imageio import Geometry, Volume, read_image, write_volume  # noqa: E402
from SCORERefineLib.session import RatingSession  # noqa: E402

from conftest import ellipsoid  # noqa: E402


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# anisotropic spacing, non-zero origin, oblique direction with one flipped axis (left-handed)
OBLIQUE = Geometry(size=(32, 28, 24), spacing=(0.8, 1.1, 2.5), origin=(-41.5, 17.25, 103.0),
                   direction=tuple((_rotation(0.2, -0.35, 0.6) @ np.diag([1, -1, 1])).ravel()))
# the same, right-handed (what Slicer's readers produce; scene files are read back as such)
RIGHT = Geometry(size=(32, 28, 24), spacing=(0.8, 1.1, 2.5), origin=(-41.5, 17.25, 103.0),
                 direction=tuple((_rotation(0.2, -0.35, 0.6) @ np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])).ravel()))


@pytest.fixture
def scene():
    return mb.new_scene()


def _ct(geometry=OBLIQUE, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(-1000, 1500, geometry.shape).astype(np.int16), geometry)


def _same_geometry(a: Geometry, b: Geometry):
    assert a.size == b.size
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-9)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-9)


def test_volume_round_trip_keeps_voxels_and_geometry(scene):
    ct = _ct()
    node = mb.volume_to_node(scene, ct, "CT")
    back = mb.volume_from_node(node)
    assert back.array.dtype == ct.array.dtype
    np.testing.assert_array_equal(back.array, ct.array)
    _same_geometry(back.geometry, ct.geometry)
    # MRML holds RAS: origin x and y are negated, z kept
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    assert [m.GetElement(i, 3) for i in range(3)] == pytest.approx([41.5, -17.25, 103.0])
    labels = mb.volume_to_node(scene, ct.with_array((ct.array > 0).astype(np.uint8)), "L", labelmap=True)
    assert labels.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(mb.volume_from_node(labels).array, ct.array > 0)


def _physically_equal(a: Volume, b: Volume, n=200, seed=0):
    """Every sampled voxel of ``a`` sits at a voxel centre of ``b`` holding the same value."""
    rng = np.random.default_rng(seed)
    db = np.asarray(b.geometry.direction).reshape(3, 3) @ np.diag(b.geometry.spacing)
    for zyx in rng.integers(0, a.array.shape, size=(n, 3)):
        p = np.asarray(a.geometry.index_to_physical(zyx))
        ijk = np.linalg.solve(db, p - np.asarray(b.geometry.origin))
        assert np.allclose(ijk, np.round(ijk), atol=1e-6)
        i, j, k = (int(v) for v in np.round(ijk))
        assert b.array[k, j, i] == a.array[tuple(zyx)]


@pytest.mark.parametrize("geometry", [RIGHT, OBLIQUE], ids=["right-handed", "left-handed"])
def test_geometry_agrees_with_slicers_own_file_reader(scene, tmp_path, geometry):
    """LPS<->RAS is right, not just self-consistent: an NRRD written by SimpleITK and read by
    MRML's storage node puts every voxel where SimpleITK put it (and vice versa)."""
    ct = _ct(geometry)
    path = write_volume(ct, tmp_path / "ct.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    back = mb.volume_from_node(node)
    if np.linalg.det(np.reshape(geometry.direction, (3, 3))) > 0:
        np.testing.assert_array_equal(back.array, ct.array)
        _same_geometry(back.geometry, ct.geometry)
    # Slicer's reader reverses the slice order of a left-handed grid: same voxels, same places
    _physically_equal(back, ct)
    _physically_equal(ct, back)
    # and the other way round: a node we made, written by MRML, read by SimpleITK
    mine = mb.volume_to_node(scene, ct, "mine")
    mine.AddDefaultStorageNode()
    mine.GetStorageNode().SetFileName(str(tmp_path / "mine.nrrd"))
    assert mine.GetStorageNode().WriteData(mine)
    _physically_equal(ct, read_image(tmp_path / "mine.nrrd"))


def test_segment_round_trip_and_bad_input(scene):
    ct = _ct()
    mask = ct.with_array(ellipsoid(OBLIQUE.shape, (7, 8, 10)))
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "seg", vnode)
    sid = mb.add_mask_segment(seg, mask, "humerus_left")
    assert mb.find_segment(seg, "Humerus_Left") == sid
    got = mb.segment_mask(seg, sid, ct.geometry)
    assert not got.resampled and got.message == ""
    np.testing.assert_array_equal(got.mask.array, mask.array)
    # the segment is stored cropped to its extent, on the same lattice: no resampling
    assert got.source_geometry.size != ct.geometry.size
    with pytest.raises(InputError, match="no volume selected"):
        mb.volume_from_node(None)
    empty = mb.new_segmentation_node(scene, "empty")
    with pytest.raises(InputError, match="has no segments"):
        mb.find_segment(empty, "humerus_left")
    with pytest.raises(InputError, match=r"no segment 'femur'.*humerus_left"):
        mb.find_segment(seg, "femur")
    with pytest.raises(InputError, match="no segmentation selected"):
        mb.find_segment(None, "x")


def test_segment_on_another_grid_is_resampled_and_reported(scene):
    ct = _ct(Geometry.isotropic((20, 30, 30), (2.0, 1.0, 1.0), origin=(3.0, -4.0, 10.0)))
    fine = Geometry.isotropic((40, 60, 60), (1.0, 0.5, 0.5), origin=(2.75, -4.25, 9.5))
    fine_mask = Volume(ellipsoid((40, 60, 60), (12, 18, 18)), fine)
    seg = mb.new_segmentation_node(scene, "seg")
    sid = mb.add_mask_segment(seg, fine_mask, "bone")
    got = mb.segment_mask(seg, sid, ct.geometry)
    assert got.resampled and "resampled onto the volume grid" in got.message
    assert got.mask.geometry == ct.geometry and got.mask.array.shape == ct.array.shape
    # nearest-neighbour resampling of the same ellipsoid: volumes agree to a few percent
    vol_fine = fine_mask.array.sum() * fine.voxel_volume_mm3
    vol_ct = got.mask.array.sum() * ct.geometry.voxel_volume_mm3
    assert vol_ct == pytest.approx(vol_fine, rel=0.1)


def test_regions_become_numbered_coloured_segments_with_the_right_voxels(scene):
    ct = _ct()
    rng = np.random.default_rng(3)
    regions = np.zeros(OBLIQUE.shape, np.int16)
    for k in (1, 2, 3, 5, 8):                      # non-contiguous labels on purpose
        z, y, x = rng.integers(0, 18, 3)
        regions[z:z + 6, y:y + 7, x:x + 5] = k
    reg = ct.with_array(regions)
    node = mb.regions_to_segmentation(scene, reg, reference_volume_node=mb.volume_to_node(scene, ct))
    ids = mb.region_segment_ids(node)
    assert sorted(ids) == [k for k in (1, 2, 3, 5, 8) if (regions == k).any()]
    s = node.GetSegmentation()
    colours = set()
    for k, sid in ids.items():
        assert s.GetSegment(sid).GetName() == f"Region {k}"
        colours.add(tuple(round(c, 3) for c in s.GetSegment(sid).GetColor()))
        got = mb.segment_mask(node, sid, ct.geometry).mask.array
        np.testing.assert_array_equal(np.argwhere(got), np.argwhere(regions == k))
    assert len(colours) == len(ids)
    np.testing.assert_array_equal(mb.regions_from_segmentation(node, ct.geometry).array, regions)
    # a click in a slice view (RAS) finds the region under it
    k = sorted(ids)[-1]
    zyx = tuple(np.argwhere(regions == k)[0])
    assert mb.region_at_ras(node, mb.index_to_ras(ct.geometry, zyx), ct.geometry) == k
    outside = tuple(np.argwhere(regions == 0)[0])
    assert mb.region_at_ras(node, mb.index_to_ras(ct.geometry, outside), ct.geometry) is None


def _refiner(image: Volume, initial: Volume) -> Volume:
    """A stand-in refiner: grow the mask by one voxel along x and drop its top slice."""
    out = initial.array.copy()
    out[:, :, 1:] |= initial.array[:, :, :-1]
    top = np.nonzero(initial.array.any(axis=(1, 2)))[0].max()
    out[top] = 0
    return initial.with_array(out)


def test_refine_in_place_then_undo_restores_the_exact_initial_segment(scene, tmp_path):
    ct = _ct()
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "TotalSegmentator", vnode)
    other = mb.add_mask_segment(seg, ct.with_array(ellipsoid(OBLIQUE.shape, (3, 3, 3), (5, 5, 5))), "other")
    initial = ct.with_array(ellipsoid(OBLIQUE.shape, (7, 8, 10)))
    sid = mb.add_mask_segment(seg, initial, "humerus_left")
    before_geom = mb.segment_volume(seg, sid).geometry
    refined = _refiner(ct, mb.segment_mask(seg, sid, ct.geometry).mask)
    res = mb.apply_refined_mask(seg, sid, refined)
    expect_add = int(((refined.array == 1) & (initial.array == 0)).sum())
    expect_rem = int(((refined.array == 0) & (initial.array == 1)).sum())
    assert (res.voxels_added, res.voxels_removed) == (expect_add, expect_rem) and expect_add and expect_rem
    assert res.volume_before_ml == pytest.approx(initial.array.sum() * OBLIQUE.voxel_volume_mm3 / 1000)
    assert "voxels added" in res.summary()
    np.testing.assert_array_equal(mb.segment_mask(seg, sid, ct.geometry).mask.array, refined.array)
    # refining twice keeps the first initial for undo
    mb.apply_refined_mask(seg, sid, _refiner(ct, refined))
    assert mb.undo_refinement(seg, sid)
    np.testing.assert_array_equal(mb.segment_mask(seg, sid, ct.geometry).mask.array, initial.array)
    _same_geometry(mb.segment_volume(seg, sid).geometry, before_geom)
    assert mb.segment_ids(seg) == [other, sid]              # the other segment untouched, order kept
    assert mb.segment_mask(seg, other, ct.geometry).mask.array.sum() > 0
    assert mb.undo_refinement(seg, sid) is False
    assert seg.GetNodeReference(mb.BACKUP_REFERENCE_ROLE) is None


def test_undo_still_works_after_the_scene_is_saved_and_reloaded(scene, tmp_path):
    ct = _ct(RIGHT)
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "seg", vnode)
    initial = ct.with_array(ellipsoid(RIGHT.shape, (7, 8, 10)))
    sid = mb.add_mask_segment(seg, initial, "humerus_left")
    mb.apply_refined_mask(seg, sid, _refiner(ct, initial))
    mb.save_scene(scene, tmp_path / "scene" / "scene.mrml")
    fresh = mb.load_scene(tmp_path / "scene" / "scene.mrml")
    seg2 = [n for n in mb.nodes_by_class(fresh, "vtkMRMLSegmentationNode") if n.GetName() == "seg"][0]
    assert mb.has_backup(seg2, sid)
    assert mb.undo_refinement(seg2, sid)
    np.testing.assert_array_equal(mb.segment_mask(seg2, sid, ct.geometry).mask.array, initial.array)


def test_rating_session_survives_scene_save_and_reload(scene, tmp_path):
    ct = _ct(RIGHT)
    vnode = mb.volume_to_node(scene, ct, "CT")
    regions = np.zeros(RIGHT.shape, np.int16)
    regions[2:8, 2:10, 2:9], regions[10:16, 2:10, 2:9], regions[2:8, 14:22, 2:9] = 1, 2, 3
    node = mb.regions_to_segmentation(scene, ct.with_array(regions), reference_volume_node=vnode)
    sess = RatingSession("case_001", ct.with_array(regions), rater="dr_a")
    sess.rate(5)
    sess.next()
    sess.rate(2)
    sess.mark_under()
    sess.next()
    sess.rate(3)                                   # pending, waits for O/U
    mb.store_session_json(node, sess.to_json())
    path = tmp_path / "saved" / "scene.mrml"
    mb.save_scene(scene, path)
    assert (path.parent / "Data").is_dir() and list((path.parent / "Data").glob("*.seg.nrrd"))

    fresh = mb.load_scene(path)
    node2 = mb.find_session_node(fresh)
    assert node2 is not None and node2.GetName() == node.GetName()
    vnode2 = mb.nodes_by_class(fresh, "vtkMRMLScalarVolumeNode")[0]
    grid = mb.volume_from_node(vnode2).geometry
    _same_geometry(grid, RIGHT)
    regions2 = mb.regions_from_segmentation(node2, grid)
    np.testing.assert_array_equal(regions2.array, regions)
    back = RatingSession.from_json(mb.load_session_json(node2), regions2)
    assert back.feedback.to_dict() == sess.feedback.to_dict()
    assert [(r.region, r.score, r.error) for r in back.feedback.ratings("dr_a")] == [(1, 5, "none"), (2, 2, "under")]
    assert back.current == 3 and back.score_of(3) == 3 and back.needs_error(3)
    # what the panel does after loading the scene: find it all by itself
    again, node3 = mb.restore_session(fresh)
    assert node3 is node2 and again.feedback.to_dict() == sess.feedback.to_dict() and again.current == 3


def test_real_chest_ct_and_segmentation_from_slicerio(scene, slicerio_data):
    """Real data read by MRML's own readers: the segments land on the CT grid unchanged."""
    vnode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest4")
    st = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    st.SetFileName(str(slicerio_data / "CTChest4.nrrd"))
    assert st.ReadData(vnode)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    ss = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    ss.SetFileName(str(slicerio_data / "Segmentation.seg.nrrd"))
    assert ss.ReadData(seg)
    ct = mb.volume_from_node(vnode)
    _same_geometry(ct.geometry, Geometry.from_sitk(sitk.ReadImage(str(slicerio_data / "CTChest4.nrrd"))))
    sid = mb.find_segment(seg, "right lung")
    got = mb.segment_mask(seg, sid, ct.geometry)
    assert not got.resampled
    # the lung is dark: its mean HU is far below the tissue's
    lung_hu = ct.array[got.mask.array == 1].mean()
    tissue = mb.segment_mask(seg, mb.find_segment(seg, "tissue"), ct.geometry).mask.array
    assert lung_hu < -500 < ct.array[tissue == 1].mean()
    # refine-in-place and undo on a real segment (shared labelmap with 6 others)
    ribs = mb.find_segment(seg, "ribs")
    ribs_before = mb.segment_mask(seg, ribs, ct.geometry).mask.array.copy()
    mb.apply_refined_mask(seg, sid, got.mask.with_array(np.zeros_like(got.mask.array)))
    assert mb.segment_mask(seg, sid, ct.geometry).mask.array.sum() == 0
    np.testing.assert_array_equal(mb.segment_mask(seg, ribs, ct.geometry).mask.array, ribs_before)
    assert mb.undo_refinement(seg, sid)
    np.testing.assert_array_equal(mb.segment_mask(seg, sid, ct.geometry).mask.array, got.mask.array)


# --------------------------------------------------------------------------- the panel's steps

def _humerus_like(geometry=RIGHT):
    zz, yy, xx = np.indices(geometry.shape, dtype=float)
    shaft = ((yy - 14) / 6.0) ** 2 + ((xx - 16) / 7.0) ** 2 <= 1.0
    ct = Volume(np.where(shaft, 900, -50).astype(np.int16), geometry)
    return ct, ct.with_array(np.roll(shaft, 1, axis=2).astype(np.uint8))


def test_split_attach_restore_and_view_helpers(scene):
    from SCORERefineLib.regions import RegionParams

    ct, initial = _humerus_like()
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "TS", vnode)
    sid = mb.add_mask_segment(seg, initial, "humerus_left")
    res = mb.split_segment_into_regions(scene, vnode, seg, "humerus_left", RegionParams("slabs", 4, 3.0))
    assert res.n_regions == 4 and res.message == ""
    assert mb.segment_ids(seg) == [sid]                    # the initial segment stays
    assert mb.region_params_of(res.regions_node)["n_regions"] == 4
    sess = RatingSession("case_x", res.regions, rater="dr_a")
    mb.attach_session(sess, res.regions_node)
    sess.rate(5)                                            # every change is stored in the scene
    sess.next()
    back, node = mb.restore_session(scene)                  # e.g. after a module reload
    assert node is res.regions_node and back.current == sess.current
    assert back.feedback.to_dict() == sess.feedback.to_dict()
    # views centre on the current region, which is highlighted; a click selects a region
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    assert mb.centre_slice_views(scene, sess.centre_ras()) == 1
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(red.GetSliceToRAS())
    assert [m.GetElement(i, 3) for i in range(3)] == pytest.approx(sess.centre_ras())
    mb.highlight_region(res.regions_node, sess.current)
    disp = res.regions_node.GetDisplayNode()
    ids = mb.region_segment_ids(res.regions_node)
    assert disp.GetSegmentOpacity2DFill(ids[sess.current]) > disp.GetSegmentOpacity2DFill(ids[sess.labels[0]])
    assert mb.region_at_ras(res.regions_node, sess.centre_ras(sess.labels[-1]), ct.geometry) == sess.labels[-1]
    # a click at the middle of a slice view centred on a region lands in that region
    red.SetDimensions(200, 160, 1)
    red.SetFieldOfView(200.0, 160.0, 1.0)
    for label in sess.labels:
        mb.centre_slice_views(scene, sess.centre_ras(label))
        ras = mb.slice_xy_to_ras(red, (100, 80))
        assert ras == pytest.approx(sess.centre_ras(label), abs=1e-6)
        assert sess.region_at_ras(ras) == label
        assert mb.region_at_ras(res.regions_node, ras, ct.geometry) == label
    # a new split replaces the regions and drops the stale session
    mb.split_segment_into_regions(scene, vnode, seg, sid, RegionParams("slabs", 3, 3.0), res.regions_node)
    assert mb.find_session_node(scene) is None and len(mb.region_segment_ids(res.regions_node)) == 3
    # bad input
    with pytest.raises(InputError, match="no volume selected"):
        mb.split_segment_into_regions(scene, None, seg, sid)
    empty = mb.new_segmentation_node(scene, "empty")
    with pytest.raises(InputError, match="has no segments"):
        mb.split_segment_into_regions(scene, vnode, empty, "humerus_left")
    blank = mb.add_mask_segment(seg, ct.with_array(np.zeros_like(initial.array)), "blank")
    with pytest.raises(InputError, match="is empty"):
        mb.split_segment_into_regions(scene, vnode, seg, blank)


def test_merge_segments_like_totalsegmentator_output(scene):
    from SCORERefineLib.totalseg import segment_name_candidates

    ct, initial = _humerus_like()
    seg = mb.new_segmentation_node(scene, "TS")
    left = initial.array.copy()
    right = np.zeros_like(left)
    right[2:6, 2:6, 25:30] = 1
    mb.add_mask_segment(seg, ct.with_array(left), "left humerus")       # extension-style names
    mb.add_mask_segment(seg, ct.with_array(right), "humerus_right")
    sid = mb.merge_segments(seg, ["humerus_left", "humerus_right"], ct.geometry, "humerus",
                            segment_name_candidates)
    np.testing.assert_array_equal(mb.segment_mask(seg, sid, ct.geometry).mask.array, left | right)
    with pytest.raises(InputError, match="none of"):
        mb.merge_segments(seg, ["femur_left"], ct.geometry, "femur")


def test_whole_flow_with_real_training_and_refinement(scene, tmp_path):
    """Split, rate, save the case, train a tiny refiner in the background (real `scorerefine
    train` subprocess), refine in place with the real refine_volume, undo exactly, next case."""
    from SCORERefineLib import training_job as tj
    from SCORERefineLib.feedback import load_feedback
    from SCORERefineLib.regions import RegionParams
    from SCORERefineLib.session import next_case_to_rate

    ct, initial = _humerus_like()
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "TS", vnode)
    sid = mb.add_mask_segment(seg, initial, "humerus_left")
    res = mb.split_segment_into_regions(scene, vnode, seg, sid, RegionParams("slabs", 4, 3.0))
    sess = RatingSession("case_000", res.regions, rater="dr_a", region_info=RegionParams("slabs", 4, 3.0).info())
    mb.attach_session(sess, res.regions_node)
    for _ in sess.labels:
        for key in ("2", "U", "N"):
            sess.handle_key(key)
    assert sess.all_rated
    dataset = tmp_path / "ds"
    case = mb.save_case_from_scene(dataset, "case_000", vnode, seg, sid, res.regions_node, sess)
    assert len(load_feedback(case.feedback_path).ratings("dr_a")) == 4
    np.testing.assert_array_equal(case.load_initial().array, initial.array)

    job = tj.start_training(dataset, tmp_path / "model.pt", steps=2, device="cpu",
                            extra=["--network", "tiny", "--patch", "16", "16", "16", "--batch", "1"])
    assert job.wait(timeout=240) == tj.FINISHED, job.error_message
    assert job.progress.step == 2 and (tmp_path / "model.pt").exists()

    result = mb.refine_segment(vnode, seg, sid, mb.model_refiner(tmp_path / "model.pt", "cpu"))
    now = mb.segment_mask(seg, sid, ct.geometry).mask.array
    assert result.voxels_added == int(((now == 1) & (initial.array == 0)).sum())
    assert result.voxels_removed == int(((now == 0) & (initial.array == 1)).sum())
    # saving after refinement still saves the initial (rated) mask
    case = mb.save_case_from_scene(dataset, "case_000", vnode, seg, sid, res.regions_node, sess)
    np.testing.assert_array_equal(case.load_initial().array, initial.array)
    assert mb.undo_refinement(seg, sid)
    np.testing.assert_array_equal(mb.segment_mask(seg, sid, ct.geometry).mask.array, initial.array)

    # "Next case": an unrated case loads with its regions and an empty session for this rater
    from SCORERefineLib.case import write_case
    write_case(dataset, "case_001", ct, initial, res.regions)
    nxt = next_case_to_rate(dataset, "dr_a", after="case_000")
    loaded = mb.load_case_into_scene(scene, nxt, rater="dr_a")
    assert loaded.case.case_id == "case_001" and loaded.session.n_rated == 0
    assert sorted(mb.region_segment_ids(loaded.regions_node)) == sess.labels
    np.testing.assert_array_equal(mb.segment_mask(loaded.segmentation_node, loaded.segment_id,
                                                  ct.geometry).mask.array, initial.array)
