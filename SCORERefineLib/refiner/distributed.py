"""Multi-process training with torchrun (DistributedDataParallel).

``torchrun --nproc-per-node N -m SCORERefineLib.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`detect` reads them. The process group uses NCCL on CUDA and Gloo on CPU.
Each rank samples its own patches (seed + rank), gradients are averaged by DDP, so all ranks keep
identical weights; only rank 0 writes checkpoints and progress. Cancel and non-finite-loss flags
are all-reduced every step so every rank stops at the same step (no rank is left waiting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); single process if unset."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if ws <= 1:
        return DistEnv()
    return DistEnv(rank=int(os.environ.get("RANK", "0")), world_size=ws,
                   local_rank=int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))))


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, Gloo otherwise) if not joined yet."""
    if not env.enabled or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    if device.type == "cuda":
        return DDP(model, device_ids=[device.index], output_device=device.index)
    return DDP(model)


def any_flag(flags: list[bool], env: DistEnv, device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags across ranks (identity on one process)."""
    if not env.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def broadcast_model(model: torch.nn.Module, env: DistEnv) -> None:
    """Make every rank start from rank 0's weights (DDP also does this at wrap time)."""
    if env.enabled:
        for p in model.state_dict().values():
            dist.broadcast(p, 0)


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
