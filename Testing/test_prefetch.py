"""The background batch prefetcher draws exactly the in-process sequence of batches."""

from __future__ import annotations

import pytest
import torch

from SCORERefineLib.case import list_cases
from SCORERefineLib.refiner.modes import ScoreMode
from SCORERefineLib.refiner.sampling import PatchSampler, Prefetcher

from test_trainer import make_tiny_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    ds = make_tiny_dataset(tmp_path_factory.mktemp("pf") / "ds", n=2, seed=2)
    mode = ScoreMode()
    return mode, [mode.prepare_case(c) for c in list_cases(ds)]


def test_prefetched_batches_equal_in_process_ones(prepared):
    mode, targets = prepared
    direct = PatchSampler(targets, mode, (16, 16, 16), seed=5)
    ahead = PatchSampler(targets, mode, (16, 16, 16), seed=5)
    with Prefetcher(ahead, 2, depth=2) as pf:
        for _ in range(4):
            a, b = direct.sample(2), pf.next()
            assert torch.equal(a.image, b.image) and torch.equal(a.regions, b.regions)
            assert a.case_ids == b.case_ids
    assert pf._thread is None


def test_prefetcher_hands_on_the_samplers_error(prepared):
    mode, targets = prepared

    class Broken(PatchSampler):
        def sample(self, batch_size):
            raise RuntimeError("sampler broke")

    with Prefetcher(Broken(targets, mode, (16, 16, 16), seed=1), 1, depth=2) as pf:
        with pytest.raises(RuntimeError, match="sampler broke"):
            pf.next()
