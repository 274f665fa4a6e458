import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kx_spacy.training import (
    CheckpointMismatchError, Trainer, TrainingConfig, check_identity, file_identity, has_checkpoint,
    load_checkpoint, read_metrics, save_checkpoint,
)

from .toy import ToyTask, sgd, weights

TOY = Path(__file__).with_name("toy.py")


def test_save_is_atomic_and_a_torn_write_is_ignored(tmp_path):
    save_checkpoint(tmp_path, {"step": 1}, {"a": 1})
    torn = tmp_path / ".checkpoint.tmp"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"half a checkp")
    assert load_checkpoint(tmp_path, {"a": 1}) == {"step": 1} and not torn.exists()
    # killed between the two renames of a save: the previous checkpoint is still found
    (tmp_path / "checkpoint").rename(tmp_path / ".checkpoint.old")
    assert has_checkpoint(tmp_path) and load_checkpoint(tmp_path)["step"] == 1
    save_checkpoint(tmp_path, {"step": 2}, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert json.loads((tmp_path / "checkpoint" / "identity.json").read_text()) == {"a": 1}


def test_identity_compares_resolved_paths_and_digests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_text("x")
    a, b = file_identity("sub/f.txt"), file_identity(tmp_path / "sub" / ".." / "sub" / "f.txt")
    assert a == b and a["path"] == str(tmp_path.resolve() / "sub" / "f.txt")
    check_identity({"f": a, "n": (1, 2)}, {"f": b, "n": [1, 2]}, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"n\.1: checkpoint 2 ≠ now 3"):
        check_identity({"f": a, "n": [1, 2]}, {"f": b, "n": [1, 3]}, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"n: checkpoint \[1, 2\] ≠ now \[1\]"):
        check_identity({"f": a, "n": [1, 2]}, {"f": b, "n": [1]}, tmp_path)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(TOY), str(out), "--max-steps", "40", "--checkpoint-every", "5",
           "--sleep", "0.03", "--dropout", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while time.time() < deadline:
        steps = [r["step"] for r in read_metrics(out, "step")] if (out / "metrics.jsonl").exists() else []
        if steps and steps[-1] >= 17:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "final.pt").exists()
    saved = load_checkpoint(out)["step"]
    assert 15 <= saved < 40 and saved % 5 == 0, f"killed at step {steps[-1] if steps else None}"
    cfg = TrainingConfig(max_steps=40, checkpoint_every=5, progress=False, num_threads=1, clip_mode="none")
    resumed = ToyTask(dropout=0.2)
    Trainer(resumed, cfg, output_dir=out, optimizer=sgd()).run(resume=True)
    assert resumed.calls == 40 - saved
    whole = ToyTask(dropout=0.2)
    Trainer(whole, cfg, output_dir=tmp_path / "whole", optimizer=sgd()).run()
    assert torch.allclose(weights(resumed.module), weights(whole.module), atol=1e-6)
    assert [r["step"] for r in read_metrics(out, "step")] == list(range(1, 41))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl"]
