"""Device and precision policy: which device a run uses and how it autocasts.

- ``"fp32"``: no autocast.
- ``"bf16"``: bf16 autocast, on a GPU or on a CPU (it pays only on CPUs with bf16 matrix units:
  AMX, AVX512-BF16; elsewhere it runs, slower).
- ``"fp16"``: fp16 autocast plus a ``GradScaler``; GPU only (a CPU is refused with a clear error).
- ``"auto"``: bf16 on a GPU that supports it (fp32 on older GPUs), fp32 on a CPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import PrecisionError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """The device of this process.

    device (Optional[str]): "cpu", "cuda", "cuda:N", or None: the GPU of this local rank when one
        is available and ``KX_FORCE_CPU=1`` is not set, else the CPU.
    local_rank (int): this process's index on its machine (``LOCAL_RANK`` under torchrun).
    RETURNS (torch.device): the device.
    """
    if device is None:
        use_cuda = torch.cuda.is_available() and os.environ.get("KX_FORCE_CPU") != "1"
        device = "cuda" if use_cuda else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise PrecisionError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            # otherwise torch fails deep inside with "torch._C has no attribute _cuda_setDevice"
            raise PrecisionError(
                f"The config asks for device {device!r}, but torch sees no CUDA device (a CPU build of "
                "torch, or no GPU here): set the training device to null (auto) or 'cpu', e.g. "
                "--training.device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise PrecisionError(f"Device {dev} does not exist: torch sees {torch.cuda.device_count()} GPU(s)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn a requested precision into the one the run uses ("fp32", "bf16" or "fp16").

    precision (str): "auto", "fp32", "bf16" or "fp16".
    device (torch.device): the run's device.
    RETURNS (str): the resolved precision.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError(
            "precision 'fp16' needs a CUDA GPU (fp16 autocast with a gradient scaler); on a CPU use "
            "'bf16' (fast on CPUs with AMX / AVX512-BF16) or 'fp32'"
        )
    return precision


@dataclass
class Precision:
    """The autocast policy of one run.

    name (str): the resolved precision ("fp32", "bf16" or "fp16").
    device (torch.device): the run's device.
    """

    name: str
    device: torch.device

    @classmethod
    def create(cls, precision: str, device: torch.device) -> "Precision":
        return cls(resolve_precision(precision, device), device)

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype (None for fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        """A context manager that autocasts to this precision (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A fresh ``GradScaler`` for fp16, None otherwise."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)
