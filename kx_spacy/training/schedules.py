"""Learning-rate schedules: linear warm-up × a decay over the run, from transformers' formulas.

:class:`WarmupDecay` is a torch ``LRScheduler`` whose factor at optimizer step ``s`` is

    warm-up(s + 1) × decay(progress · max_steps)

with both factors taken from ``transformers.get_scheduler`` ("constant_with_warmup" for the
warm-up, "polynomial" (power 1: linear), "cosine_with_min_lr" or "constant" for the decay), and
``progress = max(s / max_steps, time used / time budget)``: a run with a time budget decays by
whichever of its two budgets runs out first. The engine tells the schedule the time fraction
through :meth:`WarmupDecay.set_time_fraction` before every ``step()``. With ``max_steps=None``
(a pure time budget) the decay follows the time fraction alone (the transformers formula is
evaluated on a grid of ``TIME_RESOLUTION`` virtual steps); the warm-up still counts steps.

Any other torch / transformers scheduler works with the engine too (stepped once per optimizer
step), e.g. ``lambda opt: transformers.get_scheduler("cosine", opt, 100, 10_000)``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .errors import TrainingError

DECAYS = ("linear", "cosine", "constant")
#: virtual steps of a pure time budget's decay (progress = time fraction · TIME_RESOLUTION)
TIME_RESOLUTION = 1_000_000


def _hf_factor(name: str, num_warmup_steps: int, num_training_steps: int, **kwargs) -> Callable[[float], float]:
    """The multiplier function of a transformers schedule (built on a throw-away optimizer)."""
    from transformers import get_scheduler

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = get_scheduler(name, dummy, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
                          scheduler_specific_kwargs=kwargs or None)
    return sched.lr_lambdas[0]


class WarmupDecay(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over ``warmup_steps`` optimizer steps times a decay to ``min_lr_ratio``.

    optimizer (torch.optim.Optimizer): the optimizer (its learning rates are the peaks).
    decay (str): "linear", "cosine" or "constant".
    warmup_steps (int): length of the warm-up (0: none); step ``s`` gets ``min(1, (s+1)/warmup)``.
    max_steps (Optional[int]): the step budget (progress 1 at ``max_steps``); None: decay by the
        time fraction only (a run with ``max_time_minutes`` and no step budget).
    min_lr_ratio (float): the decay's final multiplier.
    """

    def __init__(self, optimizer, *, decay: str = "linear", warmup_steps: int = 0, max_steps: Optional[int],
                 min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if decay not in DECAYS:
            raise TrainingError(f"Unknown decay {decay!r}: use one of {', '.join(DECAYS)}")
        if (max_steps is not None and max_steps <= 0) or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise TrainingError("need max_steps > 0 (or None), warmup_steps ≥ 0 and 0 ≤ min_lr_ratio ≤ 1")
        self.time_only = max_steps is None
        max_steps = TIME_RESOLUTION if max_steps is None else max_steps
        self.decay, self.warmup_steps, self.max_steps = decay, int(warmup_steps), int(max_steps)
        self.min_lr_ratio, self.time_fraction = float(min_lr_ratio), 0.0
        self._build()
        super().__init__(optimizer, last_epoch)

    def _build(self) -> None:
        self._warm = _hf_factor("constant_with_warmup", self.warmup_steps, self.max_steps)
        if self.decay == "constant" or self.min_lr_ratio >= 1.0:
            self._decay = _hf_factor("constant", 0, self.max_steps)
        elif self.decay == "linear":
            self._decay = _hf_factor("polynomial", 0, self.max_steps, lr_end=self.min_lr_ratio, power=1.0)
        else:
            self._decay = _hf_factor("cosine_with_min_lr", 0, self.max_steps, min_lr_rate=self.min_lr_ratio)

    def set_time_fraction(self, fraction: float) -> None:
        """Tell the schedule how much of the time budget is used (0 … 1) before ``step()``."""
        self.time_fraction = min(max(float(fraction), 0.0), 1.0)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
        x: float = self.time_fraction * self.max_steps
        if not getattr(self, "time_only", False):
            x = max(x, step)
        return self._warm(step + 1) * self._decay(min(x, self.max_steps))

    def get_lr(self) -> List[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def state_dict(self) -> Dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_warm", "_decay")}

    def load_state_dict(self, state: Dict) -> None:
        self.__dict__.update(state)
        self._build()
