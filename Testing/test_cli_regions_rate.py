"""``scorerefine regions`` and ``scorerefine rate`` on a tiny dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import ellipsoid
from SCORERefineLib import cli
from SCORERefineLib.case import get_case, list_cases, write_case
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.imageio import Geometry, Volume, read_labels
from SCORERefineLib.regions import RegionParams, split_regions

SHAPE = (16, 20, 24)
SPACING = (2.0, 1.0, 1.0)


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    """Build the parser from this file's two commands only, so these tests do not depend on
    the other sub-commands' modules."""
    monkeypatch.setattr(cli, "COMMANDS", {"regions": "regions", "rate": "rate"})


@pytest.fixture
def dataset(tmp_path):
    geom = Geometry.isotropic(SHAPE, SPACING)
    ref = ellipsoid(SHAPE, (5, 7, 8))
    for i, with_ref in enumerate((True, True, False)):
        initial = ndi.binary_dilation(ref, iterations=1 + i).astype(np.uint8)
        image = Volume(ref.astype(np.int16) * 1000 - 500, geom)
        write_case(tmp_path, f"case_00{i}", image, Volume(initial, geom),
                   reference=Volume(ref, geom) if with_ref else None)
    return tmp_path


def main(*argv) -> int:
    return cli.main([str(a) for a in argv])


def test_regions_writes_every_case(dataset, capsys):
    assert main("regions", dataset, "--n-regions", "5", "--band-mm", "2") == 0
    out = capsys.readouterr().out
    for case in list_cases(dataset):
        regions = read_labels(case.regions_path)
        assert regions.array.dtype == np.int16
        assert regions.geometry.matches(case.load_image().geometry)
        expected = split_regions(case.load_initial().array, case.load_image().geometry.spacing_zyx,
                                 RegionParams("patches", 5, 2.0))
        np.testing.assert_array_equal(regions.array, expected)
        n_band = int((expected > 0).sum())
        assert f"{case.case_id}: 5 regions (patches, target 5), {n_band} band voxels" in out
    # the same parameters again: nothing changes
    assert main("regions", dataset, "--n-regions", "5", "--band-mm", "2") == 0
    assert out.count("[written]") == 3 and capsys.readouterr().out.count("[unchanged]") == 3


def test_regions_slabs_and_case_selection(dataset, capsys):
    assert main("regions", dataset, "--method", "slabs", "--n-regions", "3", "--case", "case_001") == 0
    assert get_case(dataset, "case_001").has_regions
    assert not get_case(dataset, "case_000").has_regions
    assert "case_001: 3 regions (slabs" in capsys.readouterr().out


def test_regions_refuse_to_change_rated_regions(dataset, capsys):
    assert main("regions", dataset, "--n-regions", "4", "--case", "case_000", "case_001") == 0
    assert main("rate", dataset, "--simulate", "--case", "case_000") == 0
    case = get_case(dataset, "case_000")
    fb_before = case.feedback_path.read_bytes()
    regions_before = {c: get_case(dataset, c).regions_path.read_bytes() for c in ("case_000", "case_001")}
    capsys.readouterr()

    assert main("regions", dataset, "--n-regions", "6", "--case", "case_000", "case_001") == 2
    err = capsys.readouterr().err
    assert "case(s) case_000 already have feedback.json and their regions would change" in err
    assert "--overwrite" in err and "Nothing was written" in err
    assert case.feedback_path.read_bytes() == fb_before
    for c, data in regions_before.items():           # not even the case without feedback changed
        assert get_case(dataset, c).regions_path.read_bytes() == data

    # same parameters: regions unchanged, feedback still valid, no refusal
    assert main("regions", dataset, "--n-regions", "4", "--case", "case_000") == 0
    assert case.feedback_path.read_bytes() == fb_before

    # --overwrite: new regions, the stale feedback is moved aside, not lost
    assert main("regions", dataset, "--n-regions", "6", "--case", "case_000", "--overwrite") == 0
    assert "old feedback moved to feedback.stale-" in capsys.readouterr().out
    assert not case.feedback_path.exists()
    stale = list(case.folder.glob("feedback.stale-*.json"))
    assert len(stale) == 1 and stale[0].read_bytes() == fb_before
    assert len(np.unique(read_labels(case.regions_path).array)) == 7


