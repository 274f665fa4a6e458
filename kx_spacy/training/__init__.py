"""The one home of torch training machinery: every kx torch loop runs on this engine.

Public names (import them from ``kx_spacy.training``; importing this package imports no torch):

- ``Trainer(task, config, *, output_dir, optimizer, scheduler=None, identity=None, dist=None)``
  and ``Trainer.run(resume=False) -> TrainResult``; ``Trainer.evaluate()``, ``Trainer.module``,
  ``Trainer.metrics_path`` (engine.py)
- ``TrainingConfig(max_steps=1000 (None: a pure time budget), max_time_minutes=None, grad_accum=1, clip_mode="global_norm",
  clip_threshold=1.0, precision="auto", eval_every=0, checkpoint_every=0, max_bad_steps=10,
  seed=0, num_threads=None, progress=True, device=None, desc="train",
  find_unused_parameters=False, clock="wall" | "process" (CPU seconds))``, ``TrainResult``
  (engine.py)
- ``WarmupDecay(optimizer, *, decay="linear"|"cosine"|"constant", warmup_steps, max_steps,
  min_lr_ratio)``: warm-up × decay from transformers' schedule formulas, decaying by steps or by
  the time budget, whichever runs out first; ``max_steps=None``: by the time fraction alone
  (schedules.py)
- ``TrainProgress`` (the run's step, epoch, items_seen, elapsed_s, step_fraction, time_fraction,
  fraction: what a task reads), ``StepContext`` (what ``task.step`` gets) (progress.py)
- ``Precision``, ``resolve_precision``, ``resolve_device`` (precision.py)
- ``DistContext`` (torchrun environment, gloo / nccl, barrier, all_sum, any_true,
  broadcast_object, gather_objects, wrap), ``shard(items, rank, world)``, ``unwrap`` (distributed.py)
- ``save_checkpoint``, ``load_checkpoint``, ``has_checkpoint``, ``remove_checkpoint``,
  ``file_identity(path)`` (resolved path + size + SHA-256), ``check_identity``, ``replace_dir``
  (checkpoint.py)
- ``MetricsLog``, ``read_metrics(path_or_dir, kind=None)``, ``METRICS_FILE`` (metrics_log.py)
- ``clip_gradients``, ``clip_grad_global_norm``, ``smooth_clip_grad``, ``global_grad_norm`` (clipping.py)
- errors: ``TrainingError``, ``PrecisionError``, ``NonFiniteLossError``,
  ``CheckpointMismatchError``, ``NoCheckpointError`` (errors.py, all ``KxError``)

The task protocol (duck-typed; no base class)::

    class MyTask:
        module: torch.nn.Module          # what is trained; the engine moves it to the device and
                                         # wraps it in DDP under torchrun
        def batches(self, epoch, rank, world) -> Iterable   # one epoch of this rank's shard
                                         # (use shard(); keep it lazy: a resumed run skips the
                                         # batches the interrupted run consumed by iterating)
        def loss(self, module, batch) -> (loss_tensor, {name: float}) | loss_tensor
                                         # called under the engine's autocast with the (DDP-
                                         # wrapped) module; move the batch to the module's device
        def items(self, batch) -> int                     # optional: tokens / images, for items/s
        def evaluate(self, module) -> {name: float}       # optional: eval mode, no grad, autocast
        def state_dict(self) -> dict; def load_state_dict(self, d)   # optional: extra task state
                                         # (e.g. a torch.Generator's state) saved in checkpoints
        def set_progress(self, progress: TrainProgress)  # optional: called once per run before
                                         # the first batch; read progress.step / .fraction /
                                         # .time_fraction / .elapsed_s at any time (warm-ups)
        def progress_bar(self, logs) -> {name: float | str}  # optional: extra progress-bar
                                         # values, given the means of the loss logs over the
                                         # bar's refresh window (e.g. KL per group)
        items_unit: str                  # optional: the bar's items/s label (e.g. "img")
        def step(self, module, batch, ctx: StepContext) -> (loss, {name: float}) | loss
                                         # optional: the task owns the update (see below)

The task's loss logs go into every "step" record of the metrics log (rank 0's) and, through
``progress_bar``, into the bar; the engine adds loss, lr, grad norm, items and items/s.

``task.step`` (instead of ``loss``; one batch per optimizer step, ``grad_accum`` must be 1): the
engine zeroes the gradients, calls ``task.step(module, batch, ctx)`` with the plain module (no
DDP wrapper, no autocast: ``ctx.autocast()`` gives the run's), and the task fills ``.grad`` of
the parameters it updates, by ``ctx.backward(loss)`` (fp16-scaler aware, adds up) and/or
``ctx.set_gradients(params, grads)`` (replaces; unscaled values, e.g. MGS's −d), then returns
its loss (float or tensor: logged, and a non-finite one skips the step as a bad step) and float
logs. The engine then does what it does for a loss: fp16 unscale, clipping, the NaN guard, the
optimizer step (parameters left with ``grad=None`` do not move), the schedule step, logging,
evaluation and checkpoints. The task must not step the optimizer itself. Under torchrun the
module is not DDP-wrapped: rank 0's parameters and buffers are broadcast at the start, and after
``task.step`` the engine averages every trainable parameter's ``.grad`` over the ranks (a
parameter with a gradient on some ranks only gets the mean with zeros), so every rank applies
the same update; buffers (e.g. batch-norm statistics) are not synchronised, and the task must
not run collectives of its own that the other ranks do not run too.

    from kx_spacy.training import Trainer, TrainingConfig, WarmupDecay
    cfg = TrainingConfig(max_steps=1000, precision="bf16", eval_every=100, checkpoint_every=100)
    trainer = Trainer(task, cfg, output_dir="training/run1",
                      optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
                      scheduler=lambda opt: WarmupDecay(opt, warmup_steps=100, max_steps=cfg.max_steps),
                      identity={"model": model_cfg, "data": file_identity(path)})
    result = trainer.run(resume=False)

Per optimizer step: ``grad_accum`` micro-batches (DDP ``no_sync`` on all but the last; their
mean loss), fp16 unscale, clipping (pre-clip norm logged), a NaN/inf guard (a non-finite loss or
gradient norm skips the step: no update, no schedule step, counted; ``max_bad_steps`` in a row
raise ``NonFiniteLossError``), the optimizer and schedule step, then evaluation and checkpoints
every ``eval_every`` / ``checkpoint_every`` steps and at the end. Budgets: ``max_steps`` and
``max_time_minutes`` (training time: the run's wall clock, evaluations and checkpoints
included, plus the time of earlier runs when resumed), either or both. Rank 0 writes ``<output_dir>/metrics.jsonl`` (records "step", "eval",
"bad_step", "overflow", "end") and the atomic ``<output_dir>/checkpoint/`` (module, optimizer,
schedule, scaler, every rank's task state, random state and data position), so a resumed run
continues exactly where the last complete checkpoint stopped (resumed under another world size,
every rank starts from rank 0's position and state). A "step" record holds the loss averaged
over micro-batches and ranks, the learning rate, the pre-clip gradient norm, items and items/s,
and the task's own logs (rank 0's, averaged over micro-batches).
"""
from importlib import import_module

_EXPORTS = {
    "Trainer": "engine", "TrainingConfig": "engine", "TrainResult": "engine",
    "WarmupDecay": "schedules", "TrainProgress": "progress", "StepContext": "progress",
    "Precision": "precision", "resolve_precision": "precision", "resolve_device": "precision",
    "DistContext": "distributed", "shard": "distributed", "unwrap": "distributed",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "has_checkpoint": "checkpoint",
    "remove_checkpoint": "checkpoint", "file_identity": "checkpoint", "check_identity": "checkpoint",
    "replace_dir": "checkpoint",
    "MetricsLog": "metrics_log", "read_metrics": "metrics_log", "METRICS_FILE": "metrics_log",
    "clip_gradients": "clipping", "clip_grad_global_norm": "clipping", "smooth_clip_grad": "clipping",
    "global_grad_norm": "clipping",
    "TrainingError": "errors", "PrecisionError": "errors", "NonFiniteLossError": "errors",
    "CheckpointMismatchError": "errors", "NoCheckpointError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
