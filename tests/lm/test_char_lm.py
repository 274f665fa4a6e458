"""Character LM on the engine, and the clipping comparison, on a tiny synthetic text."""
import json

import pytest
import torch

from kx_spacy.errors import KxError
from kx_spacy.lm.char_lm import (CharLMDataError, CharLMTask, build_char_lm, load_lm_config,
                                 load_text_splits, make_optimizer, train_char_lm)

TEXT = ("to be or not to be, that is the question. " * 40)


@pytest.fixture
def tiny_cfg(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf8")
    return load_lm_config(None, {
        "paths.text": str(path), "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2, "model.context": 16,
        "model.chunk_size": 8, "training.max_steps": 4, "training.max_time_minutes": None, "training.batch_size": 4,
        "training.eval_every": 2, "training.eval_batches": 2, "training.warmup_steps": 0, "training.lr": 0.01,
        "training.progress": False, "training.device": "cpu",
    })


def test_config_errors_and_data_errors(tmp_path):
    with pytest.raises(KxError, match="unknown override"):
        load_lm_config(None, {"model.nope": 1})
    with pytest.raises(CharLMDataError):
        load_text_splits(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf8")
    with pytest.raises(CharLMDataError, match="too short"):
        load_text_splits(short)


def test_task_windows_are_next_character_pairs(tiny_cfg):
    vocab, train_ids, val_ids = load_text_splits(tiny_cfg["paths"]["text"])
    model = build_char_lm(tiny_cfg, len(vocab))
    task = CharLMTask(model, train_ids, val_ids, batch_size=3, context=16, batches_per_epoch=2, eval_batches=2)
    batches = list(task.batches(0, 0, 1))
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == y.shape == (3, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert [b[0].tolist() for b in task.batches(0, 0, 1)] == [b[0].tolist() for b in batches]  # deterministic
    ev = task.evaluate(model)
    assert ev["val_bits_per_char"] == pytest.approx(ev["val_loss"] / 0.6931471805599453)
    with pytest.raises(CharLMDataError):
        CharLMTask(model, train_ids[:10], val_ids, batch_size=2, context=16)


@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_train_on_the_engine_writes_metrics(tiny_cfg, tmp_path, attention):
    tiny_cfg["model"]["attention"] = attention
    out = tmp_path / "metrics.json"
    summary = train_char_lm(tiny_cfg, tmp_path / "run", out)
    assert summary["steps"] == 4
    saved = json.loads(out.read_text())
    assert saved["val_loss"] == pytest.approx(summary["val_loss"])
    assert len(saved["history"]) == 2
    assert saved["history"][-1]["val_loss"] < saved["history"][0]["val_loss"] + 0.5
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_time_budget_on_the_process_clock(tiny_cfg, tmp_path):
    tiny_cfg["training"].update(max_steps=100000, max_time_minutes=0.01, clock="process", eval_every=0)
    summary = train_char_lm(tiny_cfg, tmp_path / "run")
    assert summary["stopped_by"] == "max_time"
    assert 0 < summary["steps"] < 100000
    assert summary["elapsed_s"] >= 0.6
    tiny_cfg["training"]["clock"] = "sundial"
    with pytest.raises(KxError, match="clock"):
        train_char_lm(tiny_cfg, tmp_path / "bad")


def test_bad_optimizer_name():
    a = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(KxError, match="optimizer"):
        make_optimizer("lion", [a], lr=1.0)


@pytest.mark.slow
def test_clipping_bench_runs_every_mode(tiny_cfg, tmp_path):
    from kx_spacy.lm.clipping_bench import run_clipping_bench, save_clipping

    tiny_cfg["training"]["max_steps"] = 2
    result = run_clipping_bench(tiny_cfg, tmp_path / "runs", target_loss=10.0)
    assert set(result["runs"]) == {"none", "per_array", "global_norm", "smooth"}
    assert all(r["steps_to_target"] == 2 for r in result["runs"].values())
    paths = save_clipping(result, tmp_path / "metrics")
    assert all(p.exists() for p in paths)
