"""TotalSegmentator runner: command, outputs, merge, and the errors a person sees when it cannot
run (not installed, weights unavailable offline). A fake ``TotalSegmentator`` executable on PATH
exercises the real subprocess path; the real tool runs only with SCORE_RUN_TOTALSEG=1."""

from __future__ import annotations

import os
import stat
import sys
import textwrap

import numpy as np
import pytest

from SCORERefineLib import totalseg as ts
from SCORERefineLib.imageio import Geometry, Volume, read_image, read_mask, write_volume

from conftest import ellipsoid

GEOM = Geometry(size=(30, 26, 12), spacing=(0.9, 0.9, 2.0), origin=(-20.0, 35.0, -110.0))

FAKE_TS = textwrap.dedent(f'''\
    #!{sys.executable}
    import os, sys
    import numpy as np, SimpleITK as sitk
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_TS_MODE", "ok")
    if mode == "offline":
        print("Downloading model weights for task 297 ...")
        print("urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>")
        sys.exit(1)
    if mode == "oom":
        print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
        sys.exit(1)
    inp, out = args[args.index("-i") + 1], args[args.index("-o") + 1]
    rois = []
    for a in args[args.index("--roi_subset") + 1:]:
        if a.startswith("-"):
            break
        rois.append(a)
    ct = sitk.ReadImage(inp)
    arr = sitk.GetArrayFromImage(ct)
    os.makedirs(out, exist_ok=True)
    for name in ["humerus_left", "humerus_right", "scapula_left"]:
        m = (arr > 300).astype(np.uint8) if name == "humerus_left" else np.zeros(arr.shape, np.uint8)
        img = sitk.GetImageFromArray(m); img.CopyInformation(ct)
        sitk.WriteImage(img, os.path.join(out, name + ".nii.gz"))
    print("fake TotalSegmentator done", " ".join(args))
''')


@pytest.fixture
def fake_ts(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "TotalSegmentator"
    exe.write_text(FAKE_TS)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    weights = tmp_path / "weights"
    (weights / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir(parents=True)
    (weights / "Dataset298_TotalSegmentator_total_6mm_1559subj").mkdir(parents=True)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "TOTALSEG_WEIGHTS_PATH": str(weights),
           "HOME": str(tmp_path)}
    return env


def _ct():
    arr = np.full(GEOM.shape, -100, np.int16)
    arr[ellipsoid(GEOM.shape, (4, 6, 8)) == 1] = 800
    return Volume(arr, GEOM)


def test_command_construction():
    cmd = ts.build_command("ct.nii.gz", "out", executable=["TotalSegmentator"])
    assert cmd == ["TotalSegmentator", "-i", "ct.nii.gz", "-o", "out",
                   "--roi_subset", "humerus_left", "humerus_right", "--fast"]
    cmd = ts.build_command("ct.nii.gz", "seg.nii.gz", ["humerus_left"], fast=False, ml=True, device="cpu")
    assert cmd[-5:] == ["--roi_subset", "humerus_left", "--ml", "--device", "cpu"] and "--fast" not in cmd
    with pytest.raises(ts.InputError, match="at least one structure"):
        ts.build_command("a", "b", [])
    with pytest.raises(ts.InputError, match="not TotalSegmentator class names"):
        ts.build_command("a", "b", ["Humerus Left"])
    with pytest.raises(ts.InputError, match="device"):
        ts.build_command("a", "b", device="cuda")
    assert "left humerus" in ts.segment_name_candidates("humerus_left")


def test_not_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ts.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ts.TotalSegmentatorNotInstalled) as err:
        ts.find_command({"PATH": str(tmp_path)})
    msg = str(err.value)
    assert "TotalSegmentator extension" in msg and "pip install TotalSegmentator" in msg
    with pytest.raises(ts.TotalSegmentatorNotInstalled, match="does not exist"):
        ts.find_command({"PATH": "", ts.EXECUTABLE_ENV: str(tmp_path / "nope")})
    with pytest.raises(ts.TotalSegmentatorNotInstalled):
        ts.run_totalsegmentator(_ct(), env={"PATH": str(tmp_path)})
    e = ts.explain_failure(127, "TotalSegmentator: command not found")
    assert isinstance(e, ts.TotalSegmentatorNotInstalled)


