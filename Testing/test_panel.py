"""The panel built with Slicer's own Python layer (5.8 and 5.10) on a real Qt, driven by key events.

See slicer_harness.py for what is real and what is a stand-in."""

from __future__ import annotations

import time

import numpy as np
import pytest

import slicer_harness as H

pytestmark = pytest.mark.skipif(bool(H.missing_reason()), reason=H.missing_reason() or "ok")


@pytest.fixture(params=H.VERSIONS)
def panel(request):
    slicer = H.activate(request.param)
    module = H.load_module()
    moduleObj, widget, parent = H.build_widget(module)
    parent.show()
    parent.activateWindow()
    H.pump(50)
    yield slicer, module, widget, parent
    widget.exit()
    widget.cleanup()
    parent.close()


def _case(slicer, module, shape=(24, 44, 48)):
    from SCORERefineLib import mrml as bridge
    from SCORERefineLib.imageio import Geometry, Volume
    geometry = Geometry(size=tuple(reversed(shape)), spacing=(0.9, 0.9, 2.0), origin=(-20.0, 15.0, -60.0))
    zz, yy, xx = np.indices(shape, dtype=float)
    shaft = ((yy - shape[1] / 2) / 7.0) ** 2 + ((xx - shape[2] / 2) / 6.0) ** 2 <= 1.0
    ct = np.where(shaft, 900.0, -50.0).astype(np.float32)
    volume = bridge.volume_to_node(slicer.mrmlScene, Volume(ct, geometry), "CT")
    seg = bridge.new_segmentation_node(slicer.mrmlScene, "Initial", volume)
    other = bridge.add_mask_segment(seg, Volume(np.roll(shaft, 3, axis=1).astype(np.uint8), geometry), "scapula")
    sid = bridge.add_mask_segment(seg, Volume(np.roll(shaft, 1, axis=2).astype(np.uint8), geometry),
                                  "humerus_left+humerus_right")
    return volume, seg, sid, other


def _select_case(slicer, module, u):
    """A new case (:func:`_case`) chosen in the panel's volume and segment selectors."""
    volume, seg, sid, other = _case(slicer, module)
    u.inputVolumeSelector.setCurrentNode(volume)
    u.segmentSelector.setCurrentNode(seg)
    u.segmentSelector.setCurrentSegmentID(sid)
    return volume, seg, sid, other


def _key(parent, key):
    from PySide6.QtTest import QTest
    from PySide6.QtCore import Qt
    code = {"O": Qt.Key_O, "U": Qt.Key_U, "N": Qt.Key_N, " ": Qt.Key_Space}.get(key) or getattr(Qt, f"Key_{key}")
    QTest.keyClick(parent, code)
    H.pump(5)


def test_panel_builds_with_the_real_wrapper_enters_exits_and_reloads(panel):
    slicer, module, widget, parent = panel
    u = widget.ui
    from SCORERefineLib import catalog
    assert [u.regionMethodComboBox.itemText(i) for i in range(u.regionMethodComboBox.count)] == \
        catalog.names(catalog.REGION_METHODS)
    assert [u.trainModeComboBox.itemText(i) for i in range(u.trainModeComboBox.count)] == \
        catalog.names(catalog.TRAINING_MODES)
    widget.exit()
    widget.enter()
    u.regionCountSpinBox.value = 7
    assert widget._parameterNode.regionCount == 7          # the real connector is live
    widget.cleanup()                                        # reload: a new widget on the same scene
    _, again, _ = H.build_widget(module)
    assert again.ui.regionCountSpinBox.value == 7
    again.exit()
    again.cleanup()


def test_defect1_device_combo_is_outside_the_wrapper(panel):
    """Binding a plain str to a QComboBox raises inside Slicer's connectGui; the panel does not."""
    slicer, module, widget, parent = panel
    import qt
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class Old:
        device: str = "auto"
    box = qt.QWidget()
    combo = qt.QComboBox(box)
    combo.setProperty("SlicerParameterName", "device")
    with pytest.raises(RuntimeError, match="Choice"):
        # as the panel calls it: connectGui(self.ui), the .ui's named children
        Old(module.SCORERefineLogic().getParameterNode().parameterNode).connectGui(
            __import__("types").SimpleNamespace(trainDeviceComboBox=combo))
    u = widget.ui
    assert u.trainDeviceComboBox.property("SlicerParameterName") is None
    assert u.trainDeviceComboBox.itemText(0) == "auto"
    u.trainDeviceComboBox.setCurrentIndex(1)
    assert widget._parameterNode.device == "cpu"


