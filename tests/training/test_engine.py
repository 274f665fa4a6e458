import math
import time

import pytest
import torch

from kx_spacy.errors import KxError
from kx_spacy.training import (
    CheckpointMismatchError, NoCheckpointError, NonFiniteLossError, PrecisionError, Trainer,
    TrainingConfig, TrainingError, file_identity, read_metrics,
)

from .toy import ToyTask, sgd, weights


def _train(tmp_path, task=None, resume=False, identity=None, out="run", **cfg):
    task = task or ToyTask()
    settings = dict(max_steps=12, progress=False, num_threads=1)
    settings.update(cfg)
    trainer = Trainer(task, TrainingConfig(**settings), output_dir=tmp_path / out, optimizer=sgd(),
                      identity=identity)
    return task, trainer.run(resume=resume)


def test_run_logs_every_step_and_eval(tmp_path):
    task, res = _train(tmp_path, max_steps=10, eval_every=5, checkpoint_every=5)
    assert res.steps == 10 and res.stopped_by == "max_steps" and res.items_seen == 80
    assert [h["step"] for h in res.history] == [5, 10] and res.history[1]["mse"] < res.history[0]["mse"]
    steps = read_metrics(tmp_path / "run", "step")
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert all(r["grad_norm"] > 0 and r["items"] == 8 and r["items_per_s"] > 0 for r in steps)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")] == [5, 10]
    assert read_metrics(tmp_path / "run", "end")[0]["steps"] == 10


def test_accumulation_equals_a_bigger_batch(tmp_path):
    big, _ = _train(tmp_path, ToyTask(batch=8), out="a", grad_accum=1)
    small, _ = _train(tmp_path, ToyTask(batch=4), out="b", grad_accum=2)
    assert small.calls == 2 * big.calls
    assert torch.allclose(weights(big.module), weights(small.module), atol=1e-6)


def test_nan_batch_is_skipped_and_counted(tmp_path):
    task, res = _train(tmp_path, ToyTask(nan_calls={3}), max_steps=6)
    assert res.bad_steps == 1 and res.steps == 6 and task.calls == 7
    assert all(math.isfinite(x) for x in weights(task.module).tolist())
    bad = read_metrics(tmp_path / "run", "bad_step")
    assert len(bad) == 1 and bad[0]["step"] == 2 and bad[0]["loss"] == "nan"


def test_nan_steps_in_a_row_stop_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps in a row had a non-finite loss") as err:
        _train(tmp_path, ToyTask(nan_calls={2, 3, 4, 5}), max_bad_steps=3)
    assert isinstance(err.value, KxError) and "learning rate" in str(err.value)
    # not in a row: never stops
    _, res = _train(tmp_path, ToyTask(nan_calls={2, 4, 6}), out="b", max_bad_steps=2)
    assert res.bad_steps == 3 and res.steps == 12


def test_bf16_autocast_on_the_cpu(tmp_path):
    task, res = _train(tmp_path, max_steps=4, precision="bf16")
    assert res.precision == "bf16" and set(task.dtypes) == {torch.bfloat16}
    assert all(math.isfinite(x) for x in weights(task.module).tolist())
    task, res = _train(tmp_path, max_steps=2, out="auto", precision="auto", device="cpu")
    assert res.precision == "fp32" and set(task.dtypes) == {torch.float32}


def test_fp16_on_the_cpu_is_refused(tmp_path):
    with pytest.raises(PrecisionError, match="needs a CUDA GPU.*bf16"):
        _train(tmp_path, precision="fp16", device="cpu")
    with pytest.raises(PrecisionError, match="Unknown precision"):
        _train(tmp_path, precision="half", device="cpu")
    assert not (tmp_path / "run").exists()


def test_time_budget_stops(tmp_path):
    start = time.time()
    task, res = _train(tmp_path, ToyTask(sleep=0.02), max_steps=10_000, max_time_minutes=0.5 / 60)
    assert res.stopped_by == "max_time" and 1 <= res.steps <= 26 and res.elapsed_s >= 0.5
    assert time.time() - start < 30


def test_resume_continues_exactly(tmp_path):
    full, _ = _train(tmp_path, ToyTask(dropout=0.2), out="full", max_steps=20)
    _train(tmp_path, ToyTask(dropout=0.2), out="part", max_steps=7, checkpoint_every=3)
    part, res = _train(tmp_path, ToyTask(dropout=0.2), out="part", max_steps=20, resume=True)
    assert res.steps == 20
    assert torch.allclose(weights(full.module), weights(part.module), atol=1e-6)
    assert [r["step"] for r in read_metrics(tmp_path / "part", "step")] == list(range(1, 21))


def test_resume_checks_the_identity(tmp_path, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_text("some data\n")
    monkeypatch.chdir(tmp_path)
    ident = {"model": {"width": 16}, "data": file_identity(data)}
    _train(tmp_path, identity=ident, max_steps=3, checkpoint_every=3)
    # the same file by a relative path is the same identity
    same = {"model": {"width": 16}, "data": file_identity("data.txt")}
    _, res = _train(tmp_path, identity=same, max_steps=5, checkpoint_every=5, resume=True)
    assert res.steps == 5
    other = {"model": {"width": 32}, "data": file_identity(data)}
    with pytest.raises(CheckpointMismatchError, match=r"model\.width: checkpoint 16 ≠ now 32"):
        _train(tmp_path, identity=other, resume=True)
    data.write_text("other data\n")
    with pytest.raises(CheckpointMismatchError, match=r"data\.sha256") as err:
        _train(tmp_path, identity={"model": {"width": 16}, "data": file_identity("data.txt")}, resume=True)
    assert "data.path" not in str(err.value)
    with pytest.raises(NoCheckpointError, match="no complete checkpoint"):
        _train(tmp_path, out="none", resume=True)


def test_bad_settings_and_empty_data(tmp_path):
    with pytest.raises(TrainingError, match="grad_accum"):
        TrainingConfig(grad_accum=0).validate()
    with pytest.raises(TrainingError, match="clip_mode"):
        TrainingConfig(clip_mode="elementwise").validate()
    with pytest.raises(TrainingError, match="yielded no batch"):
        _train(tmp_path, ToyTask(n=4, batch=8))
