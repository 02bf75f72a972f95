"""Scribbles: the contract file (scribbles.nii.gz) and the simulated scribbler."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib import phantoms
from SCORERefineLib.case import SCRIBBLES, write_case
from SCORERefineLib.errors import GridMismatchError, InputError
from SCORERefineLib.imageio import Geometry, Volume, write_volume
from SCORERefineLib.scribbles import (BACKGROUND, FOREGROUND, SECONDS_PER_SLICE, SECONDS_PER_STROKE,
                                      misplace_strokes, read_scribbles, scribble_counts,
                                      simulate_scribbles,
                                      strokes, validate_scribbles)


@pytest.fixture(scope="module")
def phantom():
    return phantoms.make_phantom(0, phantoms.PRESETS["tiny"])


def _case(tmp_path, phantom, scribbles=None):
    return write_case(tmp_path, "c0", phantom.image, phantom.initial, reference=phantom.reference,
                      scribbles=scribbles)


# ----------------------------------------------------------------------------- contract file

def test_case_round_trip(tmp_path, phantom):
    lab = np.zeros(phantom.image.array.shape, np.uint8)
    lab[10, 5:8, 5] = FOREGROUND
    lab[12, 1, 1:4] = BACKGROUND
    case = _case(tmp_path, phantom, phantom.image.with_array(lab))
    assert case.has_scribbles and case.scribbles_path.name == SCRIBBLES
    vol = case.load_scribbles(like=case.load_image())
    assert vol.array.dtype == np.uint8 and np.array_equal(vol.array, lab)


def test_old_case_without_scribbles_stays_readable(tmp_path, phantom):
    case = _case(tmp_path, phantom)
    assert not case.has_scribbles
    assert case.load_initial(like=case.load_image()).array.any()
    with pytest.raises(InputError, match="has no scribbles"):
        case.load_scribbles()


def test_bad_labels_named(tmp_path, phantom):
    case = _case(tmp_path, phantom)
    lab = np.zeros(phantom.image.array.shape, np.int16)
    lab[5, 5, 5:9] = 3
    lab[6, 5, 5] = 1
    write_volume(phantom.image.with_array(lab), case.scribbles_path)
    with pytest.raises(InputError, match=r"labels \[3\].*0 \(none\), 1 \(foreground"):
        case.load_scribbles()


def test_empty_scribbles_refused(tmp_path, phantom):
    case = _case(tmp_path, phantom)
    write_volume(phantom.image.with_array(np.zeros(phantom.image.array.shape, np.uint8)),
                 case.scribbles_path)
    with pytest.raises(InputError, match="empty.*draw at least one stroke"):
        case.load_scribbles()
    with pytest.raises(InputError, match="empty"):
        validate_scribbles(np.zeros((2, 3, 3)))


def test_grid_mismatch_named(tmp_path, phantom):
    case = _case(tmp_path, phantom)
    shape = phantom.image.array.shape
    other = Geometry.isotropic(shape, (3.0, 3.0, 3.0))
    lab = np.zeros(shape, np.uint8)
    lab[4, 4, 4] = FOREGROUND
    write_volume(Volume(lab, other), case.scribbles_path)
    with pytest.raises(GridMismatchError, match="different voxel grids"):
        case.load_scribbles(like=case.load_image())
    with pytest.raises(GridMismatchError):
        write_case(tmp_path, "c1", phantom.image, phantom.initial, scribbles=Volume(lab, other))
    assert read_scribbles(case.scribbles_path).array.sum() == 1   # fine without a grid to match


# ----------------------------------------------------------------------------- scribbler

def test_strokes_on_the_right_side(phantom):
    ref, ini = phantom.reference.array, phantom.initial.array
    lab, info = simulate_scribbles(ini, ref, phantom.image.geometry.spacing_zyx, n_slices=5, seed=1)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
    assert (lab == FOREGROUND).any() and (lab == BACKGROUND).any()
    assert np.all(ref[lab == FOREGROUND] == 1)          # foreground strokes only inside
    assert np.all(ref[lab == BACKGROUND] == 0)          # background strokes only outside
    assert len(info["slices"]) == 5 == int(np.any(lab > 0, axis=(1, 2)).sum())
    counts = scribble_counts(lab)
    assert counts["slices"] == 5 and counts["foreground"] == int((lab == FOREGROUND).sum()) > 0
    assert info["n_strokes"] == info["n_fg_strokes"] + info["n_bg_strokes"] > 0
    assert info["seconds"] == pytest.approx(info["n_strokes"] * SECONDS_PER_STROKE
                                            + 5 * SECONDS_PER_SLICE)
    # thin strokes: a small share of the slice, no thick blobs
    assert (lab > 0).sum() < 0.2 * ref[info["slices"]].sum() + 200


def test_deterministic_under_seed(phantom):
    args = (phantom.initial.array, phantom.reference.array, phantom.image.geometry.spacing_zyx)
    a, ia = simulate_scribbles(*args, n_slices=4, seed=7)
    b, ib = simulate_scribbles(*args, n_slices=4, seed=7)
    c, _ = simulate_scribbles(*args, n_slices=4, seed=8)
    assert np.array_equal(a, b) and ia == ib
    assert not np.array_equal(a, c)


def test_more_strokes_where_initial_errs(phantom):
    ref, ini = phantom.reference.array, phantom.initial.array
    err = ini != ref
    sp = phantom.image.geometry.spacing_zyx

    def on_errors(weighted):
        on = tot = slice_err = 0
        for seed in range(4):
            lab, info = simulate_scribbles(ini, ref, sp, n_slices=4, seed=seed, error_weighted=weighted)
            on += int(err[lab > 0].sum())
            tot += int((lab > 0).sum())
            slice_err += int(err[info["slices"]].sum())
        return on / tot, slice_err

    share_w, slices_w = on_errors(True)
    share_u, slices_u = on_errors(False)
    assert share_w > 2 * share_u          # strokes lie on the initial mask's errors
    assert slices_w > 2 * slices_u        # on the slices where it errs most


def test_misplace_strokes(phantom):
    lab, info = simulate_scribbles(phantom.initial.array, phantom.reference.array,
                                   phantom.image.geometry.spacing_zyx, n_slices=4, seed=2)
    n = len(strokes(lab))
    noisy, ninfo = misplace_strokes(lab, 0.5, seed=0)
    assert ninfo["n_strokes"] == n and ninfo["n_misplaced"] == round(0.5 * n)
    assert np.array_equal(noisy > 0, lab > 0)              # same voxels, some labels swapped
    changed = noisy != lab
    assert ninfo["misplaced_voxels"] == int(changed.sum()) > 0
    assert np.array_equal(misplace_strokes(lab, 0.5, seed=0)[0], noisy)
    assert np.array_equal(misplace_strokes(lab, 0.0)[0], lab)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        misplace_strokes(lab, 1.5)
