"""The engine's task hooks: set_progress (step / time fraction), progress_bar values, a pure
time budget (max_steps=None, the schedule decaying by time) and task.step (the task owns the
update's gradient)."""
import math

import pytest
import torch

from kx_spacy.training import Trainer, TrainingConfig, TrainingError, WarmupDecay, read_metrics
from kx_spacy.training import engine as engine_module

from .test_distributed import _ddp
from .toy import ToyStepTask, ToyTask, sgd, weights


class ProgressTask(ToyTask):
    """Records what the engine's TrainProgress says at every loss call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.progress, self.seen = None, []

    def set_progress(self, progress):
        self.progress = progress

    def loss(self, module, idx):
        p = self.progress
        self.seen.append((p.step, p.step_fraction, p.time_fraction, p.fraction, p.elapsed_s))
        loss, logs = super().loss(module, idx)
        logs["warm"] = min(1.0, p.fraction / 0.5)  # a KL-style warm-up over half of the run
        return loss, logs


def _run(tmp_path, task, out="run", optimizer=None, scheduler=None, resume=False, **cfg):
    settings = dict(max_steps=10, progress=False, num_threads=1)
    settings.update(cfg)
    trainer = Trainer(task, TrainingConfig(**settings), output_dir=tmp_path / out, optimizer=optimizer or sgd(),
                      scheduler=scheduler)
    return trainer, trainer.run(resume=resume)


def test_task_reads_the_step_and_the_fraction_used(tmp_path):
    task = ProgressTask()
    trainer, res = _run(tmp_path, task, max_steps=10, checkpoint_every=5)
    assert [s[0] for s in task.seen] == list(range(10))
    assert [s[1] for s in task.seen] == pytest.approx([i / 10 for i in range(10)])
    assert all(s[2] == 0.0 and s[3] == s[1] for s in task.seen)  # no time budget
    assert all(b[4] >= a[4] for a, b in zip(task.seen, task.seen[1:]))
    warm = [r["warm"] for r in read_metrics(tmp_path / "run", "step")]
    assert warm == pytest.approx([min(1.0, i / 5) for i in range(10)])
    # after the run: frozen at the end, the same object the task holds
    assert task.progress is trainer.progress and task.progress.step == 10 and task.progress.fraction == 1.0
    frozen = task.progress.elapsed_s
    assert frozen == pytest.approx(res.elapsed_s) and task.progress.elapsed_s == frozen
    # a resumed run starts from the checkpoint's step and time (that of its last step)
    at_checkpoint = read_metrics(tmp_path / "run", "step")[-1]["elapsed_s"]
    again = ProgressTask()
    _run(tmp_path, again, max_steps=15, checkpoint_every=5, resume=True)
    assert again.seen[0][0] == 10 and again.seen[0][4] >= at_checkpoint - 1e-3


def test_time_fraction_with_a_time_budget(tmp_path):
    task = ProgressTask(sleep=0.02)
    _, res = _run(tmp_path, task, max_steps=None, max_time_minutes=0.4 / 60)
    assert res.stopped_by == "max_time"
    times = [s[2] for s in task.seen]
    assert times[0] < 0.5 and all(0 <= t <= 1 for t in times) and times == sorted(times)
    assert all(s[1] == 0.0 and s[3] == pytest.approx(s[2], abs=0.02) for s in task.seen)  # no step budget


def test_pure_time_budget_decays_the_schedule_by_time(tmp_path):
    task = ToyTask(sleep=0.02)

    def scheduler(opt):
        return WarmupDecay(opt, decay="linear", warmup_steps=0, max_steps=None, min_lr_ratio=0.1)

    _, res = _run(tmp_path, task, max_steps=None, max_time_minutes=0.5 / 60, scheduler=scheduler)
    assert res.stopped_by == "max_time" and res.steps >= 3
    steps = read_metrics(tmp_path / "run", "step")
    lrs = [r["lr"] for r in steps]
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)
    # the lr of each step follows the time fraction used before it (1 - 0.9 * elapsed / budget)
    for prev, r in zip(steps, steps[1:]):
        frac = min(1.0, prev["elapsed_s"] / 0.5)
        assert r["lr"] == pytest.approx(0.1 * (1 - 0.9 * frac), abs=2e-3)
    assert lrs[-1] < 0.1 * 0.6


def test_pure_time_budget_needs_a_time_limit(tmp_path):
    with pytest.raises(TrainingError, match="pure time budget"):
        TrainingConfig(max_steps=None).validate()
    with pytest.raises(TrainingError, match="max_steps > 0"):
        WarmupDecay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), max_steps=0)


def test_schedule_without_a_step_budget_ignores_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupDecay(opt, decay="cosine", warmup_steps=2, max_steps=None, min_lr_ratio=0.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # warm-up still counts steps: 1/2
    for _ in range(5):
        opt.step()
        sched.set_time_fraction(0.0)
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)  # no time used: no decay, whatever the steps
    sched.set_time_fraction(0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # cosine at half time
    state = sched.state_dict()
    other = WarmupDecay(opt, decay="cosine", warmup_steps=2, max_steps=None)
    other.load_state_dict(state)
    assert other.factor(100) == pytest.approx(sched.factor(100))


class BarTask(ToyTask):
    items_unit = "img"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.windows = []

    def progress_bar(self, logs):
        self.windows.append(dict(logs))
        return {"mse_w": logs["mse"], "note": "ok"}


def test_progress_bar_shows_the_task_values(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine_module, "BAR_REFRESH_S", 0.0)
    task = BarTask(sleep=0.01)
    _run(tmp_path, task, max_steps=6, progress=True)
    err = capsys.readouterr().err
    assert task.windows and all(set(w) == {"mse"} for w in task.windows)
    mses = [r["mse"] for r in read_metrics(tmp_path / "run", "step")]
    assert any(math.isclose(task.windows[0]["mse"], m, rel_tol=1e-6) for m in mses[:2])
    assert "mse_w=" in err and "note=ok" in err and "img/s=" in err


def test_step_hook_equals_the_loss_path(tmp_path):
    by_loss = ToyTask()
    _run(tmp_path, by_loss, out="a", max_steps=8)
    hook = ToyStepTask()
    _, res = _run(tmp_path, hook, out="b", max_steps=8)
    assert res.steps == 8
    assert torch.allclose(weights(hook.module), weights(by_loss.module), atol=1e-6)
    steps = read_metrics(tmp_path / "b", "step")
    assert [r["step"] for r in steps] == list(range(1, 9)) and all(r["grad_norm"] > 0 and "mse" in r for r in steps)


def test_step_hook_is_clipped_guarded_and_checked(tmp_path):
    # clipping applies to what the hook wrote: clip at 1e-9 barely moves the weights
    start = weights(ToyStepTask().module)
    tiny = ToyStepTask()
    _run(tmp_path, tiny, out="clip", max_steps=3, clip_threshold=1e-9)
    assert torch.allclose(weights(tiny.module), start, atol=1e-6)

    class NaNStep(ToyStepTask):
        def step(self, module, idx, ctx):
            loss, logs = super().step(module, idx, ctx)
            return (float("nan"), logs) if self.calls == 2 else (loss, logs)

    task = NaNStep()
    _, res = _run(tmp_path, task, out="nan", max_steps=4)
    assert res.bad_steps == 1 and res.steps == 4 and task.calls == 5

    class NoGrad(ToyStepTask):  # a defined "no update" step: counted, weights unchanged
        def step(self, module, idx, ctx):
            return 0.5, {}

    task = NoGrad()
    before = weights(task.module).clone()
    _, res = _run(tmp_path, task, out="none", max_steps=3)
    assert res.steps == 3 and res.bad_steps == 0 and torch.equal(weights(task.module), before)

    class NoLoss(ToyStepTask):
        def step(self, module, idx, ctx):
            return None

    with pytest.raises(TrainingError, match="must return its loss"):
        _run(tmp_path, NoLoss(), out="noloss")
    with pytest.raises(TrainingError, match="grad_accum=1"):
        _run(tmp_path, ToyStepTask(), out="accum", grad_accum=2)


def test_set_gradients_checks_shapes(tmp_path):
    class BadShape(ToyStepTask):
        def step(self, module, idx, ctx):
            ctx.set_gradients(ctx.parameters[:1], [torch.zeros(3)])
            return 0.0

    with pytest.raises(TrainingError, match="gradient of shape"):
        _run(tmp_path, BadShape(), out="shape")


@pytest.mark.slow
def test_step_hook_under_two_gloo_processes_averages_the_gradients(tmp_path):
    one = ToyTask(batch=8)
    Trainer(one, TrainingConfig(max_steps=5, progress=False, clip_mode="none", num_threads=1),
            output_dir=tmp_path / "one", optimizer=sgd()).run()
    ddp = _ddp(tmp_path / "ddp", "--max-steps", "5", "--step-hook")
    assert torch.allclose(ddp, weights(one.module), atol=1e-5)


def test_process_clock_counts_cpu_seconds_not_waiting(tmp_path):
    """A run that mostly waits (sleeps, like a run starved by other processes) uses little CPU
    time: the process clock's budget outlasts the wall clock's."""
    _, wall = _run(tmp_path, ProgressTask(sleep=0.05), out="wall", max_steps=20, max_time_minutes=0.3 / 60)
    _, cpu = _run(tmp_path, ProgressTask(sleep=0.05), out="cpu", max_steps=20, max_time_minutes=0.3 / 60,
                  clock="process")
    assert wall.stopped_by == "max_time" and wall.steps < 20
    assert cpu.stopped_by == "max_steps" and cpu.steps == 20 and cpu.elapsed_s < 0.3
    with pytest.raises(TrainingError, match="clock"):
        TrainingConfig(clock="gpu").validate()