def test_defect4_segment_id_survives_reenter_and_reload(panel):
    slicer, module, widget, parent = panel
    volume, seg, sid, other = _case(slicer, module)
    widget.ui.segmentSelector.setCurrentNode(seg)           # announces its first segment
    widget.ui.segmentSelector.setCurrentSegmentID(sid)
    assert widget._parameterNode.segmentId == sid
    widget.exit()
    widget.cleanup()
    _, again, _ = H.build_widget(module)                    # module reload
    assert again._parameterNode.segmentId == sid
    assert again.ui.segmentSelector.currentSegmentID() == sid
    again.exit()
    again.cleanup()


def test_whole_flow_with_key_events(panel, tmp_path):
    """Choose a segment, split, rate every region with keys, save, apply, compare, undo."""
    slicer, module, widget, parent = panel
    u = widget.ui
    volume, seg, sid, other = _select_case(slicer, module, u)
    u.regionMethodComboBox.setCurrentIndex(1)               # slabs
    u.regionCountSpinBox.value = 4
    u.splitButton.click()
    session = widget.logic.session
    assert session is not None, H.errors()
    n = len(session.labels)
    _key(parent, "3")
    assert "press O" in u.rateStatusLabel.text
    _key(parent, "U")                                       # rated, auto-advanced
    assert session.n_rated == 1 and session.current == session.labels[1]
    while not session.all_rated:
        _key(parent, "5")
    assert session.n_rated == n
    # re-split asks first; "no" keeps the ratings
    H.set_confirm(False)
    u.splitButton.click()
    assert widget.logic.session is session and session.n_rated == n
    H.set_confirm(True)
    # save the case
    u.datasetDirectoryButton.directory = str(tmp_path / "ds")
    u.caseIdLineEdit.text = "case_000"
    u.saveCaseButton.click()
    assert (tmp_path / "ds" / "cases" / "case_000" / "feedback.json").exists(), H.errors()
    # apply (classical refiner) in the background, compare, undo
    from SCORERefineLib import mrml as bridge
    before = bridge.segment_mask(seg, sid, bridge.volume_from_node(volume).geometry).mask.array.copy()
    u.modelPathLineEdit.currentPath = "classical"
    u.applyButton.click()
    deadline = time.monotonic() + 120
    while widget.logic.refineJob is not None and (widget.logic.refineJob.running or widget._applyTimer.isActive()) \
            and time.monotonic() < deadline:
        H.pump(50)
    assert widget.logic.refineJob.state == "finished", widget.logic.refineJob.error_message
    assert "Per region" in u.applyStatusLabel.text or "0 voxels added, 0 removed" in u.applyStatusLabel.text
    assert bridge.has_backup(seg, sid)
    widget.showInitialCheckBox.setChecked(False)
    u.undoRefineButton.click()
    after = bridge.segment_mask(seg, sid, bridge.volume_from_node(volume).geometry).mask.array
    assert np.array_equal(after, before)


def test_defect5_apply_on_a_512x512x220_ct_keeps_timers_firing_and_cancels(panel):
    slicer, module, widget, parent = panel
    if H._STATE["version"] != "5.10":
        pytest.skip("the size test runs once (5.10); the flow test covers 5.8")
    import qt
    u = widget.ui
    volume, seg, sid, other = _case(slicer, module, shape=(220, 512, 512))
    u.inputVolumeSelector.setCurrentNode(volume)
    u.segmentSelector.setCurrentNode(seg)
    u.segmentSelector.setCurrentSegmentID(sid)
    u.modelPathLineEdit.currentPath = "classical"
    ticks = []
    timer = qt.QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    u.applyButton.click()
    assert widget.logic.refineJob is not None and widget.logic.refineJob.running, u.applyStatusLabel.text
    t0 = time.monotonic()
    H.pump(1500)
    during = [t for t in ticks if t >= t0]
    assert len(during) >= 20, f"only {len(during)} timer ticks in 1.5 s during Apply"
    gaps = np.diff(during)
    widget.cancelApplyButton.click()
    deadline = time.monotonic() + 30
    while widget._applyTimer.isActive() and time.monotonic() < deadline:
        H.pump(50)
    timer.stop()
    assert widget.logic.refineJob.state == "cancelled"
    assert not widget._applyTimer.isActive() and u.applyButton.enabled
    from SCORERefineLib import mrml as bridge
    assert not bridge.has_backup(seg, sid)                  # nothing was changed
    print(f"Apply 512x512x220: {len(during)} ticks in 1.5 s, longest gap {gaps.max() * 1000:.0f} ms")


