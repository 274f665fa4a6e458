"""NVAE and baseline training on the shared engine; the experiment and its CLI on a fake
data folder."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kx_spacy.errors import KxError  # noqa: E402
from kx_spacy.models.nvae.config import NVAEConfig, NVAEError  # noqa: E402
from kx_spacy.models.nvae.mlp_vae import MLPVAE  # noqa: E402
from kx_spacy.models.nvae.model import NVAE  # noqa: E402
from kx_spacy.models.nvae.task import MLPVAETask, NVAETask  # noqa: E402
from kx_spacy.training import Trainer, TrainingConfig, TrainProgress  # noqa: E402

from test_nvae_data import write_fake_mnist  # noqa: E402

TINY = dict(channels=4, num_preprocess_cells=1, num_postprocess_cells=1, num_groups_per_scale=1,
            adaptive_groups=False, num_latent_per_group=2, decoder_expansion=2, up_expansion=1)


def _images(n=24):
    return np.random.Generator(np.random.PCG64(0)).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _train(task, out, steps, identity, resume=False, **cfg):
    cfg = TrainingConfig(**{**dict(max_steps=steps, checkpoint_every=steps, progress=False, num_threads=1,
                                   clip_mode="global_norm", clip_threshold=200.0), **cfg})
    opt = lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2)  # noqa: E731
    return Trainer(task, cfg, output_dir=out, optimizer=opt, identity=identity).run(resume=resume)


def _started(max_steps=None, max_time_s=None):
    progress = TrainProgress(max_steps, max_time_s)
    progress.start()
    return progress


@pytest.mark.slow
def test_nvae_task_trains_on_the_engine_and_logs_kl_per_group(tmp_path):
    torch.manual_seed(0)
    task = NVAETask(NVAE(NVAEConfig.tiny()), _images(), batch_size=8)
    # KL warm-up over 30 % of a 10-step budget: β = (step / 10 − 1e-4) / 0.3, at least 1e-4, at most 1
    result = _train(task, tmp_path, 10, {"nvae": NVAEConfig.tiny().to_dict()})
    assert result.steps == 10 and result.bad_steps == 0 and result.items_seen == 80
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert {"kl_g0", "kl_g1", "kl_coeff", "nelbo", "spectral", "bn", "items_per_s"} <= set(steps[-1])
    # the KL weight follows the progress of training (warm-up)
    want = [max(min((i / 10 - 1e-4) / 0.3, 1.0), 1e-4) for i in range(10)]
    assert [s["kl_coeff"] for s in steps] == pytest.approx(want) and want[1] < want[2] < want[3] < 1.0
    assert task.progress.step == 10 and task.progress.step_fraction == 1.0
    # the progress bar's values: −ELBO, β, the KL of each group (window means of the logs)
    bar = task.progress_bar({"nelbo": 500.0, "kl_coeff": 0.5, "kl_g1": 2.0, "kl_g0": 1.25})
    assert bar == {"nelbo": 500.0, "β": 0.5, "kl/group": "1.2/2.0"} and task.items_unit == "img"


def test_resuming_another_configs_checkpoint_is_refused(tmp_path):
    task = NVAETask(NVAE(NVAEConfig.tiny()), _images(), 8)
    _train(task, tmp_path, 2, {"nvae": NVAEConfig.tiny().to_dict()})
    other = NVAEConfig.tiny(num_latent_per_group=3)
    task2 = NVAETask(NVAE(other), _images(), 8)
    with pytest.raises(KxError, match="num_latent_per_group|identity|config"):
        _train(task2, tmp_path, 4, {"nvae": other.to_dict()}, resume=True)
    # the same config resumes and continues the engine's progress
    task3 = NVAETask(NVAE(NVAEConfig.tiny()), _images(), 8)
    assert _train(task3, tmp_path, 4, {"nvae": NVAEConfig.tiny().to_dict()}, resume=True).steps == 4
    assert task3.progress.step == 4


def test_nan_batch_is_refused_before_any_layer():
    model = NVAE(NVAEConfig.tiny())
    task = NVAETask(model, _images(), 8)
    task.set_progress(_started(max_steps=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = torch.zeros(8, 1, 28, 28)
    batch[0, 0, 0, 0] = float("nan")
    with pytest.raises(NVAEError, match="NaN"):
        task.loss(task.module, batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    base = MLPVAETask(MLPVAE(), _images(), 8)
    with pytest.raises(NVAEError, match="NaN"):
        base.loss(base.module, batch)


def test_baseline_task_trains(tmp_path):
    task = MLPVAETask(MLPVAE(), _images(), 8)
    assert _train(task, tmp_path, 3, {"baseline": True}).steps == 3


def test_a_task_without_progress_says_so():
    task = NVAETask(NVAE(NVAEConfig.tiny()), _images(), 8)
    with pytest.raises(NVAEError, match="no training progress"):
        task.loss(task.module, next(iter(task.batches(0))))


def test_marks_keep_weights_at_training_times(tmp_path):
    task = NVAETask(NVAE(NVAEConfig.tiny()), _images(), 8, marks=[1e-9, 1e4])
    first = {k: v.clone() for k, v in task.module.nvae.state_dict().items()}
    _train(task, tmp_path, 2, {"nvae": True}, max_time_minutes=100.0)
    snaps = task.snapshots(final_module=task.module)
    assert [s["mark"] for s in snaps] == [1e-9, None]  # 1e4 s not reached
    assert snaps[0]["step"] == 0 and snaps[1]["step"] == 2 and snaps[0]["seconds"] <= snaps[1]["seconds"]
    assert all(torch.equal(first[k], v) for k, v in snaps[0]["state"].items())  # the weights before step 1
    # kept across a resume
    again = NVAETask(NVAE(NVAEConfig.tiny()), _images(), 8, marks=[1e-9, 1e4])
    _train(again, tmp_path, 3, {"nvae": True}, resume=True, max_time_minutes=100.0)
    assert [s["mark"] for s in again.snapshots()] == [1e-9] and again.snapshots()[0]["step"] == 0


def _fake_cfg(**training):
    return {
        "nvae": TINY,
        "nvae_training": {"batch_size": 8, "warmup_steps": 1},
        "baseline": {"batch_size": 8},
        "training": {"max_time_minutes": 0, "max_steps": 2, "progress": False, "checkpoint_every": 2, **training},
        "evaluation": {"k": 3, "num_images": 4, "marks_k": 2, "marks_num_images": 2, "batch_size": 64,
                       "baseline_num_images": 6},
        "sampling": {"temperatures": [0.7], "num_samples": 4, "readjust_samples": 4, "readjust_iterations": 1,
                     "num_reconstructions": 2},
    }


@pytest.mark.slow
def test_experiment_end_to_end_on_fake_data(tmp_path):
    from kx_spacy.models.nvae.experiment import evaluate_model, run_experiment, sample_model

    write_fake_mnist(tmp_path / "data")
    out = tmp_path / "run"
    metrics = run_experiment(_fake_cfg(clock="process"), tmp_path / "data", out, tmp_path / "m.json",
                             log=lambda s: None)
    assert metrics["clock"] == "process"
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == metrics["rows"]
    assert "PCG64(seed=0)" in metrics["binarisation"]
    kinds = [(r["model"], r["num_images"]) for r in metrics["rows"]]
    assert kinds == [("nvae", 4), ("baseline", 4), ("baseline", 6)]
    assert all(np.isfinite(r["nll"]) and r["nll"] > 0 for r in metrics["rows"])
    assert all(p.endswith(".png") for p in metrics["pictures"])
    res = evaluate_model(out / "nvae" / "model.pt", tmp_path / "data", k=2, num_images=3, batch_size=16)
    assert res["num_images"] == 3 and res["k"] == 2
    paths = sample_model(out / "baseline" / "model.pt", tmp_path / "pics", [0.5], num_samples=4)
    assert len(paths) == 1
    with pytest.raises(NVAEError, match="temperature"):
        sample_model(out / "nvae" / "model.pt", tmp_path / "pics", [0.0])
    # resuming with another NVAE config is refused
    other = _fake_cfg()
    other["nvae"] = {**TINY, "num_latent_per_group": 3}
    with pytest.raises(KxError):
        run_experiment(other, tmp_path / "data", out, None, resume=True, log=lambda s: None)


@pytest.mark.slow
def test_cli_train_evaluate_sample(tmp_path):
    from typer.testing import CliRunner

    from kx_spacy.cli import app

    write_fake_mnist(tmp_path / "data")
    cfg = tmp_path / "tiny.cfg"
    from kx_spacy.models.nvae.experiment import merge_config

    merged = merge_config(_fake_cfg())
    lines = []
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    cfg.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    r = runner.invoke(app, ["train-nvae", str(cfg), str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"),
                            "--metrics", str(tmp_path / "m.json"), "--training.max_steps", "1"])
    assert r.exit_code == 0, r.output
    assert "baseline" in r.output and "binarisation" in r.output
    r = runner.invoke(app, ["evaluate-nvae", str(tmp_path / "run" / "nvae" / "model.pt"), "--data-dir",
                            str(tmp_path / "data"), "--k", "2", "--limit", "3"])
    assert r.exit_code == 0 and "IW-2 NLL" in r.output, r.output
    r = runner.invoke(app, ["sample-nvae", str(tmp_path / "run" / "nvae" / "model.pt"), str(tmp_path / "p"),
                            "--temperatures", "0.8,-1", "--n", "4"])
    assert r.exit_code == 1 and "temperature" in r.output
    r = runner.invoke(app, ["train-nvae", str(tmp_path / "missing.cfg"), str(tmp_path / "run2")])
    assert r.exit_code == 1 and "not found" in r.output


def test_reg_every_adds_the_regularisers_on_every_nth_step_only(tmp_path):
    torch.manual_seed(0)
    task = NVAETask(NVAE(NVAEConfig.tiny()), _images(), batch_size=8, reg_every=3)
    _train(task, tmp_path, 5, {"nvae": True})
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert ["spectral" in s for s in steps] == [True, False, False, True, False]
    assert task.module.nvae.spectral.calls.item() == 2  # the power iteration advanced twice
    with pytest.raises(NVAEError, match="reg_every"):
        NVAETask(NVAE(NVAEConfig.tiny()), _images(), batch_size=8, reg_every=0)


def test_holdout_keeps_the_last_training_images_for_evaluation(tmp_path):
    from kx_spacy.models.nvae.experiment import split_holdout, test_images

    write_fake_mnist(tmp_path / "data")
    imgs = _images(30)
    train, held = split_holdout(imgs, 5, tmp_path / "data", 0)
    assert np.array_equal(train, imgs[:25])
    h = held(3)
    assert h.shape == (3, 1, 28, 28) and set(h.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(h, held(5)[:3])  # binarised once, the same images every time
    with pytest.raises(NVAEError, match="holdout keeps 5"):
        held(6)
    train, test = split_holdout(imgs, 0, tmp_path / "data", 0)
    assert train is imgs and torch.equal(test(4), test_images(tmp_path / "data", 4, 0))
    for bad in (-1, 30):
        with pytest.raises(NVAEError, match="holdout"):
            split_holdout(imgs, bad, tmp_path / "data", 0)
