"""Dropping the pieces a refinement cut off an initial component (refiner/fragments.py)."""

from __future__ import annotations

import numpy as np

from SCORERefineLib.refiner.fragments import drop_cut_fragments


def _ball(shape, centre, r):
    z, y, x = np.ogrid[tuple(slice(0, s) for s in shape)]
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= r * r


def _leaky():
    """A big ball with a small 'leak' ball joined to it by a one-voxel neck."""
    shape = (30, 30, 50)
    body = _ball(shape, (15, 15, 15), 9)
    leak = _ball(shape, (15, 15, 34), 3)
    neck = np.zeros(shape, bool)
    neck[15, 15, 24:32] = True
    return body, leak, neck, body | leak | neck


def test_a_piece_cut_off_by_the_refinement_is_dropped():
    body, leak, neck, initial = _leaky()
    refined = initial & ~neck                       # the refiner cut the neck only
    out, rep = drop_cut_fragments(initial, refined, share=0.2)
    assert not out[leak].any() and out[body & ~neck].all()
    assert rep["pieces_dropped"] == 1 and rep["voxels_dropped"] == int((leak & ~neck).sum())


def test_large_pieces_separate_components_and_share_zero_are_kept():
    body, leak, neck, initial = _leaky()
    refined = initial & ~neck
    kept, rep = drop_cut_fragments(initial, refined, share=0.0)
    np.testing.assert_array_equal(kept, refined)
    assert rep["pieces_dropped"] == 0
    # a split into two pieces of similar size: both stay
    halves = initial.copy()
    halves[:, :, 15] = False
    out, rep = drop_cut_fragments(initial, halves, share=0.2)
    np.testing.assert_array_equal(out, halves)
    # two initial components (e.g. a rib in two pieces) are never dropped, however small one is
    two = body | leak
    out, rep = drop_cut_fragments(two, two, share=0.9)
    np.testing.assert_array_equal(out, two)
    assert rep["pieces_dropped"] == 0


def test_it_only_removes():
    body, leak, neck, initial = _leaky()
    refined = (initial & ~neck) | _ball(initial.shape, (15, 15, 5), 9)   # grows somewhere too
    out, _ = drop_cut_fragments(initial, refined, share=0.2)
    assert not (out.astype(bool) & ~refined).any()