def test_defect6_dependency_install_pins_the_installed_torch(panel, monkeypatch):
    slicer, module, widget, parent = panel
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda args, *a, **k: calls.append(list(args)), raising=False)
    monkeypatch.setattr(slicer.app, "testing", False)
    logic = widget.logic
    monkeypatch.setattr(logic, "missing_dependencies", lambda: ["MONAI"])
    import torch
    assert logic.install_dependencies(confirm=False)
    (args,) = calls
    assert "-c" in args
    from pathlib import Path
    assert Path(args[args.index("-c") + 1]).read_text().strip() == f"torch=={torch.__version__}"
    assert not hasattr(slicer, "pydeps")


def test_defect7_failed_totalsegmentator_leaves_no_empty_node(panel, monkeypatch, tmp_path):
    slicer, module, widget, parent = panel
    volume, seg, sid, other = _case(slicer, module)
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    monkeypatch.setenv("PATH", str(tmp_path))                 # no TotalSegmentator anywhere
    import importlib.util as iu
    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "totalsegmentator" else real(name, *a))
    before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    widget.ui.runTotalSegmentatorButton.click()
    assert "not installed" in widget.ui.inputStatusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before


def test_the_in_slicer_self_test_runs_in_the_harness():
    """SCORERefineTest with Slicer 5.10's ScriptedLoadableModuleTest (no panel shown: its
    scene.Clear() with the harness's widget observing the scene crashes slicer-core, see docs)."""
    H.activate("5.10")
    module = H.load_module()
    module.SCORERefineTest().runTest()


def test_defect5_totalsegmentator_command_runs_in_the_background(panel, monkeypatch, tmp_path):
    """The command-line TotalSegmentator (a fake executable here) runs as a background job:
    the event loop keeps running while it works, and its result becomes the segment."""
    import stat
    from test_totalseg import FAKE_TS
    slicer, module, widget, parent = panel
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "TotalSegmentator"
    exe.write_text(FAKE_TS)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    volume, seg, sid, other = _case(slicer, module)
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    widget.ui.structuresLineEdit.text = "humerus_left"
    widget.ui.runTotalSegmentatorButton.click()
    assert widget.logic.tsJob is not None and "background" in widget.ui.inputStatusLabel.text
    deadline = time.monotonic() + 60
    while widget._tsTimer.isActive() and time.monotonic() < deadline:
        H.pump(50)
    assert widget.logic.tsJob.state == "finished", widget.ui.inputStatusLabel.text
    assert widget.ui.inputStatusLabel.text.startswith("TotalSegmentator: humerus_left")
    assert widget._parameterNode.segmentId == widget.ui.segmentSelector.currentSegmentID() != ""


@pytest.fixture(scope="module")
def quality_checkpoint(tmp_path_factory):
    """A real (briefly trained, tiny) quality checkpoint: the panel's wiring is what is tested."""
    from SCORERefineLib.phantoms import PRESETS, make_phantom
    from SCORERefineLib.quality.data import synthetic_samples
    from SCORERefineLib.quality.network import quality_config
    from SCORERefineLib.quality.train import train_quality
    from SCORERefineLib.regions import RegionParams
    p = make_phantom(1, PRESETS["tiny"])
    cfg = quality_config("tiny")
    samples = synthetic_samples(p.image, p.reference.array, cfg, np.random.default_rng(0),
                                n_corruptions=1, region_params=RegionParams(n_regions=4))
    return train_quality(samples, tmp_path_factory.mktemp("q") / "quality.pt", steps=3,
                         batch_size=4, config=cfg, num_threads=1)


def test_quality_predictor_suggest_accept_with_a_and_doubtful_first(panel, quality_checkpoint):
    """Suggest fills the Suggested column; A records the suggestion as the person's rating and
    never replaces one they gave; Doubtful first goes to the most uncertain unrated region."""
    slicer, module, widget, parent = panel
    u = widget.ui
    volume, seg, sid, other = _select_case(slicer, module, u)
    u.regionMethodComboBox.setCurrentIndex(1)               # slabs
    u.regionCountSpinBox.value = 4
    u.raterNameLineEdit.text = "dr_a"
    u.splitButton.click()
    session = widget.logic.session
    assert session is not None, H.errors()
    first = session.current
    _key(parent, "5")                                       # the person rates the first region
    widget.qualityModelLineEdit.text = str(quality_checkpoint)
    widget.suggestButton.click()
    preds = session.suggestions()
    assert sorted(preds) == session.labels, widget.qualityStatusLabel.text
    assert u.regionTable.columnCount == 5
    for r, label in enumerate(session.labels):
        assert u.regionTable.item(r, 4).text() == session.suggestion_text(label) != ""
    # Doubtful first: the next region is the most uncertain unrated one
    widget.doubtfulFirstCheckBox.setChecked(True)
    assert session.order == "uncertainty"
    unrated = [k for k in session.labels if k != first]
    most = max(unrated, key=lambda k: (preds[k].entropy, -preds[k].expected_score, -k))
    assert session.current == most
    # A: the suggestion becomes dr_a's rating (not the model's), then the next doubtful region
    suggested = session.suggested_rating(most)
    _key(parent, "A")
    mine = session.feedback.raters["dr_a"][most]
    assert (mine.score, mine.error) == (suggested.score, suggested.error)
    assert session.feedback.consensus()[most][0] == suggested.score
    assert session.current != most
    # A on the region the person rated keeps their 5
    session.go_to(first)
    _key(parent, "A")
    assert session.feedback.raters["dr_a"][first].score == 5
    assert "is kept" in u.rateStatusLabel.text
    assert not session.feedback.is_model("dr_a") and session.feedback.is_model("suggested")
    # when every unrated region is confidently good to the predictor, the panel says so
    from SCORERefineLib.quality.ranking import _prediction
    session.add_suggestions({k: _prediction(k, np.array([0, 0, 0, 0.02, 0.98]), np.array([0.1, 0.1, 0.8]))
                             for k in session.labels})
    _key(parent, "N")
    assert "confidently good" in u.rateStatusLabel.text, u.rateStatusLabel.text


