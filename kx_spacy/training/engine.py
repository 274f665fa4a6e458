"""The training engine: one loop for every kx torch model (see the package docstring)."""
from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from .checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
from .clipping import CLIP_MODES, clip_gradients
from .distributed import DistContext
from .errors import NoCheckpointError, NonFiniteLossError, TrainingError
from .metrics_log import METRICS_FILE, MetricsLog
from .precision import Precision, resolve_device
from .progress import StepContext, TrainProgress

#: seconds between progress-bar postfix refreshes (loss EMA, items/s, the task's values)
BAR_REFRESH_S = 5.0


@dataclass
class TrainingConfig:
    """The settings of one engine run (all optional; every step/eval/checkpoint count is in optimizer steps).

    max_steps (Optional[int]): stop after this many optimizer steps (None: no step budget, a pure
        time budget; then ``max_time_minutes`` is required).
    max_time_minutes (Optional[float]): also stop when this much training time is used (resumed
        runs count the time of earlier runs).
    clock (str): what the time budget counts: "wall" (wall-clock seconds) or "process" (this
        process's CPU seconds: on a shared, loaded machine the compute the run really got;
        with num_threads=1 it is what a quiet machine's wall clock would show).
    grad_accum (int): micro-batches per optimizer step (their mean loss is minimised).
    clip_mode (str): "global_norm", "smooth" (γ/(‖g‖+γ)), "per_array" (thinc's, for comparisons) or
        "none"; see ``clipping.py``.
    clip_threshold (float): the clipping threshold (max norm / γ).
    precision (str): "auto", "fp32", "bf16" or "fp16"; see ``precision.py``.
    eval_every (int): call ``task.evaluate`` every this many steps and at the end (0: never).
    checkpoint_every (int): write a checkpoint every this many steps and at the end (0: never).
    max_bad_steps (int): stop with :class:`NonFiniteLossError` after this many skipped
        (non-finite) steps in a row.
    seed (Optional[int]): seed torch / random / numpy at the start of a fresh run (None: leave
        the random state as the task left it; a resumed run restores the saved state).
    num_threads (Optional[int]): torch threads on a CPU (None: torch's default).
    progress (bool): show a progress bar (rank 0).
    device (Optional[str]): "cpu" / "cuda" / None (the local GPU if there is one; ``KX_FORCE_CPU=1`` forces the CPU).
    desc (str): the progress bar's label.
    find_unused_parameters (bool): passed to ``DistributedDataParallel``.
    """

    max_steps: Optional[int] = 1000
    max_time_minutes: Optional[float] = None
    grad_accum: int = 1
    clip_mode: str = "global_norm"
    clip_threshold: float = 1.0
    precision: str = "auto"
    eval_every: int = 0
    checkpoint_every: int = 0
    max_bad_steps: int = 10
    seed: Optional[int] = 0
    num_threads: Optional[int] = None
    progress: bool = True
    device: Optional[str] = None
    desc: str = "train"
    find_unused_parameters: bool = False
    clock: str = "wall"

    def validate(self) -> None:
        if self.max_steps is None and not self.max_time_minutes:
            raise TrainingError("TrainingConfig.max_steps=None (a pure time budget) needs max_time_minutes")
        for key in ("max_steps", "grad_accum", "max_bad_steps"):
            value = getattr(self, key)
            if key == "max_steps" and value is None:
                continue
            if not isinstance(value, int) or value <= 0:
                raise TrainingError(f"TrainingConfig.{key} must be a positive integer, got {value!r}")
        for key in ("eval_every", "checkpoint_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise TrainingError(f"TrainingConfig.{key} must be an integer ≥ 0, got {getattr(self, key)!r}")
        if self.clock not in ("wall", "process"):
            raise TrainingError(f"TrainingConfig.clock {self.clock!r}: use wall or process")
        if self.clip_mode not in CLIP_MODES:
            raise TrainingError(f"TrainingConfig.clip_mode {self.clip_mode!r}: use one of {', '.join(CLIP_MODES)}")
        if self.max_time_minutes is not None and not self.max_time_minutes > 0:
            raise TrainingError(f"TrainingConfig.max_time_minutes must be > 0 or None, got {self.max_time_minutes!r}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` returns.

    steps (int): optimizer steps done (all runs of a resumed training together).
    epoch (int): the epoch the run ended in (rank 0). items_seen (int): items over all ranks.
    elapsed_s (float): training time (all runs). bad_steps (int): steps skipped as non-finite.
    stopped_by (str): "max_steps" or "max_time". history (List[Dict]): the evaluations.
    loss_ema (Optional[float]): the smoothed training loss at the end.
    device (str), precision (str), world_size (int): how it ran.
    """

    steps: int
    epoch: int
    items_seen: int
    elapsed_s: float
    bad_steps: int
    stopped_by: str
    history: List[Dict[str, Any]] = field(default_factory=list)
    loss_ema: Optional[float] = None
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _rng_state(device: torch.device) -> Dict[str, Any]:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class Trainer:
    """Train ``task.module`` on ``task.batches(...)`` by minimising ``task.loss(...)``.

    task: the duck-typed task (see the package docstring).
    config (TrainingConfig): the run's settings.
    output_dir (Union[str, Path]): where ``checkpoint/`` and ``metrics.jsonl`` go.
    optimizer: a ``torch.optim.Optimizer`` over the module's parameters, or a factory
        ``f(module) -> Optimizer`` called after the module is on its device (preferred).
    scheduler: None, a torch LR scheduler, or a factory ``f(optimizer) -> scheduler``; stepped once
        per optimizer step (a :class:`~.schedules.WarmupDecay` also gets the time fraction).
    identity (Optional[Dict]): what a resumed run must match (JSON-able; describe files with
        :func:`~.checkpoint.file_identity`).
    dist (Optional[DistContext]): the distributed context, if the caller made one already.
    """

    def __init__(self, task, config: TrainingConfig, *, output_dir: Union[str, Path],
                 optimizer: Union["torch.optim.Optimizer", Callable], scheduler: Any = None,
                 identity: Optional[Dict] = None, dist: Optional[DistContext] = None):
        config.validate()
        self.task, self.config = task, config
        self.output_dir = Path(output_dir)
        self._optimizer, self._scheduler = optimizer, scheduler
        self.identity = dict(identity or {})
        self.dist = dist or DistContext()
        self.device: Optional[torch.device] = None
        self.precision: Optional[Precision] = None
        self.module: Optional[torch.nn.Module] = None
        self.optimizer = self.scheduler = self.scaler = None
        self.progress: Optional[TrainProgress] = None

    # -- public helpers ------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        """The metrics log of this run."""
        return self.output_dir / METRICS_FILE

    def evaluate(self) -> Dict[str, float]:
        """``task.evaluate(module)`` in eval mode, without gradients, under the run's autocast."""
        if not hasattr(self.task, "evaluate"):
            return {}
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                return dict(self.task.evaluate(self.module))
        finally:
            self.module.train(was)

    # -- the run -------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        """Train until a budget runs out; RETURNS the :class:`TrainResult` (on every rank).

        resume (bool): continue from the checkpoint in ``output_dir`` (its identity must match);
            False starts afresh and deletes an old checkpoint there.
        """
        cfg = self.config
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.precision = Precision.create(cfg.precision, self.device)
        if self.device.type == "cpu" and cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        caller_owns = self.dist.owns_group  # a group the caller set up outlives this run
        self.dist.init(self.device)
        try:
            return self._run(resume)
        finally:
            if not caller_owns:
                self.dist.close()

    def _setup(self, resume: bool) -> Optional[Dict]:
        task, dist = self.task, self.dist
        self.module = task.module.to(self.device)
        opt = self._optimizer
        self.optimizer = opt if isinstance(opt, torch.optim.Optimizer) else opt(self.module)
        sch = self._scheduler
        if sch is not None and not hasattr(sch, "step"):
            sch = sch(self.optimizer)
        self.scheduler = sch
        self.scaler = self.precision.grad_scaler()
        state, error = None, None
        if resume:
            if dist.is_main:
                try:
                    state = load_checkpoint(self.output_dir, self.identity)
                    if state is None:
                        raise NoCheckpointError(f"resume: no complete checkpoint in {self.output_dir}")
                except TrainingError as err:
                    error = err
            error = dist.broadcast_object(error)  # every rank stops with rank 0's error
            if error is not None:
                raise error
            if not dist.is_main:
                state = load_checkpoint(self.output_dir)
        elif dist.is_main:
            remove_checkpoint(self.output_dir)
        dist.barrier()
        return state

    def _stream(self, epoch: int, skip: int) -> Iterator[Tuple[int, int, Any]]:
        """(epoch, batches consumed in that epoch, batch) for ever; ``skip`` batches of ``epoch`` skipped."""
        rank, world = self.dist.rank, self.dist.world
        while True:
            it = iter(self.task.batches(epoch, rank, world))
            done = sum(1 for _ in itertools.islice(it, skip)) if skip else 0
            got = False
            for batch in it:
                got = True
                done += 1
                yield epoch, done, batch
            if not got and skip == 0:
                raise TrainingError(f"task.batches(epoch={epoch}, rank={rank}, world={world}) yielded no batch")
            epoch, skip = epoch + 1, 0

    def _save(self, step, position, items_seen, elapsed, history, bad_total, loss_ema) -> None:
        rng = self.dist.gather_objects(_rng_state(self.device))  # every rank's, in rank order
        positions = self.dist.gather_objects(position)
        tasks = self.dist.gather_objects(self.task.state_dict() if hasattr(self.task, "state_dict") else None)
        if self.dist.is_main:
            state = {
                "module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "task": tasks,
                "step": step, "positions": positions, "rng": rng, "items_seen": items_seen,
                "elapsed": elapsed, "history": history, "bad_steps": bad_total, "loss_ema": loss_ema,
                "world_size": self.dist.world, "config": asdict(self.config),
            }
            save_checkpoint(self.output_dir, state, self.identity)
        self.dist.barrier()

    def _run(self, resume: bool) -> TrainResult:
        from tqdm import tqdm

        cfg, task, dist = self.config, self.task, self.dist
        state = self._setup(resume)
        step, items_seen, elapsed_before, bad_total, loss_ema = 0, 0, 0.0, 0, None
        history: List[Dict[str, Any]] = []
        position = (0, 0)
        if state is not None:
            self.module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
            same_world = state["world_size"] == dist.world
            mine = dist.rank if same_world else 0
            if hasattr(task, "load_state_dict") and state["task"][mine] is not None:
                task.load_state_dict(state["task"][mine])
            _set_rng_state(state["rng"][mine], self.device)
            position = tuple(state["positions"][mine])
            step, items_seen, elapsed_before = state["step"], state["items_seen"], state["elapsed"]
            history, bad_total, loss_ema = state["history"], state["bad_steps"], state["loss_ema"]
        elif cfg.seed is not None:
            _seed_all(cfg.seed + dist.rank)
        has_step = hasattr(task, "step")
        if has_step and cfg.grad_accum != 1:
            raise TrainingError("a task with its own step() takes one batch per optimizer step: "
                                f"use grad_accum=1 (got {cfg.grad_accum}), or accumulate inside task.step")
        if has_step:  # the task's gradients are averaged over the ranks after task.step (no DDP wrapper)
            dist.broadcast_module(self.module)
            train_module = self.module
        else:
            train_module = dist.wrap(self.module, find_unused_parameters=cfg.find_unused_parameters)
        log = MetricsLog(self.metrics_path, enabled=dist.is_main).open(append=state is not None, keep_until_step=step)
        max_time = float(cfg.max_time_minutes) * 60.0 if cfg.max_time_minutes else None
        bar = tqdm(total=None if max_time else cfg.max_steps, initial=step, unit="step", desc=cfg.desc,
                   disable=not (cfg.progress and dist.is_main), dynamic_ncols=True, mininterval=2.0)
        params = [p for p in self.module.parameters() if p.requires_grad]
        stream = self._stream(*position)
        accum, consecutive = cfg.grad_accum, 0
        has_items = hasattr(task, "items")
        self.progress = TrainProgress(cfg.max_steps, max_time, cfg.clock)
        self.progress.start(step, elapsed_before, items_seen, position[0])
        if hasattr(task, "set_progress"):
            task.set_progress(self.progress)
        step_ctx = StepContext(self, params) if has_step else None
        items_key = f"{getattr(task, 'items_unit', 'items')}/s"
        start = last = time.time()
        win_items, win_start, win_logs, win_n = 0.0, start, {}, 0
        stopped_by = "max_steps" if cfg.max_steps is not None and step >= cfg.max_steps else None
        self.module.train()
        try:
            while stopped_by is None:
                loss_sum, n_items, logs_acc = 0.0, 0, {}
                self.optimizer.zero_grad(set_to_none=True)
                if has_step:
                    epoch, done, batch = next(stream)
                    position = (epoch, done)
                    out = task.step(self.module, batch, step_ctx)
                    loss, logs = out if isinstance(out, tuple) else (out, {})
                    if loss is None:
                        raise TrainingError("task.step must return its loss (a float or a tensor; NaN skips the step)")
                    loss_sum = float(loss.detach().float().item()) if torch.is_tensor(loss) else float(loss)
                    n_items = int(task.items(batch)) if has_items else 0
                    logs_acc = {k: float(v) for k, v in (logs or {}).items()}
                    dist.average_gradients(params)
                else:
                    for micro in range(accum):
                        epoch, done, batch = next(stream)
                        position = (epoch, done)
                        sync = micro == accum - 1
                        ctx = train_module.no_sync() if dist.enabled and not sync else contextlib.nullcontext()
                        with ctx:
                            with self.precision.autocast():
                                out = task.loss(train_module, batch)
                            loss, logs = out if isinstance(out, tuple) else (out, {})
                            scaled = loss / accum if accum > 1 else loss
                            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                        loss_sum += loss.detach().float().item()
                        n_items += int(task.items(batch)) if has_items else 0
                        for k, v in (logs or {}).items():
                            logs_acc[k] = logs_acc.get(k, 0.0) + float(v) / accum
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                gnorm = clip_gradients(params, cfg.clip_mode, cfg.clip_threshold)
                local_loss = loss_sum / accum
                self.progress.epoch = position[0]
                elapsed = self.progress.elapsed_s
                loss_bad = not math.isfinite(local_loss)
                grad_bad = not math.isfinite(gnorm)
                tot_loss, tot_items, n_loss_bad, n_over = dist.all_sum(
                    [0.0 if loss_bad else local_loss, float(n_items), float(loss_bad),
                     float(max_time is not None and elapsed >= max_time)])
                lr = self.optimizer.param_groups[0]["lr"]
                overflow = self.scaler is not None and grad_bad and n_loss_bad == 0
                if overflow:  # fp16 scale too high: the scaler skips the step and lowers the scale
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    log.write("overflow", step=step, scale=self.scaler.get_scale())
                elif n_loss_bad > 0 or grad_bad:
                    bad_total += 1
                    consecutive += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.scaler is not None:
                        self.scaler.update()
                    log.write("bad_step", step=step, loss=local_loss, grad_norm=gnorm,
                              consecutive=consecutive, bad_steps=bad_total)
                    if consecutive >= cfg.max_bad_steps:
                        raise NonFiniteLossError(
                            f"Stopped at step {step}: {consecutive} optimizer steps in a row had a non-finite "
                            f"loss or gradient norm (last loss {local_loss}, gradient norm {gnorm}); "
                            f"{bad_total} skipped in all. Lower the learning rate, look for inf/nan in the "
                            "data or the loss (log of 0, division by 0), or use bf16/fp32 instead of fp16."
                        )
                else:
                    consecutive = 0
                    if self.scaler is not None:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    step += 1
                    self.progress.step = step
                    if self.scheduler is not None:
                        if hasattr(self.scheduler, "set_time_fraction"):
                            self.scheduler.set_time_fraction(elapsed / max_time if max_time else 0.0)
                        self.scheduler.step()
                    items_seen += int(tot_items)
                    self.progress.items_seen = items_seen
                    loss_mean = tot_loss / dist.world
                    loss_ema = loss_mean if loss_ema is None else 0.98 * loss_ema + 0.02 * loss_mean
                    now = time.time()
                    log.write("step", **{**logs_acc, "step": step, "epoch": position[0], "loss": loss_mean,
                                         "lr": lr, "grad_norm": gnorm, "items": int(tot_items),
                                         "items_per_s": tot_items / max(now - last, 1e-9),
                                         "elapsed_s": round(elapsed, 3)})
                    last = now
                    win_items += tot_items
                    win_n += 1
                    for k, v in logs_acc.items():
                        win_logs[k] = win_logs.get(k, 0.0) + v
                    if now - win_start > BAR_REFRESH_S:
                        postfix = {"loss": f"{loss_ema:.3f}", items_key: f"{win_items / (now - win_start):,.0f}",
                                   "lr": f"{lr:.2e}", "ep": position[0]}
                        if hasattr(task, "progress_bar"):
                            extra = task.progress_bar({k: v / win_n for k, v in win_logs.items()})
                            postfix.update({k: f"{v:.4g}" if isinstance(v, float) else v
                                            for k, v in (extra or {}).items()})
                        bar.set_postfix(postfix)
                        win_items, win_start, win_logs, win_n = 0.0, now, {}, 0
                    bar.update(1)
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stopped_by = "max_steps"
                elif n_over > 0:
                    stopped_by = "max_time"
                stepped = not (overflow or n_loss_bad > 0 or grad_bad)
                if not (stepped or stopped_by):
                    continue
                elapsed = self.progress.elapsed_s
                if cfg.eval_every and hasattr(task, "evaluate") and (step % cfg.eval_every == 0 or stopped_by):
                    ev = self.evaluate()
                    ev.update(step=step, train_loss_ema=loss_ema, elapsed_s=round(elapsed, 1), items_seen=items_seen)
                    history.append(ev)
                    log.write("eval", **ev)
                    if dist.is_main:
                        bar.write(f"step {step}: " + "  ".join(
                            f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float) and k != "elapsed_s"))
                if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or stopped_by):
                    self._save(step, position, items_seen, elapsed, history, bad_total, loss_ema)
        finally:
            self.progress.stop()
            bar.close()
            log.close()
        elapsed = self.progress.elapsed_s
        result = TrainResult(
            steps=step, epoch=position[0], items_seen=items_seen, elapsed_s=elapsed, bad_steps=bad_total,
            stopped_by=stopped_by, history=history, loss_ema=loss_ema,
            device=str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            precision=self.precision.name, world_size=dist.world,
        )
        if dist.is_main:
            end = MetricsLog(self.metrics_path).open(append=True)
            end.write("end", **{k: v for k, v in result.to_dict().items() if k != "history"})
            end.close()
        return result
