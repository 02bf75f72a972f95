"""Held-out validation and early stopping (refiner/validation.py) and their use by the trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from SCORERefineLib.refiner.checkpoint import load_checkpoint
from SCORERefineLib.refiner.trainer import TrainConfig, train
from SCORERefineLib.refiner.validation import EarlyStopping, split_validation

from test_trainer import make_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cases(n):
    return [SimpleNamespace(case_id=f"case_{i:03d}") for i in range(n)]


def test_split_holds_out_a_seeded_share_and_never_below_min_cases():
    train4, val4 = split_validation(_cases(4), 0.5, seed=0, min_cases=5)
    assert len(train4) == 4 and val4 == []
    assert split_validation(_cases(19), 0.2)[1] == []          # default: at least 20 cases
    assert len(split_validation(_cases(20), 0.2)[1]) == 4
    tr, va = split_validation(_cases(10), 0.2, seed=3, min_cases=5)
    assert len(va) == 2 and len(tr) == 8
    assert {c.case_id for c in tr}.isdisjoint({c.case_id for c in va})
    again = split_validation(_cases(10), 0.2, seed=3, min_cases=5)[1]
    assert [c.case_id for c in again] == [c.case_id for c in va]
    others = {tuple(c.case_id for c in split_validation(_cases(10), 0.2, seed=s, min_cases=5)[1])
              for s in range(6)}
    assert len(others) > 1, "the seed must choose which cases are held out"
    assert split_validation(_cases(10), 0.0)[1] == []


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(every=10, patience=2, min_steps=0)
    assert not stop.update(10, 1.0, net)
    with torch.no_grad():
        net.weight.fill_(0.5)
    assert not stop.update(20, 0.8, net)      # best so far, weights 0.5 kept
    best = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.fill_(-3.0)
    assert not stop.update(30, 0.85, net)     # worse once
    assert stop.update(40, 0.9, net)          # worse twice: stop
    assert stop.stopped_at == 40 and stop.best_step == 20
    assert stop.restore_best(net)
    assert torch.equal(net.weight, best)
    rep = stop.report()
    assert rep["stopped_early"] and rep["best_step"] == 20 and len(rep["history"]) == 4


def test_early_stopping_waits_for_min_steps():
    net = torch.nn.Linear(2, 1)
    stop = EarlyStopping(every=1, patience=1, min_steps=5)
    assert not stop.update(1, 1.0, net)
    assert not stop.update(2, 2.0, net)       # worse, but before min_steps
    assert stop.update(5, 3.0, net)


def test_trainer_holds_out_cases_and_records_validation(tmp_path):
    ds = make_tiny_dataset(tmp_path / "ds", n=5, seed=11)
    out = tmp_path / "m.pt"
    cfg = TrainConfig(steps=6, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                      checkpoint_every=0, num_threads=1, val_fraction=0.2, val_every=2,
                      val_patience=10, val_min_cases=5, val_batches=3)
    train(ds, out, cfg, progress="none")
    meta = load_checkpoint(out)["metadata"]
    val = meta["validation"]
    assert len(val["cases"]) == 1 and val["batches"] == 3
    assert val["cases"][0] not in meta["cases"] and len(meta["cases"]) == 4
    assert [h[0] for h in val["history"]] == [2, 4, 6]
    assert all(h[1] == h[1] for h in val["history"])      # finite numbers, not NaN
    assert val["best_step"] in (2, 4, 6) and not val["stopped_early"]


@pytest.mark.parametrize("settings", [dict(val_fraction=0.0, val_min_cases=5), dict()])
def test_trainer_without_validation_trains_on_every_case(tmp_path, settings):
    ds = make_tiny_dataset(tmp_path / "ds", n=5, seed=11)
    out = tmp_path / "m.pt"
    cfg = TrainConfig(steps=2, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                      checkpoint_every=0, num_threads=1, **settings)
    train(ds, out, cfg, progress="none")
    meta = load_checkpoint(out)["metadata"]
    assert "validation" not in meta and len(meta["cases"]) == 5


def test_the_default_split_is_none_and_an_explicit_share_still_splits(tmp_path):
    """``val_fraction`` None (the default): no mode holds anything out (at the hidden set's size
    the split cost SCORE and full supervision their gain); an explicit share still splits, in
    score and full mode, and the checkpoint records the share that ran."""
    ds = make_tiny_dataset(tmp_path / "ds", n=5, seed=11)
    base = dict(steps=2, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                checkpoint_every=0, num_threads=1, val_min_cases=5, val_every=1, val_batches=2)
    assert TrainConfig().val_fraction is None
    for mode, fraction, held in (("score", None, 0), ("full", None, 0), ("score", 0.2, 1),
                                 ("full", 0.2, 1)):
        out = tmp_path / f"{mode}{fraction}.pt"
        train(ds, out, TrainConfig(mode=mode, val_fraction=fraction, **base), progress="none")
        meta = load_checkpoint(out)["metadata"]
        assert len(meta["cases"]) == 5 - held
        assert len(meta.get("validation", {}).get("cases", [])) == held
        assert meta["val_fraction"] == (0.2 if held else 0.0)



def test_validation_sees_the_same_patches_at_every_evaluation(tmp_path):
    from SCORERefineLib.case import list_cases
    from SCORERefineLib.refiner.modes.score import ScoreMode

    ds = make_tiny_dataset(tmp_path / "ds", n=2, seed=11)
    mode = ScoreMode()
    targets = [mode.prepare_case(c) for c in list_cases(ds)]
    stop = EarlyStopping()
    assert not stop.enabled and list(stop.batches()) == []
    assert stop.prepare(targets, mode, (16, 16, 16), 2, n_batches=3, seed=4)
    first, again = list(stop.batches()), list(stop.batches())
    assert len(first) == 3 and stop.report()["batches"] == 3
    for a, b in zip(first, again):
        assert torch.equal(a.image, b.image) and torch.equal(a.regions, b.regions)
    assert not all(torch.equal(first[0].image, b.image) for b in first[1:])   # not one patch
    net = torch.nn.Conv3d(len(mode.channels), 1, 1)
    assert stop.loss(net, mode, "cpu", torch.contiguous_format) == pytest.approx(
        stop.loss(net, mode, "cpu", torch.contiguous_format))
    assert not EarlyStopping().prepare(targets, mode, (16, 16, 16), 2, n_batches=0)


def test_a_model_is_reused_only_for_the_split_that_ran(tmp_path):
    """The benchmark compares the validation share as it ran: a model trained with a split is
    reused for that share only, one asked for a share on too few cases (no split made) for any
    share, one trained with none for none (None, the default, included)."""
    from dataclasses import replace

    from SCORERefineLib.benchmark import _same_split

    cfg = TrainConfig(mode="full")
    split = {"val_fraction": 0.2, "validation": {"cases": ["a"]}}
    assert _same_split(split, replace(cfg, val_fraction=0.2))
    assert not _same_split(split, cfg) and not _same_split(split, replace(cfg, val_fraction=0.1))
    asked_no_split = {"val_fraction": 0.2}
    assert _same_split(asked_no_split, cfg) and _same_split(asked_no_split, replace(cfg, val_fraction=0.3))
    none = {"val_fraction": 0.0}
    assert _same_split(none, cfg) and _same_split(none, replace(cfg, val_fraction=0.0))
    assert not _same_split(none, replace(cfg, val_fraction=0.2))
    assert not _same_split({}, cfg)