def test_weights_unavailable_offline_says_how_to_use_local_weights(tmp_path, fake_ts):
    env = dict(fake_ts, TOTALSEG_WEIGHTS_PATH=str(tmp_path / "empty"))
    assert ts.missing_weights(True, env) == [297, 298]
    assert ts.missing_weights(True, fake_ts) == []
    assert ts.missing_weights(False, fake_ts) == [291, 292, 293, 294, 295]

    with pytest.raises(ts.WeightsUnavailable) as err:       # refused before running when offline
        ts.run_totalsegmentator(_ct(), env=env, offline=True)
    msg = str(err.value)
    assert "TOTALSEG_WEIGHTS_PATH" in msg and "totalseg_import_weights" in msg and str(tmp_path / "empty") in msg
    # TotalSegmentator itself failing to download -> the same clear error
    with pytest.raises(ts.WeightsUnavailable, match="no internet"):
        ts.run_totalsegmentator(_ct(), env=dict(env, FAKE_TS_MODE="offline"))
    with pytest.raises(ts.TotalSegmentatorFailed, match="out of memory"):
        ts.run_totalsegmentator(_ct(), env=dict(fake_ts, FAKE_TS_MODE="oom"))


def test_defect3_roi_subset_needs_the_6mm_weights_in_both_modes(tmp_path):
    """--roi_subset always runs Dataset298 (6 mm) first to crop: its absence must be reported."""
    weights = tmp_path / "w"
    (weights / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir(parents=True)
    env = {"TOTALSEG_WEIGHTS_PATH": str(weights)}
    assert ts.missing_weights(True, env) == [298]
    assert 298 in ts.missing_weights(False, env)
    assert "Dataset298" in ts.weights_hint(True, env)


def test_defect3_extension_path_installs_requirements_and_checks_weights_offline(tmp_path):
    calls = []

    class Logic:
        def setupPythonRequirements(self, upgrade=False):
            calls.append("setup")
    env = {"TOTALSEG_WEIGHTS_PATH": str(tmp_path / "none")}
    with pytest.raises(ts.WeightsUnavailable):
        ts.prepare_extension(Logic(), fast=True, env=env, offline=True)
    assert calls == []
    ts.prepare_extension(Logic(), fast=True, env=env, offline=False)
    assert calls == ["setup"]
    assert "open the TotalSegmentator module once" not in ts.INSTALL_HINT


def test_defect3_fallback_runs_the_engine_python_not_the_application(monkeypatch, tmp_path):
    """Inside Slicer sys.executable is the application: the package fallback must use PythonSlicer."""
    import importlib.util as iu
    from SCORERefineLib import jobs
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: object() if name == "totalsegmentator" else None)
    monkeypatch.setattr(jobs, "python_command", lambda: ["/opt/Slicer/bin/PythonSlicer"])
    cmd = ts.find_command(env={"PATH": str(tmp_path)})
    assert cmd[0] == "/opt/Slicer/bin/PythonSlicer" and cmd[1] == "-c"

def test_run_with_fake_executable_merges_structures_on_the_ct_grid(tmp_path, fake_ts):
    ct = _ct()
    res = ts.run_totalsegmentator(ct, env=fake_ts, workdir=tmp_path / "work")
    assert res.command[0].endswith("TotalSegmentator") and "--fast" in res.command
    assert res.mask.geometry == ct.geometry
    np.testing.assert_array_equal(res.mask.array, (ct.array > 300).astype(np.uint8))
    assert res.empty == ["humerus_right"] and res.voxels["humerus_left"] == int((ct.array > 300).sum())
    assert "fake TotalSegmentator done" in res.log


