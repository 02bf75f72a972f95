"""Which device training and refinement will use, in words for the panel ("CUDA: NVIDIA ...", "CPU").

Imports torch lazily, so the panel can say "PyTorch is not installed" instead of failing to load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DeviceInfo:
    torch_installed: bool
    torch_version: str = ""
    cuda_devices: tuple[str, ...] = ()       # names, index = CUDA device number
    cpu_threads: int = 1

    @property
    def cuda(self) -> bool:
        return bool(self.cuda_devices)


def probe(torch_module=None) -> DeviceInfo:
    """What this Python's torch can use (``torch_module`` injectable for tests)."""
    if torch_module is None:
        try:
            import torch as torch_module  # noqa: PLC0415
        except ImportError:
            return DeviceInfo(False, cpu_threads=os.cpu_count() or 1)
    names: tuple[str, ...] = ()
    try:
        if torch_module.cuda.is_available():
            names = tuple(torch_module.cuda.get_device_name(i)
                          for i in range(torch_module.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA set-up is reported as CPU only
        names = ()
    return DeviceInfo(True, str(getattr(torch_module, "__version__", "")), names,
                      int(torch_module.get_num_threads()))


def choices(info: Optional[DeviceInfo] = None) -> list[str]:
    """Device choices for the panel: auto, cpu, then cuda:N for each GPU."""
    info = probe() if info is None else info
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(len(info.cuda_devices))]


def describe(requested: str = "auto", info: Optional[DeviceInfo] = None) -> str:
    """The device ``requested`` resolves to, in words (what the panel shows)."""
    info = probe() if info is None else info
    if not info.torch_installed:
        return ("PyTorch is not installed: install it with the PyTorch extension "
                "(the 'Install dependencies' button does this after asking).")
    req = (requested or "auto").strip().lower()
    if req in ("auto", "cuda", "gpu") or req.startswith("cuda:"):
        if info.cuda:
            index = int(req.split(":", 1)[1]) if req.startswith("cuda:") else 0
            if index >= len(info.cuda_devices):
                return (f"cuda:{index} does not exist: this computer has {len(info.cuda_devices)} "
                        f"CUDA device(s); choose auto or cpu.")
            return f"CUDA {index}: {info.cuda_devices[index]} (torch {info.torch_version})"
        if req != "auto":
            return (f"CUDA requested but not available in torch {info.torch_version}; "
                    f"choose auto or cpu.")
    return f"CPU ({info.cpu_threads} threads, torch {info.torch_version})"


def torch_constraints(folder, torch_version: str = "") -> "list[str]":
    """pip arguments that keep the installed PyTorch: ``-c <folder>/constraints.txt`` pinning it.

    Installing MONAI unconstrained lets pip replace the GPU-matched torch chosen by the PyTorch
    extension (monai 1.6 needs torch>=2.8). Returns [] when torch is not installed."""
    from pathlib import Path

    if not torch_version:
        info = probe()
        torch_version = info.torch_version if info.torch_installed else ""
    if not torch_version:
        return []
    path = Path(folder) / "constraints.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"torch=={torch_version}\n", encoding="utf-8")
    return ["-c", str(path)]
