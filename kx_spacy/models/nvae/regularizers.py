"""The NVAE's training-time terms beyond the ELBO: KL warm-up, KL balancing across groups,
spectral regularisation by batched power iteration, and the batch-norm scale penalty."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NVAEError


def kl_warmup_coefficient(
    progress: float, anneal_portion: float = 0.3, constant_portion: float = 1e-4,
    min_coefficient: float = 1e-4,
) -> float:
    """The KL weight β after a fraction ``progress`` of training (NVAE's warm-up).

    β stays at ``min_coefficient`` for the first ``constant_portion``, then grows linearly to
    1 over ``anneal_portion`` of training and stays at 1.

    progress (float): fraction of training done, in [0, 1] (clipped).
    anneal_portion (float): fraction of training over which β rises to 1 (0 = no warm-up).
    constant_portion (float): fraction of training at the floor before the rise.
    min_coefficient (float): the floor of β.
    RETURNS (float): β in [min_coefficient, 1].
    """
    if anneal_portion <= 0:
        return 1.0
    progress = min(max(progress, 0.0), 1.0)
    return max(min((progress - constant_portion) / anneal_portion, 1.0), min_coefficient)


def kl_balance_alpha(groups_per_scale_top_down: Sequence[int]) -> torch.Tensor:
    """Per-group balancing weights α (the paper's "square" rule), top-down order.

    A group at the i-th scale from the top (2^i times finer) holds 4^i times more latent
    variables; α_i ∝ 4^i / (groups at that scale), normalised so that the smallest is 1.

    groups_per_scale_top_down (Sequence[int]): groups at each latent scale, coarsest first.
    RETURNS (torch.Tensor): α, one value per group (CPU float32).
    """
    parts = [
        torch.full((n,), (4.0 ** i) / n) for i, n in enumerate(groups_per_scale_top_down)
    ]
    alpha = torch.cat(parts)
    return alpha / alpha.min()


def balanced_kl(
    kl_groups: torch.Tensor, beta: float, alpha: torch.Tensor, balance: bool = True
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The KL term of the training objective, with warm-up and balancing.

    While β < 1 each group's KL is re-weighted by ``c_g ∝ (mean |KL_g| + 0.01) / α_g`` (the
    weights detached and normalised to mean 1), which pushes the optimiser to use the groups
    that carry little information and so prevents posterior collapse; at β = 1 the plain sum
    is used, so the objective is the ELBO again.

    kl_groups (torch.Tensor): ``[B, G]`` per-example KL of every group.
    beta (float): the warm-up coefficient.
    alpha (torch.Tensor): ``[G]`` balancing weights (kl_balance_alpha).
    balance (bool): enable balancing during warm-up.
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): per-example weighted KL ``[B]`` and the
        coefficients used ``[G]``.
    """
    if balance and beta < 1.0:
        alpha = alpha.to(kl_groups.device, kl_groups.dtype)
        coeff = kl_groups.detach().abs().mean(dim=0) + 0.01
        total = coeff.sum()
        coeff = coeff / alpha * total
        coeff = coeff / coeff.mean()
        return beta * (kl_groups * coeff).sum(dim=1), coeff
    ones = torch.ones(kl_groups.shape[1], device=kl_groups.device)
    return beta * kl_groups.sum(dim=1), ones


class SpectralRegularizer(nn.Module):
    """Sum of the largest singular values of many weight matrices by batched power iteration.

    Weights of equal (reshaped) shape are stacked and iterated together; the singular vectors
    are buffers (saved in checkpoints, moved with the module, broadcast by DDP). The first
    call runs 10× more iterations.

    shapes (List[Tuple[int, int]]): the matrix shape of every weight, in call order.
    iterations (int): power-iteration steps per call.
    """

    def __init__(self, shapes: List[Tuple[int, int]], iterations: int = 1) -> None:
        super().__init__()
        if iterations < 1:
            raise NVAEError(f"power iterations must be ≥ 1, got {iterations}")
        self.iterations = iterations
        self.groups: Dict[Tuple[int, int], List[int]] = {}
        for i, shape in enumerate(shapes):
            self.groups.setdefault(tuple(shape), []).append(i)
        self.keys = list(self.groups)
        gen = torch.Generator().manual_seed(0)
        for k, (rows, cols) in enumerate(self.keys):
            n = len(self.groups[(rows, cols)])
            u = F.normalize(torch.randn(n, rows, generator=gen), dim=1, eps=1e-3)
            v = F.normalize(torch.randn(n, cols, generator=gen), dim=1, eps=1e-3)
            self.register_buffer(f"u{k}", u)
            self.register_buffer(f"v{k}", v)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ σ_max(W) over ``weights`` (each reshaped to ``[out, -1]``), differentiable in W."""
        if not weights:
            return torch.zeros(())
        first = bool(self.calls.item() == 0) if self.training else False
        steps = self.iterations * (10 if first else 1)
        total = weights[0].new_zeros((), dtype=torch.float32)
        for k, key in enumerate(self.keys):
            mats = torch.stack([weights[i].float().flatten(1) for i in self.groups[key]])
            u, v = getattr(self, f"u{k}"), getattr(self, f"v{k}")
            if self.training:
                with torch.no_grad():
                    for _ in range(steps):
                        v = F.normalize(torch.bmm(u.unsqueeze(1), mats).squeeze(1), dim=1, eps=1e-3)
                        u = F.normalize(torch.bmm(mats, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-3)
                    getattr(self, f"u{k}").copy_(u)
                    getattr(self, f"v{k}").copy_(v)
            sigma = torch.bmm(u.unsqueeze(1), torch.bmm(mats, v.unsqueeze(2)))
            total = total + sigma.sum()
        if self.training:
            self.calls += 1
        return total


def batchnorm_penalty(layers: Sequence[nn.Module]) -> torch.Tensor:
    """Σ max |γ| over batch-norm layers: keeps BN from scaling features up without bound
    (the spectral regulariser cannot see BN's scale)."""
    terms = [layer.weight.abs().max() for layer in layers if getattr(layer, "weight", None) is not None]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.float() for t in terms]).sum()