def test_output_parsing_and_merge_on_fake_outputs(tmp_path):
    out = tmp_path / "out"
    left = np.zeros(GEOM.shape, np.uint8)
    left[2:5, 3:9, 4:10] = 1
    right = np.zeros(GEOM.shape, np.uint8)
    right[6:9, 12:20, 4:10] = 1
    write_volume(Volume(left, GEOM), out / "humerus_left.nii.gz")
    write_volume(Volume(right, GEOM), out / "humerus_right.nii.gz")
    found = ts.find_outputs(out)
    assert set(found) == {"humerus_left", "humerus_right"}
    merged = ts.merge_structures(found)
    np.testing.assert_array_equal(merged.mask.array, left | right)
    assert merged.voxels == {"humerus_left": int(left.sum()), "humerus_right": int(right.sum())}
    with pytest.raises(ts.TotalSegmentatorFailed, match=r"has no \['scapula_left'\]"):
        ts.find_outputs(out, ["humerus_left", "scapula_left"])
    # --ml: one multi-label file with TotalSegmentator v2 labels (69 left, 70 right, 71 scapula)
    ml = left * 69 + right * 70
    ml[0, 0, 0] = 71
    write_volume(Volume(ml.astype(np.int16), GEOM), tmp_path / "seg.nii.gz")
    found = ts.find_outputs(tmp_path / "seg.nii.gz", ["humerus_right"], ml=True)
    np.testing.assert_array_equal(ts.merge_structures(found).mask.array, right)
    # a finer target grid: resampled onto it
    fine = Geometry(size=(60, 52, 12), spacing=(0.45, 0.45, 2.0), origin=(-20.225, 34.775, -110.0))
    on_fine = ts.merge_structures(ts.find_outputs(out), like=fine).mask
    assert on_fine.geometry == fine and on_fine.array.sum() == pytest.approx(4 * (left | right).sum(), rel=0.05)
    # all empty: a clear error
    write_volume(Volume(np.zeros(GEOM.shape, np.uint8), GEOM), out / "scapula_left.nii.gz")
    with pytest.raises(ts.InputError, match="found none of"):
        ts.merge_structures(ts.find_outputs(out, ["scapula_left"]))


@pytest.mark.totalseg
@pytest.mark.skipif(os.environ.get("SCORE_RUN_TOTALSEG") != "1",
                    reason="real TotalSegmentator run is opt-in: set SCORE_RUN_TOTALSEG=1 (needs the "
                           "TotalSegmentator command and its weights, or internet)")
def test_real_totalsegmentator_on_the_shared_ct(shared_humerus):
    image = read_image(shared_humerus / "ct.nii.gz")
    res = ts.run_totalsegmentator(image, fast=True, device="cpu")
    assert res.mask.geometry == image.geometry and res.mask.array.sum() > 100
    ref_path = shared_humerus / "totalseg_fast.nii.gz"
    if ref_path.exists():
        ref = read_mask(ref_path, label=69).array | read_mask(ref_path, label=70).array
        inter = (ref & res.mask.array).sum()
        assert 2 * inter / (ref.sum() + res.mask.array.sum()) > 0.8


SHARED_TS = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "slicer-python" / "SlicerTotalSegmentator"


def _real_process_signature(version):
    """A function with the exact signature of the real ``TotalSegmentatorLogic.process``."""
    import ast
    path = SHARED_TS / version / "TotalSegmentator.py"
    if not path.exists():
        pytest.skip(f"Slicer's TotalSegmentator module sources not found at {path} (../shared/slicer-python)")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TotalSegmentatorLogic"):
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == "process":
                fn.body = [ast.Expr(ast.Call(ast.Name("record", ast.Load()), [ast.Call(ast.Name("locals", ast.Load()), [], [])], []))]
                fn.decorator_list = []
                calls = []
                ns = {"record": calls.append}
                exec(compile(ast.fix_missing_locations(ast.Module([fn], [])), str(path), "exec"), ns)
                return __import__("functools").partial(ns["process"], None), calls
    raise AssertionError("process() not found")


@pytest.mark.parametrize("version", ["5.8", "main"])
def test_defect2_extension_call_binds_the_installed_signature(version):
    """Slicer 5.8's extension takes fast=, main (5.10+) quality=: one call, subset always passed."""
    process, calls = _real_process_signature(version)
    kwargs = ts.extension_process_kwargs(process, fast=True, cpu=True, subset=["humerus_left"])
    process(object(), object(), **kwargs)            # raises TypeError on a wrong binding
    (got,) = calls
    assert got["subset"] == ["humerus_left"] and got["cpu"] is True and got["task"] == "total"
    if version == "main":
        assert got["quality"] == "fast"
    else:
        assert got["fast"] is True

    def no_subset(inputVolume, outputSegmentation, fast=True, cpu=False, task=None):
        pass
    with pytest.raises(ts.TotalSegmentatorNotInstalled, match="117"):
        ts.extension_process_kwargs(no_subset, subset=["humerus_left"])
