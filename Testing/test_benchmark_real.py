"""``--preset real``: the real-CT cohort, split by structure, in the benchmark (test-sized)."""

import pytest

from SCORERefineLib.benchmark import PRESETS, render_markdown, run_benchmark
from SCORERefineLib.case import list_cases

pytestmark = pytest.mark.slow


def test_real_smoke_builds_the_cohort_and_reports_per_structure(tmp_path):
    assert PRESETS["real"].cohort == "real" and PRESETS["real"].real_structures is None
    report = run_benchmark("real_smoke", tmp_path / "w", device="cpu", progress="none",
                           log=lambda *_: None)
    train = {c.case_id for c in list_cases(tmp_path / "w" / "train")}
    test = {c.case_id for c in list_cases(tmp_path / "w" / "test")}
    assert train and test and not (train & test)
    assert {report["structures"][c]["split"] for c in test} == {"test"}
    assert report["config"]["n_test"] == len(test)
    assert [r["method"] for r in report["rows"]] == ["initial", "classical", "score"]
    for r in report["rows"]:
        assert r["worse_than_initial"] >= 0 and r["components_mean"] >= 1
    assert report["rows"][0]["worse_than_initial"] == 0
    md = render_markdown(report, "scorerefine benchmark --preset real_smoke")
    assert "## Per structure" in md and "worse than initial" in md and "real-CT cohort" in md
    for cid in test:
        assert report["structures"][cid]["structure"] in md


def test_real_abdomen_preset_adds_the_totalsegmentator_organs(tmp_path):
    """``--preset real_abdomen`` builds the abdomen cases (when ../shared/data has the CT), held
    out by structure, and records whose references they are."""
    from dataclasses import replace

    from SCORERefineLib.benchmark import make_real_split
    from SCORERefineLib.realct import plan_real_cohort, RealConfig
    from SCORERefineLib.regions import RegionParams

    assert not PRESETS["real"].real_abdomen and PRESETS["real_abdomen"].real_abdomen
    if not any(s["source"] == "totalseg-abdomen"
               for s in plan_real_cohort(RealConfig(include_abdomen=True))):
        pytest.skip("../shared/data/totalseg-humerus is absent")
    cfg = replace(PRESETS["real_abdomen"], real_structures=("aorta", "inferior_vena_cava"))
    split, structures = make_real_split(tmp_path / "w", cfg,
                                        RegionParams(n_regions=4, band_mm=3.0, seed=0))
    assert {c.case_id for c in list_cases(split.test)} == {"aorta"}
    assert {c.case_id for c in list_cases(split.train)} == {"inferior_vena_cava"}
    assert {s["source"] for s in structures.values()} == {"totalseg-abdomen"}
    assert {s["reference_kind"] for s in structures.values()} == {"totalsegmentator-fast"}


def test_real_abdomen_x2_trains_each_structure_at_two_error_seeds(tmp_path):
    """``--preset real_abdomen_x2`` (the hidden set's size): each training structure again at the
    next error seed, as ``<structure>_s1``, rated like the others; the test cases are unchanged."""
    from dataclasses import replace

    import numpy as np

    from SCORERefineLib.benchmark import make_real_split
    from SCORERefineLib.feedback import load_feedback
    from SCORERefineLib.imageio import read_image
    from SCORERefineLib.regions import RegionParams

    assert PRESETS["real_abdomen_x2"].train_error_seeds == 2
    assert PRESETS["real_abdomen"].train_error_seeds == 1
    cfg = replace(PRESETS["real_abdomen_x2"], real_abdomen=False,
                  real_structures=("vertebrae_cervical", "rib_left_1"))
    split, _ = make_real_split(tmp_path / "w", cfg, RegionParams(n_regions=4, band_mm=3.0, seed=0))
    assert {c.case_id for c in list_cases(split.test)} == {"rib_left_1"}
    train = {c.case_id: c for c in list_cases(split.train)}
    assert set(train) == {"vertebrae_cervical", "vertebrae_cervical_s1"}
    a, b = train["vertebrae_cervical"], train["vertebrae_cervical_s1"]
    np.testing.assert_array_equal(read_image(a.reference_path).array,
                                  read_image(b.reference_path).array)
    assert (read_image(a.initial_path).array != read_image(b.initial_path).array).any()
    assert b.has_feedback and load_feedback(b.feedback_path).case_id == "vertebrae_cervical_s1"


