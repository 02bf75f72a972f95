"""Engine side of the panel's scribbles and hybrid settings: stroke counting (and its cost), the
hybrid flags handed to the background ``scorerefine train`` job, and the catalog's hybrid choices."""

from __future__ import annotations

import numpy as np
import pytest

from SCORERefineLib import catalog, training_job
from SCORERefineLib.errors import InputError
from SCORERefineLib.scribbles import (SECONDS_PER_SLICE, SECONDS_PER_STROKE, describe_strokes,
                                      simulate_scribbles, stroke_summary)


def _map():
    a = np.zeros((10, 20, 20), np.uint8)
    a[3, 5, 2:12] = 1            # an axial stroke inside
    a[3, 9:12, 4] = 1            # a second one on the same slice, apart from the first
    a[3, 15, 2:10] = 2           # outside, same slice
    a[2:8, 18, 6] = 2            # a stroke painted in a sagittal/coronal view: spans 6 axial slices
    a[6:8, 1:3, 15:17] = 1       # a 2x2x2 brush blob (one stroke on two axial slices)
    return a


def test_stroke_summary_counts_strokes_in_any_view_and_prices_them():
    s = stroke_summary(_map())
    assert (s["foreground"], s["background"], s["n_strokes"]) == (3, 2, 5)
    # planes drawn on: axial slice 3 (four strokes), the coronal plane y = 18, the blob's
    assert s["slices"] == 3
    assert s["seconds"] == 5 * SECONDS_PER_STROKE + 3 * SECONDS_PER_SLICE
    assert s["voxels_foreground"] == 10 + 3 + 8 and s["voxels_background"] == 8 + 6
    # touching strokes of one label are one stroke; of different labels two
    a = _map()
    a[3, 5:9, 4] = 1
    assert stroke_summary(a)["foreground"] == 2
    assert "3 inside and 2 outside" in describe_strokes(s)


def test_stroke_summary_empty_and_bad_maps():
    s = stroke_summary(np.zeros((4, 5, 6), np.uint8))
    assert s["n_strokes"] == 0 and s["seconds"] == 0.0
    assert "No strokes yet" in describe_strokes(s)
    with pytest.raises(InputError, match=r"labels \[3\]"):
        stroke_summary(np.full((2, 2, 2), 3))
    with pytest.raises(InputError, match="3D"):
        stroke_summary(np.zeros((4, 4)))


def test_stroke_summary_agrees_with_the_simulated_scribbler(ellipsoid_mask):
    ref = ellipsoid_mask((20, 40, 40), (8, 14, 14))
    ini = np.roll(ref, 3, axis=2)
    lab, info = simulate_scribbles(ini, ref, (2.0, 1.0, 1.0), n_slices=3, seed=1)
    s = stroke_summary(lab)
    assert np.all(np.diff(info["slices"]) > 1)      # (this seed: no two slices adjacent)
    assert s["slices"] == len(info["slices"])
    # strokes the scribbler drew may touch on a slice (they count once), never more strokes
    assert 0 < s["n_strokes"] <= info["n_strokes"]
    assert s["seconds"] <= info["seconds"]


def test_hybrid_arguments_for_the_training_job(tmp_path):
    assert training_job.mode_arguments("score", dense="case_000") == []
    assert training_job.mode_arguments("score", profile="broad") == ["--loss-weights", "broad"]
    assert training_job.mode_arguments("full", profile="broad") == []
    with pytest.raises(InputError, match="loss setting must be one of"):
        training_job.mode_arguments("score", profile="bones")
    from SCORERefineLib.refiner.losses import ScoreLossWeights     # every profile trains
    assert "default" in catalog.SCORE_PROFILES
    assert set(catalog.SCORE_PROFILES) - {"default"} <= set(ScoreLossWeights.PROFILES)
    for name in set(catalog.SCORE_PROFILES) - {"default"}:
        assert ScoreLossWeights.parse(name) != ScoreLossWeights()   # each one changes the loss
    assert training_job.mode_arguments("hybrid", dense_count=2) == [
        "--dense-count", "2", "--weak", "score", "--indicator", "dynamic"]
    assert training_job.mode_arguments("hybrid", dense="case_001, case_000 case_001",
                                       weak="scribble", indicator="fixed") == [
        "--dense", "case_001,case_000", "--weak", "scribble", "--indicator", "fixed"]
    with pytest.raises(InputError, match="not both"):
        training_job.mode_arguments("hybrid", dense="case_000", dense_count=1)
    with pytest.raises(InputError, match="needs its dense cases"):
        training_job.mode_arguments("hybrid")
    with pytest.raises(InputError, match="weak feedback"):
        training_job.mode_arguments("hybrid", dense_count=1, weak="dense")
    with pytest.raises(InputError, match="weighting"):
        training_job.mode_arguments("hybrid", dense_count=1, indicator="random")
    # with the dataset: the dense cases must have a reference
    (tmp_path / "cases" / "case_000").mkdir(parents=True)
    (tmp_path / "cases" / "case_000" / "reference.nii.gz").write_bytes(b"")
    (tmp_path / "cases" / "case_001").mkdir()
    assert training_job.mode_arguments("hybrid", dense="case_000", dataset=tmp_path)[:2] == \
        ["--dense", "case_000"]
    with pytest.raises(InputError, match=r"\['case_001'\] have no reference"):
        training_job.mode_arguments("hybrid", dense="case_000,case_001", dataset=tmp_path)


def test_the_hybrid_arguments_parse_as_the_cli_does(tmp_path):
    """The flags the panel sends are ones ``scorerefine train`` accepts and maps onto HybridConfig."""
    import argparse

    from SCORERefineLib.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--out", "m.pt", "--mode", "hybrid",
                              *training_job.mode_arguments("hybrid", dense="case_002,case_000",
                                                           weak="scribble", indicator="fixed")])
    cfg = train_cmd.config_from_args(args).mode_config
    assert (cfg.dense_ids, cfg.dense_count, cfg.weak, cfg.indicator) == (
        ["case_002", "case_000"], None, "scribble", "fixed")


def test_catalog_hybrid_choices_equal_the_mode():
    from SCORERefineLib.refiner.modes import hybrid

    assert catalog.names(catalog.HYBRID_WEAK_KINDS) == list(hybrid.WEAK_KINDS)
    assert catalog.names(catalog.HYBRID_INDICATORS) == list(hybrid.INDICATORS)
    assert set(training_job.MODE_SETTINGS) <= set(catalog.TRAINING_MODES)
