"""Training tasks for the shared training engine (kx_spacy.training): the NVAE and the MLP VAE
baseline on dynamically binarised images.

A task owns the data order, the objective and the warm-up schedule; the engine owns the
loop, precision, clipping, the NaN guard, checkpoints and data parallelism. The KL warm-up
follows the engine's progress (``set_progress``: the larger of step / max_steps and
elapsed / time budget), so a time-budgeted run warms up over the same fraction of its budget
as a step-budgeted one (the learning-rate schedule is the engine's WarmupDecay, which follows
the same rule). The task can also keep copies of the weights at given training times
("marks", kept across a resume), to evaluate the NVAE and the baseline at equal times.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .config import NVAEError
from .data import DynamicBinarizedBatches
from .model import NVAE, NVAELoss
from .regularizers import kl_warmup_coefficient

if TYPE_CHECKING:
    from ...training import TrainProgress


class NVAEObjective(nn.Module):
    """The module the engine trains for an NVAE: ``forward(x, kl_coeff, reg_coeff)`` returns
    the NVAELoss, so that DDP sees the whole objective (regularisers included) in one forward.

    nvae (NVAE): the model.
    """

    def __init__(self, nvae: NVAE) -> None:
        super().__init__()
        self.nvae = nvae

    def forward(self, x: torch.Tensor, kl_coeff: float = 1.0, reg_coeff: float = 0.0,
                kl_balance: bool = True) -> NVAELoss:
        return self.nvae.objective(x, kl_coeff=kl_coeff, reg_coeff=reg_coeff, kl_balance=kl_balance)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP / the objective wrapper."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    if isinstance(module, NVAEObjective):
        return module.nvae
    return module


class _Marks:
    """Copies of the weights taken when training time passes each mark (seconds)."""

    def __init__(self, marks: Sequence[float]) -> None:
        self.pending = sorted(float(m) for m in marks if m > 0)
        self.taken: List[Dict[str, Any]] = []

    def maybe_take(self, module: nn.Module, progress: "TrainProgress") -> None:
        while self.pending and progress.elapsed_s >= self.pending[0]:
            mark = self.pending.pop(0)
            state = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(module).state_dict().items()}
            self.taken.append({"mark": mark, "seconds": progress.elapsed_s, "step": progress.step, "state": state})


class _ImageTask:
    """Shared part of the two tasks (data order, items, progress, marks, task state)."""

    module: nn.Module
    items_unit = "img"  # the engine's progress bar shows img/s

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, marks: Sequence[float]) -> None:
        self.data = DynamicBinarizedBatches(images, batch_size, seed=seed)
        self.progress: Optional["TrainProgress"] = None
        self.marks = _Marks(marks)

    def set_progress(self, progress: "TrainProgress") -> None:
        """The engine's hook: the run's step and time fraction (KL warm-up, marks)."""
        self.progress = progress

    def _need_progress(self) -> "TrainProgress":
        if self.progress is None:
            raise NVAEError("the task has no training progress: train it with kx_spacy.training.Trainer "
                            "(or call set_progress with a started TrainProgress)")
        return self.progress

    def batches(self, epoch: int, rank: int = 0, world: int = 1) -> Iterable[torch.Tensor]:
        for b in self.data.epoch(epoch, rank, world):
            yield torch.from_numpy(b)

    @staticmethod
    def _to_device(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        param = next(module.parameters())
        return batch.to(param.device, non_blocking=True)

    def items(self, batch: torch.Tensor) -> int:
        return int(batch.shape[0])

    def _check(self, batch: torch.Tensor) -> None:
        if not torch.isfinite(batch).all():
            raise NVAEError("a training batch contains NaN or inf: refusing it before any layer "
                            "(batch-norm statistics would be corrupted)")

    def _start(self, module: nn.Module) -> None:
        self.marks.maybe_take(module, self._need_progress())

    def snapshots(self, final_module: Optional[nn.Module] = None) -> List[Dict[str, Any]]:
        """The weights kept at each mark, plus the final ones (mark None) if given."""
        out = list(self.marks.taken)
        if final_module is not None:
            p = self._need_progress()
            state = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(final_module).state_dict().items()}
            out.append({"mark": None, "seconds": p.elapsed_s, "step": p.step, "state": state})
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"marks_pending": list(self.marks.pending), "marks_taken": list(self.marks.taken)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.marks.pending = list(state["marks_pending"])
        self.marks.taken = list(state["marks_taken"])


class NVAETask(_ImageTask):
    """Engine task: an NVAE on dynamically binarised images.

    nvae (NVAE): the model (wrapped in NVAEObjective as ``self.module``).
    images (np.ndarray): ``uint8 [N, H, W]`` training images.
    batch_size (int): images per batch per rank.
    kl_anneal_portion, kl_constant_portion, kl_min (float): KL warm-up (see
        kl_warmup_coefficient).
    kl_balance (bool): balance the groups' KL during warm-up.
    reg_coeff (float): weight of the spectral + BN terms.
    reg_every (int): add those terms (and advance the power iteration) on every
        ``reg_every``-th step only, with the same weight (1: every step, as the reference
        NVAE's training loop does).
    seed (int): data order and binarisation seed.
    marks (Sequence[float]): training seconds at which to keep a copy of the weights.
    """

    def __init__(self, nvae: NVAE, images: np.ndarray, batch_size: int,
                 kl_anneal_portion: float = 0.3, kl_constant_portion: float = 1e-4,
                 kl_min: float = 1e-4, kl_balance: bool = True, reg_coeff: float = 1e-2,
                 seed: int = 0, marks: Sequence[float] = (), reg_every: int = 1) -> None:
        super().__init__(images, batch_size, seed, marks)
        if int(reg_every) < 1:
            raise NVAEError(f"reg_every must be ≥ 1, got {reg_every}")
        self.reg_every = int(reg_every)
        self._module = NVAEObjective(nvae)
        self._synced = False
        self.kl_anneal_portion = kl_anneal_portion
        self.kl_constant_portion = kl_constant_portion
        self.kl_min = kl_min
        self.kl_balance = kl_balance
        self.reg_coeff = reg_coeff

    @property
    def module(self) -> nn.Module:
        """The objective module; under a multi-GPU torchrun its batch norms become SyncBatchNorm
        (as in the paper) the first time the engine reads it (after the process group is up)."""
        if not self._synced:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 \
                    and torch.cuda.is_available():
                self._module = nn.SyncBatchNorm.convert_sync_batchnorm(self._module)
                self._module.nvae._bns = [m for m in self._module.nvae.modules()
                                          if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            self._synced = True
        return self._module

    def kl_coeff(self) -> float:
        return kl_warmup_coefficient(self._need_progress().fraction, self.kl_anneal_portion,
                                     self.kl_constant_portion, self.kl_min)

    def loss(self, module: nn.Module, batch: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        self._check(batch)
        self._start(module)
        batch = self._to_device(module, batch)
        beta = self.kl_coeff()
        with_reg = self.reg_coeff > 0 and self._need_progress().step % self.reg_every == 0
        out: NVAELoss = module(batch, kl_coeff=beta, reg_coeff=self.reg_coeff if with_reg else 0.0,
                               kl_balance=self.kl_balance)
        stats = {
            "nelbo": out.nelbo.item(),
            "recon": out.recon.item(),
            "kl": out.kl.item(),
            "kl_coeff": beta,
        }
        if with_reg:  # only the steps that computed them (the window means skip the others)
            stats["spectral"] = out.spectral.item()
            stats["bn"] = out.bn.item()
        for g, v in enumerate(out.kl_per_group.tolist()):
            stats[f"kl_g{g}"] = v
        return out.loss, stats

    def progress_bar(self, logs: Dict[str, float]) -> Dict[str, Any]:
        """The engine's hook: −ELBO, β and the KL of every group (window means) on the bar."""
        bar: Dict[str, Any] = {"nelbo": logs.get("nelbo", float("nan")), "β": logs.get("kl_coeff", float("nan"))}
        groups = sorted((k for k in logs if k.startswith("kl_g")), key=lambda k: int(k[4:]))
        if groups:
            bar["kl/group"] = "/".join(f"{logs[k]:.1f}" for k in groups)
        return bar


class MLPVAETask(_ImageTask):
    """Engine task: the MLP VAE baseline (plain ELBO, no warm-up) on dynamically binarised
    images. Arguments as NVAETask."""

    def __init__(self, module: nn.Module, images: np.ndarray, batch_size: int,
                 seed: int = 0, marks: Sequence[float] = ()) -> None:
        super().__init__(images, batch_size, seed, marks)
        self.module = module

    def loss(self, module: nn.Module, batch: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        self._check(batch)
        self._start(module)
        batch = self._to_device(module, batch)
        nelbo = module(batch).mean()
        return nelbo, {"nelbo": nelbo.item()}


