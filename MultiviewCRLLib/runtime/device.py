"""Which torch device runs a model: one rule for the trainer, the evaluator and the Slicer module."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class DeviceError(ValueError):
    """A device that this machine does not have; each front end words the remedy."""


def select_device(name: str) -> torch.device:
    """``auto``: a GPU if torch has one, else the CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Under ``torchrun`` (a process group is up), ``auto`` and ``cuda`` mean this rank's own GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}': CUDA is not available on this machine")
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"device '{name}' is not a device name (auto, cpu, cuda or cuda:N)") from err