def test_quality_predictor_trains_in_the_background_from_the_panel(panel, tmp_path):
    slicer, module, widget, parent = panel
    if H._STATE["version"] != "5.10":
        pytest.skip("the background training runs once (5.10); the wiring is the same on 5.8")
    from SCORERefineLib.phantoms import make_cohort
    make_cohort(tmp_path / "ds", 1, seed=0, preset="tiny")
    widget.ui.datasetDirectoryButton.directory = str(tmp_path / "ds")
    widget.ui.trainStepsSpinBox.value = 2
    widget.trainQualityButton.click()
    job = widget.logic.qualityJob
    assert job is not None and not widget.trainQualityButton.enabled, widget.qualityStatusLabel.text
    deadline = time.monotonic() + 180
    while widget._qualityTimer.isActive() and time.monotonic() < deadline:
        H.pump(50)
    assert job.state == "finished", job.error_message
    assert (tmp_path / "ds" / "quality.pt").exists()
    assert widget.qualityModelLineEdit.text == str(tmp_path / "ds" / "quality.pt")
    assert widget.trainQualityButton.enabled


def _tiny_checkpoint(path, seed):
    import torch

    from SCORERefineLib.refiner.checkpoint import save_checkpoint
    from SCORERefineLib.refiner.inputs import CHANNELS, NORMALISATION
    from SCORERefineLib.refiner.network import build_network, network_config

    torch.manual_seed(seed)
    cfg = network_config("tiny")
    meta = {"channels": list(CHANNELS), "network": cfg.to_dict(), "normalisation": NORMALISATION,
            "patch_size": [16, 16, 16]}
    return save_checkpoint(path, build_network(cfg), meta)


def test_apply_averages_the_listed_checkpoints_and_names_bad_entries(panel, tmp_path):
    """'Also average' (an ensemble): the background refine gets every listed checkpoint as
    --also-model and finishes; a missing file or a built-in model is refused with a message and
    no job starts."""
    slicer, module, widget, parent = panel
    u = widget.ui
    volume, seg, sid, other = _select_case(slicer, module, u)
    a = _tiny_checkpoint(tmp_path / "a.pt", 0)
    b = _tiny_checkpoint(tmp_path / "b.pt", 1)
    u.modelPathLineEdit.currentPath = str(a)
    widget.alsoModelsLineEdit.text = f"{tmp_path / 'missing.pt'}"
    u.applyButton.click()
    assert widget.logic.refineJob is None and "missing.pt" in u.applyStatusLabel.text
    u.modelPathLineEdit.currentPath = "classical"
    widget.alsoModelsLineEdit.text = str(b)
    u.applyButton.click()
    assert widget.logic.refineJob is None and "built-in" in u.applyStatusLabel.text
    u.modelPathLineEdit.currentPath = str(a)
    widget.alsoModelsLineEdit.text = f" {b} ;"
    # "Test-time augmentation" is on by default; unticked, the background refine runs one pass
    # per window (--no-tta), which keeps this test fast
    assert widget.ttaCheckBox.checked
    widget.ttaCheckBox.checked = False
    u.applyButton.click()
    job = widget.logic.refineJob
    assert job is not None, u.applyStatusLabel.text
    command = widget.logic._refinePrepared.command
    assert command[command.index("--also-model") + 1] == str(b) and command.count("--also-model") == 1
    assert "--no-tta" in command
    deadline = time.monotonic() + 120
    while (job.running or widget._applyTimer.isActive()) and time.monotonic() < deadline:
        H.pump(50)
    assert job.state == "finished", job.error_message
    from SCORERefineLib import mrml as bridge
    assert bridge.has_backup(seg, sid)
