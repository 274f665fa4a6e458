import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kx_spacy.training import DistContext, Trainer, TrainingConfig, shard

from .toy import ToyTask, sgd, weights

TOY = Path(__file__).with_name("toy.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_context_is_a_no_op():
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main
    assert ctx.all_sum([1.0, 2.0]) == [1.0, 2.0] and ctx.any_true(True) and not ctx.any_true(False)
    assert ctx.broadcast_object({"a": 1}) == {"a": 1} and ctx.gather_objects(3) == [3]
    module = torch.nn.Linear(2, 2)
    assert ctx.wrap(module) is module
    assert [list(shard(range(7), r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def _ddp(out, *args):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", KX_FORCE_CPU="1")
        cmd = [sys.executable, str(TOY), str(out), "--batch", "8", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    return torch.load(out / "final.pt")


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    """Also across a resume: the second DDP run continues from the first one's checkpoint."""
    one = ToyTask(batch=8)
    Trainer(one, TrainingConfig(max_steps=6, progress=False, clip_mode="none", num_threads=1),
            output_dir=tmp_path / "one", optimizer=sgd()).run()
    first = _ddp(tmp_path / "ddp", "--max-steps", "3", "--checkpoint-every", "3")
    ddp = _ddp(tmp_path / "ddp", "--max-steps", "6", "--checkpoint-every", "3", "--resume")
    assert torch.allclose(ddp, weights(one.module), atol=1e-5)
    assert not torch.allclose(first, ddp, atol=1e-3)  # the resumed run trained on
    assert not torch.allclose(ddp, weights(ToyTask(batch=8).module), atol=1e-3)