def test_rate_simulated_writes_feedback_and_merges_raters(dataset, capsys):
    assert main("regions", dataset, "--n-regions", "4", "--case", "case_000", "case_001") == 0
    assert main("rate", dataset, "--simulate", "--case", "case_000", "case_001") == 0
    out = capsys.readouterr().out
    assert "case case_000: 4 regions, 1 rater(s)" in out and "simulated: 4/4 rated" in out
    fb = load_feedback(get_case(dataset, "case_001").feedback_path)
    assert fb.region_labels == [1, 2, 3, 4]
    assert all(r.error == "over" and r.score < 5 for r in fb.ratings("simulated"))  # dilated initial
    assert all(r.seconds == 5.0 for r in fb.ratings())

    assert main("rate", dataset, "--simulate", "--case", "case_001", "--rater", "noisy",
                "--noise", "0.5", "--seed", "3", "--seconds-per-rating", "2") == 0
    fb2 = load_feedback(get_case(dataset, "case_001").feedback_path)
    assert sorted(fb2.raters) == ["noisy", "simulated"]
    assert fb2.raters["simulated"] == fb.raters["simulated"]
    data = json.loads(get_case(dataset, "case_001").feedback_path.read_text())
    assert data["format"] == "scorerefine-feedback" and data["version"] == 1


def test_rate_refuses_cases_without_reference_or_regions(dataset, capsys):
    assert main("regions", dataset, "--case", "case_000", "case_002") == 0
    capsys.readouterr()
    assert main("rate", dataset, "--simulate") == 2
    err = capsys.readouterr().err
    assert "no reference.nii.gz in case(s) case_002" in err
    assert "no regions.nii.gz in case(s) case_001" in err and "scorerefine regions" in err
    assert not any(c.has_feedback for c in list_cases(dataset))   # nothing rated


def test_rate_without_simulate_points_to_slicer(dataset, capsys):
    assert main("rate", dataset) == 2
    assert "interactive rating happens in the SCORERefine module in 3D Slicer" in capsys.readouterr().err


def test_rate_reports_a_corrupt_feedback_file(dataset, capsys):
    assert main("regions", dataset, "--n-regions", "3", "--case", "case_000") == 0
    path = get_case(dataset, "case_000").feedback_path
    path.write_text("{not json")
    assert main("rate", dataset, "--simulate", "--case", "case_000") == 2
    assert "JSON syntax error at line 1, column 2" in capsys.readouterr().err
    assert path.read_text() == "{not json"


@pytest.mark.parametrize("argv,match", [
    (["regions", "{ds}", "--n-regions", "0"], "n_regions must be a whole number >= 1"),
    (["regions", "{ds}", "--band-mm", "-2"], "band_mm must be a positive width"),
    (["regions", "{ds}", "--case", "case_999"], "no case 'case_999'"),
    (["regions", "{ds}/nowhere"], "is not a SCORERefine dataset"),
    (["rate", "{ds}", "--simulate", "--noise", "2"], "--noise must be a probability"),
])
def test_bad_arguments_exit_2_with_a_message(dataset, capsys, argv, match):
    assert main(*[a.replace("{ds}", str(dataset)) for a in argv]) == 2
    assert match in capsys.readouterr().err


def test_regions_refuse_an_initial_mask_off_the_image_grid(dataset, capsys):
    from SCORERefineLib.imageio import write_volume
    case = get_case(dataset, "case_000")
    initial = case.load_initial()
    write_volume(Volume(initial.array, Geometry.isotropic(SHAPE, (3.0, 1.0, 1.0))), case.initial_path)
    assert main("regions", dataset, "--case", "case_000") == 2
    assert "different voxel grids" in capsys.readouterr().err
    assert not case.has_regions
