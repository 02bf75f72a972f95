"""The one device resolver: ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"`` -> ``torch.device``.

Training (one process per GPU under torchrun) and inference both use it.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device to run on.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a ``torch.device``.
        local_rank: in a distributed run, the process's GPU: a bare ``"cuda"`` becomes
            ``cuda:<local_rank>``.

    Returns:
        The device.

    Raises:
        InputError: an unknown device name, or CUDA asked for where torch has none.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise InputError(f"unknown device {device!r}; use auto, cpu or cuda (cuda:N).") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} requested but CUDA is not available in this torch "
                             f"({torch.__version__}); use --device cpu (or auto).")
        if local_rank is not None and dev.index is None:
            dev = torch.device("cuda", int(local_rank))
    return dev
