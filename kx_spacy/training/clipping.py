"""Gradient clipping shared by the kx training loops.

Two forms, both over the *global* norm of all gradients together (Zhang, He, Sra & Jadbabaie,
"Why gradient clipping accelerates training", ICLR 2020):

- hard clipping: ``g ← g · min(1, max_norm / ‖g‖)``;
- smooth clipping: ``g ← g · γ / (‖g‖ + γ)``, which shrinks every step a little and large
  steps a lot, with no kink at the threshold.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, List, Optional

from ..errors import KxError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class ClippingError(KxError):
    """A clipping setting is invalid (negative or zero threshold, unknown mode)."""


def _grads(parameters: Iterable["torch.nn.Parameter"]) -> List["torch.Tensor"]:
    return [p.grad for p in parameters if getattr(p, "grad", None) is not None]


def global_grad_norm(parameters: Iterable["torch.nn.Parameter"]) -> float:
    """The L2 norm of all gradients taken as one vector.

    parameters (Iterable[torch.nn.Parameter]): parameters whose ``.grad`` is read.
    RETURNS (float): the global norm (0.0 when no parameter has a gradient; inf/nan propagate).
    """
    import torch

    grads = _grads(parameters)
    if not grads:
        return 0.0
    # half-precision gradients are summed in fp32; fp32 / fp64 ones in their own precision
    norms = torch.stack([g.detach().norm(2, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32)
                         for g in grads])
    return norms.double().norm(2).item()


def clip_grad_global_norm(parameters: Iterable["torch.nn.Parameter"], max_norm: float) -> float:
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    parameters (Iterable[torch.nn.Parameter]): parameters to clip.
    max_norm (float): the threshold (> 0).
    RETURNS (float): the global norm *before* clipping.
    """
    if not (max_norm > 0) or math.isinf(max_norm):
        raise ClippingError(f"max_norm must be a positive finite number, got {max_norm!r}")
    params = list(parameters)
    norm = global_grad_norm(params)
    if math.isfinite(norm) and norm > max_norm:
        _scale(params, max_norm / norm)
    return norm


def smooth_clip_grad(parameters: Iterable["torch.nn.Parameter"], gamma: float) -> float:
    """Scale all gradients in place by ``γ / (‖g‖ + γ)`` (smooth clipping, Zhang et al. 2020).

    parameters (Iterable[torch.nn.Parameter]): parameters to clip.
    gamma (float): the smoothness threshold γ (> 0): steps with ‖g‖ ≪ γ are nearly untouched,
        steps with ‖g‖ ≫ γ end with norm close to γ (always below it).
    RETURNS (float): the global norm *before* clipping.
    """
    if not (gamma > 0) or math.isinf(gamma):
        raise ClippingError(f"gamma must be a positive finite number, got {gamma!r}")
    params = list(parameters)
    norm = global_grad_norm(params)
    if math.isfinite(norm):
        _scale(params, gamma / (norm + gamma))
    return norm


def clip_grad_per_array(parameters: Iterable["torch.nn.Parameter"], max_norm: float) -> float:
    """Scale each parameter's gradient on its own to norm ≤ ``max_norm`` (thinc's ``grad_clip``).

    The per-array form that ``spacy train`` applies by default, here for comparisons: it bends the
    step's direction array by array and does not bound the step's total norm.
    RETURNS (float): the global norm *before* clipping.
    """
    import torch

    if not (max_norm > 0) or math.isinf(max_norm):
        raise ClippingError(f"max_norm must be a positive finite number, got {max_norm!r}")
    params = list(parameters)
    norm = global_grad_norm(params)
    if math.isfinite(norm):
        for g in _grads(params):
            g_norm = torch.linalg.vector_norm(g.detach(), dtype=torch.float32)
            g.detach().mul_(torch.clamp(max_norm / g_norm, max=1.0).to(g.dtype))
    return norm


CLIP_MODES = ("global_norm", "smooth", "per_array", "none")


def clip_gradients(
    parameters: Iterable["torch.nn.Parameter"], mode: Optional[str], threshold: float
) -> float:
    """Dispatch on ``mode``: "global_norm", "smooth", "per_array" or None/"none" (norm only).

    RETURNS (float): the global norm before clipping.
    """
    if mode in (None, "", "none"):
        return global_grad_norm(parameters)
    if mode == "global_norm":
        return clip_grad_global_norm(parameters, threshold)
    if mode == "smooth":
        return smooth_clip_grad(parameters, threshold)
    if mode == "per_array":
        return clip_grad_per_array(parameters, threshold)
    raise ClippingError(f"Unknown clipping mode {mode!r}: use one of {', '.join(CLIP_MODES)}")


def _scale(params: List["torch.nn.Parameter"], factor: float) -> None:
    for g in _grads(params):
        g.detach().mul_(factor)
