"""Scribbles in the scene (real MRML from slicer-core): the two segments the panel creates, strokes
painted into them as the Segment Editor's Paint effect writes them, counted, saved into the case
as ``scribbles.nii.gz`` and loaded back with the case."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core) for real MRML")

import slicer  # noqa: E402,F401

from SCORERefineLib import mrml as mb  # noqa: E402
from SCORERefineLib.case import get_case  # noqa: E402
from SCORERefineLib.errors import InputError  # noqa: E402
from SCORERefineLib.imageio import Volume  # noqa: E402
from SCORERefineLib.scribbles import stroke_summary  # noqa: E402

from conftest import ellipsoid  # noqa: E402
from test_mrml import OBLIQUE, _ct  # noqa: E402


@pytest.fixture
def scene():
    return mb.new_scene()


def _paint(node, segment_id, mask: Volume) -> None:
    """What a Paint stroke does: the stroke added to the segment's labelmap (merged here by
    hand and written with MODE_REPLACE: slicer-core's MODE_MERGE_MAX writes a shared layer's
    first label value whatever the segment)."""
    L = slicer.vtkSlicerSegmentationsModuleLogic
    merged = mb.segment_mask(node, segment_id, mask.geometry).mask.array | (mask.array != 0)
    image = mb._oriented_image(mask.with_array(merged.astype(np.uint8)))
    assert L.SetBinaryLabelmapToSegment(image, node, segment_id, L.MODE_REPLACE)


def _strokes(shape):
    inside = np.zeros(shape, np.uint8)
    outside = np.zeros(shape, np.uint8)
    inside[10, 12, 8:16] = 1         # two strokes on one slice
    inside[10, 16:19, 12] = 1
    outside[12, 2, 4:20] = 1         # one outside stroke on another slice
    return inside, outside


def _case_with_scribble_segments(scene):
    """A CT with an initial segment in ``scene`` and its two scribble segments, newly made."""
    ct = _ct()
    vnode = mb.volume_to_node(scene, ct, "CT")
    seg = mb.new_segmentation_node(scene, "Initial", vnode)
    sid = mb.add_mask_segment(seg, ct.with_array(ellipsoid(OBLIQUE.shape, (7, 8, 10))), "humerus")
    return ct, vnode, seg, sid, mb.ensure_scribble_segments(scene, vnode)


def test_panel_segments_painted_counted_saved_and_loaded(scene, tmp_path):
    ct, vnode, seg, sid, made = _case_with_scribble_segments(scene)
    assert made.created and made.node.GetName() == "CT scribbles"
    names = [made.node.GetSegmentation().GetSegment(s).GetName() for s in mb.segment_ids(made.node)]
    assert names == ["scribble: inside", "scribble: outside"]
    # asking again finds the same node and segments (nothing duplicated)
    again = mb.ensure_scribble_segments(scene, vnode)
    assert (again.node, again.inside_id, again.outside_id, again.created) == \
        (made.node, made.inside_id, made.outside_id, False)
    assert mb.find_scribble_node(scene, vnode) is made.node
    # nothing painted yet
    assert mb.count_scribbles(made.node, vnode)["n_strokes"] == 0
    inside, outside = _strokes(ct.array.shape)
    _paint(made.node, made.inside_id, ct.with_array(inside))
    _paint(made.node, made.outside_id, ct.with_array(outside))
    counted = mb.count_scribbles(made.node, vnode)
    assert (counted["foreground"], counted["background"], counted["slices"], counted["conflicts"]) == (2, 1, 2, 0)
    labels, conflicts = mb.scribbles_from_segmentation(made.node, ct.geometry)
    expected = inside + 2 * outside
    np.testing.assert_array_equal(labels.array, expected)
    # saved with the case: scribbles.nii.gz on the image grid, 1 inside / 2 outside
    case = mb.save_case_from_scene(tmp_path / "ds", "case_000", vnode, seg, sid, None,
                                   scribbles_node=made.node)
    assert case.has_scribbles
    np.testing.assert_array_equal(case.load_scribbles(like=case.load_image()).array, expected)
    assert stroke_summary(case.load_scribbles().array)["n_strokes"] == 3
    # loading the case brings the strokes back as the two segments
    other = mb.new_scene()
    loaded = mb.load_case_into_scene(other, get_case(tmp_path / "ds", "case_000"))
    assert loaded.scribbles_node is not None
    back, _ = mb.scribbles_from_segmentation(loaded.scribbles_node, loaded.case.load_image().geometry)
    np.testing.assert_array_equal(back.array, expected)
    assert mb.find_scribble_node(other, loaded.volume_node) is loaded.scribbles_node


def test_empty_scribbles_write_no_file_and_both_labels_are_dropped(scene, tmp_path):
    ct, vnode, seg, sid, made = _case_with_scribble_segments(scene)
    case = mb.save_case_from_scene(tmp_path / "ds", "case_000", vnode, seg, sid, None,
                                   scribbles_node=made.node)
    assert not case.has_scribbles                      # no strokes: no (invalid, empty) file
    inside, outside = _strokes(ct.array.shape)
    outside[10, 12, 8:12] = 1                          # painted over part of an inside stroke
    # with "allow overlap" the editor keeps the segments in separate layers
    made.node.GetSegmentation().SeparateSegmentLabelmap(made.outside_id)
    _paint(made.node, made.inside_id, ct.with_array(inside))
    _paint(made.node, made.outside_id, ct.with_array(outside))
    labels, conflicts = mb.scribbles_from_segmentation(made.node, ct.geometry)
    assert conflicts == 4 and not labels.array[10, 12, 8:12].any()
    assert (labels.array[10, 12, 12:16] == 1).all()
    # no volume, or a segmentation without the segments: errors that say what to do
    with pytest.raises(InputError, match="pick the CT"):
        mb.ensure_scribble_segments(scene, None)
    with pytest.raises(InputError, match="no segment 'scribble: inside'"):
        mb.scribbles_from_segmentation(seg, ct.geometry)
    # no Segment Editor outside Slicer: the segments exist, the call says it could not open it
    assert mb.open_segment_editor(made, vnode) is False
