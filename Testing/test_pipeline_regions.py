"""The pipeline's rating step extends poorly rated regions so they reach the errors."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib.case import list_cases
from SCORERefineLib.feedback import load_feedback
from SCORERefineLib.phantoms import make_cohort
from SCORERefineLib.pipeline import prepare_regions, rate_cases
from SCORERefineLib.regions import RegionParams, dataset_coverage, extend_case_regions


@pytest.mark.parametrize("preset,n", [("tiny", 2), ("default", 1)])
def test_rating_step_reaches_the_errors(tmp_path, preset, n):
    make_cohort(tmp_path, n, 7, preset=preset)
    params = RegionParams()
    cases = list_cases(tmp_path)
    prepare_regions(cases, params)
    before = {c.case_id: (c.load_regions().array > 0).sum() for c in cases}
    rate_cases(cases, params)
    cov = dataset_coverage(tmp_path, extend=False)        # what is on disk after rating
    assert cov["pooled"] >= 0.95
    for c in cases:
        rec = load_feedback(c.feedback_path).region_info["extended"]
        assert (c.load_regions().array > 0).sum() == before[c.case_id] + rec["voxels_added"]
        assert load_feedback(c.feedback_path).region_info["max_band_mm"] == params.max_band_mm
    # extending again adds nothing new
    first = load_feedback(cases[0].feedback_path).region_info["extended"]["voxels_added"]
    regions = cases[0].load_regions().array.copy()
    assert extend_case_regions(cases[0])["voxels_added"] == first
    np.testing.assert_array_equal(cases[0].load_regions().array, regions)


def test_rate_command_extends_unless_told_not_to(tmp_path, capsys):
    from SCORERefineLib.cli import main

    make_cohort(tmp_path, 1, 7, preset="tiny")
    assert main(["regions", str(tmp_path)]) == 0
    case = list_cases(tmp_path)[0]
    split = case.regions_path.read_bytes()
    assert main(["rate", str(tmp_path), "--simulate", "--no-extend"]) == 0
    assert case.regions_path.read_bytes() == split
    assert "extended" not in load_feedback(case.feedback_path).region_info
    assert main(["rate", str(tmp_path), "--simulate"]) == 0
    rec = load_feedback(case.feedback_path).region_info["extended"]
    if rec["regions_grown"]:
        assert "extended (+" in capsys.readouterr().out
        assert case.regions_path.read_bytes() != split


def test_second_finer_rating_of_the_badly_rated_regions(tmp_path):
    """scripts/target_ceiling.py --subdivide: regions rated <= 3 are cut and rated again; the
    count is what a person rates (the first round plus the pieces)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "target_ceiling.py"
    spec = importlib.util.spec_from_file_location("target_ceiling_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    make_cohort(tmp_path, 1, 7, preset="tiny")
    params = RegionParams(n_regions=6)
    case = list_cases(tmp_path)[0]
    prepare_regions([case], params)
    rate_cases([case], params, extend=False)
    bad = [r.region for r in load_feedback(case.feedback_path).ratings("simulated") if r.score <= 3]
    assert bad, "the tiny phantom at seed 7 should have a badly rated region"
    case.feedback_path.unlink()
    n = script.subdivide_badly_rated([case], params, 3, 2)
    labels = load_feedback(case.feedback_path).rated_regions()
    assert len(labels) == 6 + len(bad)                  # each bad region became two pieces
    regions = case.load_regions().array
    assert sorted(np.unique(regions[regions > 0])) == labels
    assert n == 6 + 2 * len(bad)
