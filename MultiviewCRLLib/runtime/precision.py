"""One precision policy for every device: training, evaluation, registration maps and the Slicer
analysis all ask it how to run their networks (inference through :func:`inference_precision`).

- CUDA: autocast in float16 with a GradScaler (or bfloat16, which needs none), channels-last 3D.
- A CPU with native bfloat16 (AVX512-BF16 or AMX): autocast in bfloat16, channels-last 3D.
- Any other CPU: float32, said once.

Losses are always computed in float32 (the BaurLoss sums about a million voxels; InfoNCE's logits).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Channels-last 3D under CPU bfloat16: set by benchmarks/training_step.py's comparison of both layouts.
CPU_CHANNELS_LAST = True
_SAID: set[str] = set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), so autocast pays."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        print(f"notice: {message}")


@dataclass(frozen=True)
class Precision:
    """How networks run on ``device``: ``dtype`` is autocast's (None: float32), ``channels_last``
    the 3D memory layout of inputs and weights, ``scaled`` whether gradients need a GradScaler."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    @property
    def name(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.dtype)

    def autocast(self):
        """The autocast context of this policy (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """A 5-D input moved to the device in this policy's memory layout."""
        return x.to(self.device, memory_format=self.memory_format)


def precision_policy(device: torch.device, mixed: bool = True, dtype: str | None = None) -> Precision:
    """The policy for ``device``. ``mixed``: run in low precision (``--use-amp``); ``dtype``:
    "float16", "bfloat16" or "float32" as asked, or None for the device's own fast one (float16 on
    CUDA, bfloat16 on a CPU with native bf16, else float32, said once)."""
    device = torch.device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"a precision is one of {', '.join(DTYPES)}, not {dtype!r}")
    if not mixed or dtype == "float32":
        return Precision(device)
    native_bf16 = device.type == "cpu" and cpu_has_native_bf16()
    if dtype is None:
        if device.type == "cuda":
            dtype = "float16"
        elif native_bf16:
            dtype = "bfloat16"
        else:
            say_once(f"this {device.type} has no fast low precision (bfloat16 needs AVX512-BF16 or AMX): float32")
            return Precision(device)
    fast_layout = device.type == "cuda" or (native_bf16 and dtype == "bfloat16" and CPU_CHANNELS_LAST)
    return Precision(device, DTYPES[dtype], channels_last=fast_layout)


@contextlib.contextmanager
def inference_precision(module: nn.Module):
    """No gradients, and the autocast of the policy for the device ``module``'s weights are on
    (load_bundle puts them in its memory layout: without gradients too, channels-last was the
    faster layout under CPU bfloat16, ``benchmarks/training_step.py --inference``). What runs
    inside returns low-precision tensors; callers keep float32 results."""
    device = next(module.parameters()).device
    with torch.no_grad(), precision_policy(device).autocast():
        yield
