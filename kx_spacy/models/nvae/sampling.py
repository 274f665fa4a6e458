"""Sampling with temperature, and batch-norm re-adjustment guarded against NaN images.

At temperature t < 1 the decoder sees latents of smaller spread than in training, so the BN
running statistics no longer match; NVAE re-estimates them by running the sampler in train
mode. The reference's ``--readjust_bn`` can return NaN images (half-precision statistics of
near-constant channels, 1/sqrt(var + eps) blowing up). Here the statistics are re-estimated in
float32 as an exact cumulative average (momentum None) from fresh statistics, checked, and
restored when they, or a trial sample, are not finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn

from .config import NVAEError
from .layers import bn_layers


@dataclass
class SampleResult:
    """Images and how they were made.

    images (torch.Tensor): ``[N, C, H, W]`` in [0, 1] (CPU).
    temperature (float): the temperature used.
    readjusted (bool): BN statistics were re-estimated at this temperature and kept.
    fallback (bool): re-adjustment was asked for but gave non-finite values, so the
        training statistics were kept.
    """

    images: torch.Tensor
    temperature: float
    readjusted: bool
    fallback: bool


def _save_bn(layers: List[nn.Module]) -> List[Dict[str, object]]:
    return [
        {"state": {k: v.clone() for k, v in m.state_dict().items()}, "momentum": m.momentum}
        for m in layers
    ]


def _restore_bn(layers: List[nn.Module], saved: List[Dict[str, object]]) -> None:
    for m, s in zip(layers, saved):
        m.load_state_dict(s["state"])
        m.momentum = s["momentum"]


def _bn_finite(layers: List[nn.Module]) -> bool:
    for m in layers:
        if m.running_var is None:
            continue
        if not (torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()):
            return False
        if (m.running_var < 0).any():
            return False
    return True


@torch.no_grad()
def readjust_batchnorm(
    model: nn.Module, temperature: float, num_samples: int = 100, iterations: int = 20
) -> bool:
    """Re-estimate every BN layer's running statistics from samples at ``temperature``.

    model (nn.Module): has ``sample(n, temperature)``; left in eval mode.
    temperature (float): > 0.
    num_samples (int): samples per pass (BN batch size; ≥ 2).
    iterations (int): passes averaged (≥ 1).
    RETURNS (bool): True if the new statistics were kept, False if they (or a trial sample)
        were not finite and the previous ones were restored.
    """
    if not temperature > 0:
        raise NVAEError(f"temperature must be > 0, got {temperature!r}")
    if num_samples < 2 or iterations < 1:
        raise NVAEError("BN re-adjustment needs num_samples ≥ 2 and iterations ≥ 1")
    layers = bn_layers(model)
    saved = _save_bn(layers)
    device_type = next(model.parameters()).device.type
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
        model.train()
        with torch.autocast(device_type=device_type, enabled=False):
            for _ in range(iterations):
                model.sample(num_samples, temperature)
        model.eval()
        ok = _bn_finite(layers)
        if ok:
            with torch.autocast(device_type=device_type, enabled=False):
                ok = bool(torch.isfinite(model.sample(min(num_samples, 16), temperature)).all())
    except Exception:
        _restore_bn(layers, saved)
        model.eval()
        raise
    if not ok:
        _restore_bn(layers, saved)
        return False
    for m, s in zip(layers, saved):
        m.momentum = s["momentum"]
    return True


@torch.no_grad()
def sample_images(
    model: nn.Module,
    num_samples: int,
    temperature: float = 1.0,
    readjust_bn: bool = False,
    readjust_samples: int = 100,
    readjust_iterations: int = 20,
) -> SampleResult:
    """Sample images at a temperature, optionally re-adjusting BN first (its statistics are
    put back afterwards, so the model is unchanged).

    RETURNS (SampleResult): the images (finite; NVAEError if the model gives NaN anyway).
    """
    if not temperature > 0:
        raise NVAEError(f"temperature must be > 0, got {temperature!r}")
    was_training = model.training
    layers = bn_layers(model)
    saved = _save_bn(layers)
    readjusted = fallback = False
    try:
        if readjust_bn:
            readjusted = readjust_batchnorm(model, temperature, readjust_samples, readjust_iterations)
            fallback = not readjusted
        model.eval()
        images = model.sample(num_samples, temperature).float().cpu()
    finally:
        _restore_bn(layers, saved)
        model.train(was_training)
    if not torch.isfinite(images).all():
        raise NVAEError(f"the model produced non-finite images at temperature {temperature}")
    return SampleResult(images=images, temperature=float(temperature), readjusted=readjusted, fallback=fallback)
