"""The case folder contract: layout, loaders, grid checks."""

import numpy as np
import pytest

from SCORERefineLib.case import (CONTRACT_VERSION, Case, get_case, list_cases, write_case)
from SCORERefineLib.errors import GridMismatchError, InputError
from SCORERefineLib.imageio import Geometry, Volume, write_volume


def _volumes():
    g = Geometry(size=(9, 8, 7), spacing=(0.8, 0.8, 2.0), origin=(1.0, 2.0, 3.0))
    img = Volume(np.full(g.shape, -50, np.int16).astype(np.float32), g)
    m = np.zeros(g.shape, np.uint8)
    m[2:5, 2:6, 3:7] = 1
    ref = m.copy()
    ref[2, 2, 3] = 0
    regions = np.zeros(g.shape, np.int16)
    regions[1:6, 1:7, 2:8] = 1
    regions[4:6] *= 2
    return img, Volume(m, g), Volume(ref, g), Volume(regions, g)


def test_write_and_read_case(tmp_path):
    img, init, ref, regions = _volumes()
    case = write_case(tmp_path, "case_001", img, init, regions=regions, reference=ref)
    assert CONTRACT_VERSION == 2
    assert (tmp_path / "cases" / "case_001" / "image.nii.gz").exists()
    assert case.has_regions and case.has_reference and not case.has_feedback
    assert case.feedback_path == tmp_path / "cases" / "case_001" / "feedback.json"
    image = case.load_image()
    assert image.geometry.matches(img.geometry)
    np.testing.assert_array_equal(case.load_initial(like=image).array, init.array)
    np.testing.assert_array_equal(case.load_regions(like=image).array, regions.array)
    np.testing.assert_array_equal(case.load_reference(like=image).array, ref.array)
    assert [c.case_id for c in list_cases(tmp_path)] == ["case_001"]
    assert get_case(tmp_path, "case_001") == case


def test_reference_optional_and_missing_regions_explained(tmp_path):
    img, init, _, _ = _volumes()
    case = write_case(tmp_path, "a", img, init)
    assert case.load_reference() is None
    with pytest.raises(InputError, match="scorerefine regions"):
        case.load_regions()
    with pytest.raises(InputError, match="no prediction 'refined'"):
        case.load_prediction("refined")


def test_mask_on_other_grid_refused(tmp_path):
    img, init, _, _ = _volumes()
    bad = Volume(init.array, Geometry(size=init.geometry.size, spacing=(1, 1, 1), origin=(0, 0, 0)))
    with pytest.raises(GridMismatchError):
        write_case(tmp_path, "a", img, bad)
    case = write_case(tmp_path, "b", img, init)
    write_volume(bad, case.initial_path)
    with pytest.raises(GridMismatchError, match="image and mask initial.nii.gz"):
        case.load_initial(like=case.load_image())


def test_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="not a SCORERefine dataset"):
        list_cases(tmp_path / "nothing")
    assert list_cases(tmp_path / "nothing", require=False) == []
    (tmp_path / "cases").mkdir()
    with pytest.raises(InputError, match="no cases"):
        list_cases(tmp_path)
    with pytest.raises(InputError, match="no case 'x'"):
        get_case(tmp_path, "x")


def test_nrrd_image_accepted(tmp_path):
    img, init, _, _ = _volumes()
    folder = tmp_path / "cases" / "n"
    write_volume(img, folder / "image.nrrd")
    write_volume(init, folder / "initial.nii.gz")
    case = Case(folder)
    assert case.image_path.name == "image.nrrd"
    assert case.load_initial(like=case.load_image()).array.sum() == init.array.sum()
