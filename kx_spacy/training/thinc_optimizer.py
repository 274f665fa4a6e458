"""Global-norm and smooth gradient clipping inside ``spacy train`` (a thinc optimizer).

thinc's optimizers clip every parameter array on its own (``grad_clip = 1.0`` bounds each
array's norm), so a pipeline of hundreds of arrays can take a step whose total norm is many
times the threshold, and the direction of the step is bent array by array. The torch world
clips the *global* norm of all gradients of the step together (Zhang et al., ICLR 2020, for
why it helps). That needs every gradient of the step before any weight moves, but thinc calls
the optimizer one array at a time, component by component. So this optimizer *defers*: each
call stores a copy of the gradient (and zeroes the model's, as thinc does) and the step is
applied when the step is complete — at ``step_schedules()``, which spaCy's training loop calls
once after every component's ``finish_update``. Weights are updated in place, so thinc arrays
and PyTorch-wrapped weights (whose numpy / cupy views share memory with the torch tensors)
both see the update.

Custom loops that call ``nlp.update(examples, sgd=optimizer)`` must call
``optimizer.step_schedules()`` after each update, as ``spacy train`` does; if a parameter comes
back before that, the pending step is applied first and a warning says so once.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

from thinc.api import Optimizer, registry
from thinc.optimizers import ADAM_DEFAULTS

from ..errors import KxError

CLIP_MODES = ("global_norm", "smooth", "per_array", "none")


class OptimizerConfigError(KxError):
    """An optimizer setting is invalid."""


class GlobalClipOptimizer(Optimizer):
    """thinc's Optimizer (Adam / SGD) with the gradient clipped over the whole step.

    clip_mode (str): "global_norm" (g ← g·min(1, τ/‖g‖)), "smooth" (g ← g·τ/(‖g‖ + τ)),
        "per_array" (thinc's own behaviour, each array clipped to τ, applied at once) or "none".
    clip_threshold (float): τ (> 0 unless clip_mode is "none").
    Other arguments as for ``thinc.api.Optimizer``.

    After each step, ``last_grad_norm`` holds the global norm before clipping (global modes)
    and ``skipped_steps`` counts steps dropped because that norm was NaN or infinite.
    """

    __slots__ = ["clip_mode", "clip_threshold", "last_grad_norm", "skipped_steps", "_pending", "_warned"]

    def __init__(self, learn_rate, *, clip_mode: str = "global_norm", clip_threshold: float = 1.0, **kwargs):
        if clip_mode not in CLIP_MODES:
            raise OptimizerConfigError(f"clip_mode {clip_mode!r}: use one of {', '.join(CLIP_MODES)}")
        if clip_mode != "none" and not (isinstance(clip_threshold, (int, float)) and 0 < clip_threshold < math.inf):
            raise OptimizerConfigError(f"clip_threshold must be a positive finite number, got {clip_threshold!r}")
        # thinc's own per-array clipping is only used in "per_array" mode
        grad_clip = float(clip_threshold) if clip_mode == "per_array" else 0.0
        super().__init__(learn_rate, grad_clip=grad_clip, **kwargs)
        self.clip_mode = clip_mode
        self.clip_threshold = float(clip_threshold)
        self.last_grad_norm: Optional[float] = None
        self.skipped_steps = 0
        self._pending: Dict[Tuple[int, str], tuple] = {}
        self._warned = False

    @property
    def defers(self) -> bool:
        return self.clip_mode in ("global_norm", "smooth")

    def __call__(self, key, weights, gradient, *, lr_scale: float = 1.0):
        if not self.defers or len(gradient) < 1:
            return super().__call__(key, weights, gradient, lr_scale=lr_scale)
        if key in self._pending:
            if not self._warned:
                warnings.warn(
                    "kx_spacy optimizer: a parameter was updated twice without step_schedules() "
                    "in between; applying the pending step now. Call optimizer.step_schedules() "
                    "after each update (spacy train does).", stacklevel=2,
                )
                self._warned = True
            self.apply_pending()
        self._pending[key] = (weights, gradient.copy(), lr_scale)
        gradient *= 0  # thinc's contract: the model's gradient is consumed by the call
        return weights, gradient

    def apply_pending(self) -> Optional[float]:
        """Clip the stored gradients by their global norm and update the weights in place.

        RETURNS (Optional[float]): the global norm before clipping (None when nothing was pending).
        """
        if not self._pending:
            return None
        pending, self._pending = self._pending, {}
        total = 0.0
        for _, grad, _ in pending.values():
            flat = grad.ravel()
            total += (flat @ flat).item()
        norm = math.sqrt(total) if math.isfinite(total) else math.nan
        self.last_grad_norm = norm
        if not math.isfinite(norm):
            self.skipped_steps += 1
            return norm
        if self.clip_mode == "global_norm":
            factor = min(1.0, self.clip_threshold / norm) if norm > 0 else 1.0
        else:
            factor = self.clip_threshold / (norm + self.clip_threshold)
        for key, (weights, grad, lr_scale) in pending.items():
            if factor != 1.0:
                grad *= factor
            new_weights, _ = super().__call__(key, weights, grad, lr_scale=lr_scale)
            if new_weights is not weights:  # keep the model's array (and torch views) current
                weights[...] = new_weights
        return norm

    def step_schedules(self) -> None:
        # the step is complete once every component has called the optimizer: apply it with
        # this step's learning rate, then advance the schedules
        self.apply_pending()
        super().step_schedules()


@registry.optimizers("kx_spacy.Adam.v1")
def make_adam(
    learn_rate=ADAM_DEFAULTS["learn_rate"],
    *,
    L2=ADAM_DEFAULTS["L2"],
    beta1=ADAM_DEFAULTS["beta1"],
    beta2=ADAM_DEFAULTS["beta2"],
    eps=ADAM_DEFAULTS["eps"],
    L2_is_weight_decay: bool = True,
    use_averages: bool = True,
    clip_mode: str = "global_norm",
    clip_threshold: float = 1.0,
) -> GlobalClipOptimizer:
    """thinc's Adam with the step's gradient clipped over all parameters together.

    learn_rate, L2, beta1, beta2, eps, L2_is_weight_decay, use_averages: as ``Adam.v1``
        (numbers or schedules).
    clip_mode (str): "global_norm" (default), "smooth", "per_array" (thinc's behaviour) or "none".
    clip_threshold (float): the threshold τ (thinc's ``grad_clip`` in "per_array" mode).
    RETURNS (GlobalClipOptimizer): the optimizer.
    """
    return GlobalClipOptimizer(
        learn_rate, L2=L2, beta1=beta1, beta2=beta2, eps=eps, L2_is_weight_decay=L2_is_weight_decay,
        use_averages=use_averages, clip_mode=clip_mode, clip_threshold=clip_threshold,
    )


@registry.optimizers("kx_spacy.SGD.v1")
def make_sgd(
    learn_rate,
    *,
    L2=0.0,
    L2_is_weight_decay: bool = True,
    use_averages: bool = True,
    clip_mode: str = "global_norm",
    clip_threshold: float = 1.0,
) -> GlobalClipOptimizer:
    """Plain SGD with global-norm / smooth / per-array clipping (arguments as make_adam)."""
    return GlobalClipOptimizer(
        learn_rate, L2=L2, beta1=0.0, beta2=0.0, L2_is_weight_decay=L2_is_weight_decay,
        use_averages=use_averages, clip_mode=clip_mode, clip_threshold=clip_threshold,
    )
