"""Two-process DistributedDataParallel training on CPU (gloo): same weights on both ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, dataset: str, out: str, dump: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from SCORERefineLib.refiner.trainer import TrainConfig, Trainer

    cfg = TrainConfig(steps=4, patch_size=(16, 16, 16), batch_size=1, network="tiny", device="cpu",
                      checkpoint_every=2, num_threads=1)
    trainer = Trainer(dataset, out, cfg, progress="none")
    trainer.run()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
               Path(dump) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    from test_trainer import make_tiny_dataset

    ds = make_tiny_dataset(tmp_path / "ds")
    out = tmp_path / "m.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(ds), str(out), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    from SCORERefineLib.refiner.checkpoint import load_refiner
    model, meta = load_refiner(out)
    assert meta["world_size"] == 2 and meta["step"] == 4 and meta["complete"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k
    # the two ranks drew different patches: the weights moved (the head was zero)
    assert float(w0["head.weight"].abs().sum()) > 0
