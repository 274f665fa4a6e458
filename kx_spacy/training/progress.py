"""What a task can read of the run while it trains (:class:`TrainProgress`) and what the
engine hands a task that owns its update (:class:`StepContext`, for ``task.step``).

A task that defines ``set_progress(progress)`` gets the run's :class:`TrainProgress` once per
run, before the first batch (after a resume has restored the step count and the time used),
and can read it at any time, e.g. for a KL warm-up over the first 30 % of the budget::

    def set_progress(self, progress):
        self.progress = progress
    def loss(self, module, batch):
        beta = min(1.0, self.progress.fraction / 0.3)
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, List, Optional, Sequence

import torch

from .errors import TrainingError

#: the clocks a time budget can use
CLOCKS = {"wall": time.time, "process": time.process_time}


class TrainProgress:
    """The run's position: read-only for the task (the engine updates it).

    max_steps (Optional[int]): the step budget (None: a pure time budget).
    max_time_s (Optional[float]): the time budget in seconds (None: none).
    clock (str): "wall" (wall-clock seconds) or "process" (CPU seconds of this process,
        ``time.process_time``: on a shared machine the compute the run got, whatever the load;
        with one torch thread, what a quiet machine's wall clock would show).

    Attributes read by tasks: ``step`` (optimizer steps done, all runs of a resumed training),
    ``epoch`` (the epoch of the last batch), ``items_seen`` (over all ranks), ``elapsed_s``
    (training time so far, earlier runs included: the clock the time budget uses, live while the
    run goes on, frozen when it ends), ``step_fraction`` / ``time_fraction`` (0 … 1; 0 without
    that budget) and ``fraction`` (the larger one: how much of the run is used).
    """

    def __init__(self, max_steps: Optional[int], max_time_s: Optional[float], clock: str = "wall"):
        if clock not in CLOCKS:
            raise TrainingError(f"clock {clock!r}: use one of {', '.join(CLOCKS)}")
        self.clock = clock
        self._now = CLOCKS[clock]
        self.max_steps = int(max_steps) if max_steps else None
        self.max_time_s = float(max_time_s) if max_time_s else None
        self.step, self.epoch, self.items_seen = 0, 0, 0
        self._before, self._start = 0.0, None  # seconds of earlier runs; wall clock of this one

    # -- the engine's side
    def start(self, step: int = 0, elapsed_before: float = 0.0, items_seen: int = 0, epoch: int = 0) -> None:
        """Start the clock (a resumed run passes what the checkpoint holds)."""
        self.step, self.items_seen, self.epoch = int(step), int(items_seen), int(epoch)
        self._before, self._start = float(elapsed_before), self._now()

    def stop(self) -> None:
        """Freeze the clock at the end of the run."""
        if self._start is not None:
            self._before += self._now() - self._start
            self._start = None

    # -- what tasks read
    @property
    def elapsed_s(self) -> float:
        return self._before + (self._now() - self._start if self._start is not None else 0.0)

    @property
    def step_fraction(self) -> float:
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0

    @property
    def time_fraction(self) -> float:
        return min(1.0, self.elapsed_s / self.max_time_s) if self.max_time_s else 0.0

    @property
    def fraction(self) -> float:
        return max(self.step_fraction, self.time_fraction)

    def __repr__(self) -> str:
        return (f"TrainProgress(step={self.step}, elapsed_s={self.elapsed_s:.1f}, "
                f"fraction={self.fraction:.3f})")


class StepContext:
    """What ``task.step(module, batch, ctx)`` gets: the means to fill the gradients the engine
    then applies (see the package docstring for the contract).

    optimizer: the run's optimizer (read its learning rate; do not step it: the engine does).
    progress (TrainProgress): the run's position. device (torch.device). rank, world (int).
    """

    def __init__(self, trainer, params: Sequence[torch.nn.Parameter]):
        self._trainer = trainer
        self._params = list(params)
        self.optimizer = trainer.optimizer
        self.progress: TrainProgress = trainer.progress
        self.device: torch.device = trainer.device
        self.rank, self.world = trainer.dist.rank, trainer.dist.world

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast (the hook is not called under it: use it where you want it)."""
        return self._trainer.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through the fp16 loss scaler when there is one (gradients add up)."""
        scaler = self._trainer.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def set_gradients(self, params: Sequence[torch.nn.Parameter], grads: Sequence[Optional[torch.Tensor]]) -> None:
        """Write ``grads`` (unscaled, e.g. MGS's −d) into ``params``' ``.grad`` (replacing them;
        multiplied by the fp16 loss scale when there is one, which the engine divides out)."""
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise TrainingError(f"set_gradients: {len(params)} parameters but {len(grads)} gradients")
        scaler = self._trainer.scaler
        scale = scaler.get_scale() if scaler is not None else 1.0
        for p, g in zip(params, grads):
            if g is None:
                p.grad = None
                continue
            if tuple(g.shape) != tuple(p.shape):
                raise TrainingError(f"set_gradients: gradient of shape {tuple(g.shape)} for a parameter "
                                    f"of shape {tuple(p.shape)}")
            g = g.detach().to(device=p.device, dtype=p.dtype)
            p.grad = g * scale if scale != 1.0 else g.clone()

    @property
    def parameters(self) -> List[torch.nn.Parameter]:
        """The trainable parameters (those the engine clips and all-reduces)."""
        return list(self._params)
