"""A toy task for the engine tests: a small regression net on fixed random data.

Also a script (``python toy.py OUT --max-steps N ...``) so tests can run it in another process,
alone or as one rank of a ``torchrun``-style group (RANK / WORLD_SIZE / MASTER_* set by the test).
"""
import argparse
import time

import torch


class ToyTask:
    """Regression of sin(x·1) by a 2-layer net; each global batch of ``batch`` rows is split over the ranks.

    nan_calls: the loss calls (1-based) whose loss is made NaN. sleep: seconds per loss call.
    """

    def __init__(self, n=64, dim=3, batch=8, dropout=0.0, nan_calls=(), sleep=0.0, seed=0):
        torch.manual_seed(seed)
        self.module = torch.nn.Sequential(
            torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1))
        g = torch.Generator().manual_seed(seed + 1)
        self.X = torch.randn(n, dim, generator=g)
        self.y = torch.sin(self.X.sum(-1))
        self.n, self.batch, self.nan_calls, self.sleep = n, batch, set(nan_calls), sleep
        self.calls, self.dtypes = 0, []

    def batches(self, epoch, rank, world):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(1000 + epoch))
        per = self.batch // world
        for start in range(0, self.n - self.batch + 1, self.batch):
            yield perm[start + rank * per: start + (rank + 1) * per]

    def loss(self, module, idx):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        out = module(self.X[idx]).squeeze(-1)
        self.dtypes.append(out.dtype)
        loss = ((out.float() - self.y[idx]) ** 2).mean()
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return loss, {"mse": loss.item()}

    def items(self, idx):
        return len(idx)

    def evaluate(self, module):
        return {"mse": ((module(self.X).squeeze(-1).float() - self.y) ** 2).mean().item()}


class ToyStepTask(ToyTask):
    """ToyTask that owns its update (the engine's ``task.step`` hook): the same MSE gradient,
    computed by ``torch.autograd.grad`` and written with ``ctx.set_gradients``."""

    def step(self, module, idx, ctx):
        params = ctx.parameters
        loss, logs = self.loss(module, idx)
        grads = torch.autograd.grad(loss, params)
        ctx.set_gradients(params, grads)
        return loss.detach(), logs


def sgd(lr=0.1):
    return lambda module: torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)


def weights(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def main():
    from kx_spacy.training import Trainer, TrainingConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--step-hook", action="store_true", help="train through task.step (ToyStepTask)")
    a = ap.parse_args()
    task = (ToyStepTask if a.step_hook else ToyTask)(batch=a.batch, sleep=a.sleep, dropout=a.dropout)
    cfg = TrainingConfig(max_steps=a.max_steps, checkpoint_every=a.checkpoint_every, progress=False,
                         num_threads=1, clip_mode="none")
    res = Trainer(task, cfg, output_dir=a.out, optimizer=sgd()).run(resume=a.resume)
    if torch.distributed.is_available() and res.world_size > 1:
        import os

        if os.environ.get("RANK") != "0":
            return
    torch.save(weights(task.module), f"{a.out}/final.pt")


if __name__ == "__main__":
    main()