def test_real_abdomen_seen_splits_by_error_draw(tmp_path):
    """``--preset real_abdomen_seen`` (the hidden set's shape): every structure at training and
    test error seeds, ``<structure>_s<k>``; the test cases are the same anatomy as training ones
    with other errors, only the training cases are rated, and the report says it is split by
    error draw."""
    from dataclasses import asdict, replace

    import numpy as np

    from SCORERefineLib.benchmark import cohort_line, make_real_split
    from SCORERefineLib.imageio import read_image
    from SCORERefineLib.regions import RegionParams

    seen = PRESETS["real_abdomen_seen"]
    assert (seen.train_error_seeds, seen.test_error_seeds) == (6, 4)
    assert seen.real_structures == ("liver", "spleen", "stomach", "aorta")
    cfg = replace(seen, real_abdomen=False, real_structures=("vertebrae_cervical", "rib_left_1"),
                  train_error_seeds=2, test_error_seeds=1)
    split, structures = make_real_split(tmp_path / "w", cfg,
                                        RegionParams(n_regions=4, band_mm=3.0, seed=0))
    train = {c.case_id: c for c in list_cases(split.train)}
    test = {c.case_id: c for c in list_cases(split.test)}
    assert set(train) == {"vertebrae_cervical_s0", "vertebrae_cervical_s1", "rib_left_1_s0",
                          "rib_left_1_s1"}
    assert set(test) == {"vertebrae_cervical_s2", "rib_left_1_s2"}
    a, b = train["rib_left_1_s0"], test["rib_left_1_s2"]
    np.testing.assert_array_equal(read_image(a.reference_path).array,
                                  read_image(b.reference_path).array)
    assert (read_image(a.initial_path).array != read_image(b.initial_path).array).any()
    assert all(c.has_feedback for c in train.values())
    assert not any(c.has_feedback for c in test.values())
    assert structures["rib_left_1_s2"]["structure"] == "rib_left_1"
    assert structures["rib_left_1_s2"]["split"] == "test"
    assert structures["rib_left_1_s2"]["error_seed"] == 2
    line = cohort_line({"preset": "real_abdomen_seen",
                        "config": {**asdict(cfg), "n_train": 4, "n_test": 2}})
    assert "4 training and 2 test cases" in line and "split by error draw" in line
    assert "2 training and 1 test error seeds" in line
    assert "split by error draw" not in cohort_line(
        {"preset": "real_abdomen_x2", "config": {**asdict(PRESETS["real_abdomen_x2"]),
                                                 "n_train": 30, "n_test": 8}})


def test_a_larger_error_model_builds_the_same_split_with_worse_initial_masks(tmp_path):
    """scripts/build_workdir.py --error-scale: ``make_real_split(real_config=...)`` builds the
    preset's split with the given error model (the manifests record it); larger errors give
    lower initial Dice on the same structures and error seeds, and bad options are refused."""
    import importlib.util
    import json
    from dataclasses import replace
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_workdir.py"
    spec = importlib.util.spec_from_file_location("build_workdir_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = replace(PRESETS["real_abdomen_seen"], real_abdomen=False,
                  real_structures=("vertebrae_cervical",), train_error_seeds=1,
                  test_error_seeds=1)

    def initial_dice(work):
        return [c["initial_dice"] for k in (0, 1)
                for c in json.loads((work / f"real_cohort_s{k}" / "real_cohort.json").read_text())["cases"]]

    PRESETS["_study"] = cfg                      # the script takes a preset name
    try:
        assert script.main(["_study", str(tmp_path / "a")]) == 0
        assert script.main(["_study", str(tmp_path / "b"), "--error-scale", "2",
                            "--error-prob", "shift=1,leak=1,missing=1,holes=1"]) == 0
        with pytest.raises(SystemExit, match="kind=share pairs"):
            script.main(["_study", str(tmp_path / "c"), "--error-prob", "tears=1"])
    finally:
        del PRESETS["_study"]
    big = json.loads((tmp_path / "b" / "real_cohort_s0" / "real_cohort.json").read_text())
    assert big["config"]["leak_radius_mm"] == [16.0, 32.0] and big["config"]["error_prob"]["holes"] == 1
    assert {c.case_id for c in list_cases(tmp_path / "b" / "train")} == {"vertebrae_cervical_s0"}
    assert all(b < a for a, b in zip(initial_dice(tmp_path / "a"), initial_dice(tmp_path / "b")))


