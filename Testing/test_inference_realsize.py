"""Issue 12: per-component ROIs, band-only changes, exact window skipping, training-spacing
resampling, thread settings, forward floor; and the perf report on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from SCORERefineLib.imageio import Geometry, Volume
from SCORERefineLib.refiner.inference import (boundary_band, component_rois, forward_floor,
                                              refine_volume, training_spacing)
from conftest import ellipsoid
from toy_models import CTThresholdModel, IdentityModel

META = {"channels": ["ct", "initial", "edge"], "patch_size": [16, 16, 16], "normalisation": None}


class RecordingModel(CTThresholdModel):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return super().forward(x)


def _two_blobs(shape=(24, 40, 90), spacing=(1.0, 1.0, 1.0)):
    geom = Geometry.isotropic(shape, spacing)
    a = ellipsoid(shape, (5, 7, 6), (12, 20, 14))
    b = ellipsoid(shape, (6, 6, 7), (12, 19, 72))
    mask = (a | b).astype(np.uint8)
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 30, shape).astype(np.float32)
    hu[np.pad(a | b, 0) > 0] = 1000.0
    # the bright objects are a bit larger than the masks: refinement adds voxels near each blob
    hu[7:18, 12:29, 6:23] = np.maximum(hu[7:18, 12:29, 6:23], 900.0 * ellipsoid((11, 17, 17), (5, 8, 8)))
    hu[6:19, 11:28, 63:82] = np.maximum(hu[6:19, 11:28, 63:82], 900.0 * ellipsoid((13, 17, 19), (6, 8, 9)))
    return Volume(hu, geom), Volume(mask, geom), a, b


def test_each_component_gets_its_own_roi_and_outside_is_untouched():
    image, initial, a, b = _two_blobs()
    rois = component_rois(initial.array, image.geometry.spacing_zyx, 4.0)
    assert len(rois) == 2 and sorted(ids for _, ids in rois) == [[1], [2]]
    for roi, _ in rois:
        box = np.zeros(initial.array.shape, bool)
        box[roi] = True
        # each ROI holds all of one component and nothing of the other
        assert sorted([bool((box & (a > 0)).any()), bool((box & (b > 0)).any())]) == [False, True]
    model = RecordingModel()
    tm = {}
    refined = refine_volume(model, META, image, initial, margin_mm=4.0, timings=tm)
    assert tm["n_rois"] == 2 and len(tm["input_shapes"]) == 2
    inside = np.zeros(initial.array.shape, bool)
    for roi, _ in rois:
        inside[roi] = True
    np.testing.assert_array_equal(refined.array[~inside], initial.array[~inside])
    # both components were refined: each one's ROI changed
    for roi, _ in rois:
        assert (refined.array[roi] != initial.array[roi]).any()
    # only voxels within the margin of the surface changed
    band = boundary_band(initial.array, image.geometry.spacing_zyx, 4.0)
    assert not ((refined.array != initial.array) & ~band).any()


def test_close_components_share_one_roi():
    shape = (20, 20, 40)
    m = ellipsoid(shape, (4, 4, 4), (10, 10, 10)) | ellipsoid(shape, (4, 4, 4), (10, 10, 22))
    rois = component_rois(m, (1.0, 1.0, 1.0), 5.0)
    assert len(rois) == 1 and rois[0][1] == [1, 2]


def test_per_component_equals_whole_volume_on_one_component():
    image, initial, a, _ = _two_blobs()
    initial = initial.with_array(a.astype(np.uint8))
    one = refine_volume(CTThresholdModel(), META, image, initial, margin_mm=4.0)
    whole = refine_volume(CTThresholdModel(), META, image, initial, margin_mm=4.0,
                          per_component=False)
    # one component: the same ROI, so identical (no seam differences)
    np.testing.assert_array_equal(one.array, whole.array)


def test_skipping_far_windows_gives_identical_results():
    image, initial, _, _ = _two_blobs(shape=(40, 48, 100))
    kw = dict(margin_mm=3.0, overlap=0.5, return_probability=True)
    ta, tb = {}, {}
    ra, pa = refine_volume(CTThresholdModel(), META, image, initial, timings=ta, **kw)
    rb, pb = refine_volume(CTThresholdModel(), META, image, initial, skip_far_windows=False,
                           timings=tb, **kw)
    np.testing.assert_array_equal(ra.array, rb.array)
    np.testing.assert_allclose(pa.array, pb.array, atol=1e-6)
    assert tb["windows_run"] == tb["windows_total"]
    assert ta["windows_run"] <= tb["windows_run"]


def test_resampling_to_the_training_spacing():
    image, initial, a, _ = _two_blobs(shape=(24, 40, 90), spacing=(1.0, 0.5, 0.5))
    initial = initial.with_array(a.astype(np.uint8))
    meta = dict(META, spacing_mm=[1.0, 1.0, 1.0])
    assert training_spacing(meta) == (1.0, 1.0, 1.0) and training_spacing(META) is None
    model = RecordingModel()
    tm = {}
    refined = refine_volume(model, meta, image, initial, margin_mm=3.0, timings=tm)
    assert tm["resampled_to"] == [1.0, 1.0, 1.0]
    assert refined.geometry == image.geometry and refined.array.shape == image.array.shape
    # the network ran on a coarser grid than the image crop (y, x halved)
    c, z, y, x = tm["input_shapes"][0]
    plain = {}
    same = refine_volume(CTThresholdModel(), META, image, initial, margin_mm=3.0, timings=plain)
    _, z2, y2, x2 = plain["input_shapes"][0]
    assert y < 0.7 * y2 and x < 0.7 * x2
    # the result agrees with inference on the image grid except near the boundary: only what the
    # network changes on its coarser grid goes back, so sub-voxel differences between the image
    # grid's initial mask and the CT stay as the initial mask had them (here 2x coarser in y, x)
    diff = (refined.array != same.array).sum()
    assert diff <= 0.25 * max(int(same.array.sum()), 1)
    changed = refined.array != initial.array
    assert changed.any() and (same.array[changed] == refined.array[changed]).mean() > 0.9
    # close spacing: no resampling
    tm2 = {}
    refine_volume(CTThresholdModel(), dict(META, spacing_mm=[1.02, 0.5, 0.5]), image, initial,
                  margin_mm=3.0, timings=tm2)
    assert tm2["resampled_to"] is None


def test_threads_are_restored_and_floor_is_positive():
    image, initial, a, _ = _two_blobs()
    before = torch.get_num_threads()
    refine_volume(CTThresholdModel(), META, image, initial, margin_mm=3.0, num_threads=1)
    assert torch.get_num_threads() == before
    from SCORERefineLib.refiner.network import build_network, network_config
    net = build_network(network_config("tiny"))
    assert forward_floor(net, [(3, 17, 20, 9)]) > 0


def _positive_numbers(obj, path=""):
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("load_before", "load_after", "changed_voxels", "resampled_to", "timings",
                     "refine_kwargs", "machine", "met", "note", "n_humeri", "cores_available"):
                continue
            bad += _positive_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _positive_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if not obj > 0:
            bad.append((path, obj))
    return bad


def test_perf_report_on_tiny_volumes(tmp_path):
    from SCORERefineLib.perf import run_perf, write_perf_report

    report = run_perf(tmp_path / "work", preset="tiny", device="cpu", progress=None,
                      isolate=False)
    assert {r["n_humeri"] for r in report["refine"]} == {1, 2}
    assert len(report["scaling"]) == 3 and report["train"]
    for r in report["refine"]:
        for k in ("seconds", "floor_s", "peak_rss_mb"):
            assert r[k] > 0
    assert report["refine"][0]["split_s"] > 0
    ts = report["refine_trained_spacing"]
    assert [r["n_humeri"] for r in ts] == [1, 2]
    assert all(r["timings"]["resampled_to"] == [3.0, 2.0, 2.0] for r in ts)
    assert all(r["timings"]["windows_total"] < n["timings"]["windows_total"]
               for r, n in zip(ts, report["refine"][:2]))
    no_tta = report["refine_no_tta"]                  # one pass per window, not the default 16
    assert [r["n_humeri"] for r in no_tta] == [1, 2]
    assert all(r["timings"]["passes_per_window"] == 1 for r in no_tta)
    assert all(r["timings"]["passes_per_window"] == 16 for r in report["refine"])
    for r in report["train"]:
        assert r["steps_per_s"] > 0 and r["extrapolated_1800_s"] > 0
    targets = {t["target"]: t for t in report["targets"]}
    assert any("--no-tta" in k for k in targets)      # 2 threads: not measured by "tiny"
    assert any("CUDA" in k and t["met"] is None for k, t in targets.items())
    assert _positive_numbers({k: report[k] for k in ("refine", "scaling", "train")}) == []
    md, js = write_perf_report(report, tmp_path / "performance.md", "scorerefine benchmark --preset perf")
    text = md.read_text()
    assert "## Targets" in text and "--device cuda" in text and "load average" in text
    assert "## Refine at the training spacing" in text
    assert "## Refine without test-time augmentation" in text
    assert json.loads(js.read_text())["preset"] == "tiny"


def test_resampling_a_network_that_changes_nothing_returns_the_initial_mask_exactly():
    # only the network's change is resampled back: no blur of the initial mask on a finer grid
    image, initial, _, _ = _two_blobs(shape=(24, 40, 90), spacing=(1.0, 0.5, 0.5))
    tm = {}
    refined = refine_volume(IdentityModel(), dict(META, spacing_mm=[1.3, 1.1, 1.1]), image,
                            initial, margin_mm=3.0, timings=tm)
    assert tm["resampled_to"] == [1.3, 1.1, 1.1]
    np.testing.assert_array_equal(refined.array, initial.array)


def test_perf_preset_from_the_cli_writes_docs_performance_by_default(monkeypatch, tmp_path):
    from SCORERefineLib import perf
    from SCORERefineLib.cli import build_parser

    seen = {}
    monkeypatch.setattr(perf, "run_perf", lambda work, preset, device="auto": {"targets": []})
    monkeypatch.setattr(perf, "write_perf_report",
                        lambda report, out, command: seen.update(out=out) or (out, out))
    args = build_parser().parse_args(["benchmark", "--preset", "perf", "--workdir", str(tmp_path)])
    assert args._run(args) == 0
    assert seen["out"] == Path("docs/performance.md")
    args = build_parser().parse_args(["benchmark", "--preset", "perf", "--out",
                                      str(tmp_path / "p.md"), "--workdir", str(tmp_path)])
    args._run(args)
    assert seen["out"] == tmp_path / "p.md"