def test_real_abdomen_hidden_is_the_seen_preset_at_the_hidden_sets_error_size(tmp_path):
    """``--preset real_abdomen_hidden``: ``real_abdomen_seen`` with the error sizes x1.2 and more
    errors of each kind (the organs at the hidden set's initial Dice); the benchmark builds its
    cohort with that error model (the manifests record it), the report's cohort line says it,
    and a bad error model is refused by name."""
    import json
    from dataclasses import asdict, replace

    from SCORERefineLib.benchmark import cohort_line, make_real_split, real_config_of
    from SCORERefineLib.regions import RegionParams

    hidden, seen = PRESETS["real_abdomen_hidden"], PRESETS["real_abdomen_seen"]
    assert replace(hidden, error_scale=1.0, error_prob=()) == seen
    real = real_config_of(hidden)
    assert real.leak_radius_mm == pytest.approx((9.6, 19.2)) and real.include_abdomen
    assert dict(real.error_prob) == {"shift": 0.9, "leak": 0.9, "missing": 0.7, "holes": 0.5,
                                     "blocky": 0.4}
    assert real_config_of(seen).leak_radius_mm == (8.0, 16.0)
    with pytest.raises(ValueError, match="unknown kind of error 'tears'"):
        real_config_of(replace(hidden, error_prob=(("tears", 0.5),)))
    with pytest.raises(ValueError, match="must lie in"):
        real_config_of(replace(hidden, error_prob=(("leak", 1.5),)))
    with pytest.raises(ValueError, match="error_scale must be positive"):
        real_config_of(replace(hidden, error_scale=0.0))

    cfg = replace(hidden, real_abdomen=False, real_structures=("vertebrae_cervical",),
                  train_error_seeds=1, test_error_seeds=1)
    make_real_split(tmp_path / "w", cfg, RegionParams(n_regions=4, band_mm=3.0, seed=0))
    built = json.loads((tmp_path / "w" / "real_cohort_s0" / "real_cohort.json").read_text())
    assert built["config"]["leak_radius_mm"] == pytest.approx([9.6, 19.2])
    assert built["config"]["error_prob"]["leak"] == 0.9
    line = cohort_line({"preset": "real_abdomen_hidden",
                        "config": json.loads(json.dumps({**asdict(hidden), "n_train": 24,
                                                         "n_test": 16}))})
    assert "error model: sizes x1.2; chance per case of shift 0.9, leak 0.9" in line
    assert "error model" not in cohort_line(
        {"preset": "real_abdomen_seen", "config": {**asdict(seen), "n_train": 24, "n_test": 16}})


def test_absent_shared_data_is_stated_and_a_preset_made_of_it_is_refused(tmp_path, monkeypatch):
    """Without ../shared/data the real cohort is built without the humeri (and the abdominal
    structures): the benchmark logs it and its report says the cohort is smaller than the
    preset's; a preset whose structures come from that data is refused by name before any work."""
    from dataclasses import replace

    from SCORERefineLib import realct
    from SCORERefineLib.benchmark import make_real_split
    from SCORERefineLib.errors import InputError
    from SCORERefineLib.realct import RealConfig, missing_shared_data
    from SCORERefineLib.regions import RegionParams

    present = missing_shared_data(RealConfig(include_abdomen=True))
    if present:
        pytest.skip(f"this check needs ../shared/data present to compare: {present}")
    monkeypatch.setattr(realct, "default_shared_dir", lambda: tmp_path / "nowhere")
    gone = missing_shared_data(RealConfig(include_abdomen=True))
    assert set(gone) == {"humerus", "abdomen"} and str(tmp_path / "nowhere") in gone["humerus"]
    assert missing_shared_data(RealConfig(), structures=("rib_left_1",)) == {}
    assert set(missing_shared_data(RealConfig(), structures=("humerus_left",))) == {"humerus"}

    smoke = replace(PRESETS["real_smoke"], real_structures=None)      # the whole real cohort...
    monkeypatch.setitem(PRESETS, "_no_shared", smoke)
    plan = realct.plan_real_cohort                                    # ... of two ribs, for speed
    monkeypatch.setattr(realct, "plan_real_cohort", lambda *a, **k: [
        s for s in plan(*a, **k) if s["name"] in ("rib_right_1", "rib_left_1")])
    lines = []
    report = run_benchmark("_no_shared", tmp_path / "w", device="cpu", progress="none",
                           log=lines.append)
    assert any("warning: the TotalSegmentator humeri are left out" in line for line in lines)
    assert report["left_out"] == [gone["humerus"]]
    assert {c.case_id for c in list_cases(tmp_path / "w" / "train")} == {"rib_right_1"}
    assert "Cohort smaller than the preset's" in render_markdown(report, "cmd")
    params = RegionParams(n_regions=4)
    with pytest.raises(InputError, match="needs the TotalSegmentator CT.*totalseg_fast"):
        make_real_split(tmp_path / "a", replace(smoke, real_abdomen=True), params)
    with pytest.raises(InputError, match="humeri are left out.*run --preset real"):
        make_real_split(tmp_path / "b", replace(smoke, real_structures=("humerus_left",)), params)
