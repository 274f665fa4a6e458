"""Test likelihood by the importance-weighted bound, and PNG grids of images.

``log p(x) ≥ L_K(x) = E[log (1/K) Σ_k p(x, z_k) / q(z_k | x)]``, z_k ~ q(z | x): L_1 is the ELBO,
L_K rises with K towards log p(x) (Burda et al. 2016). The reported NLL is ``−mean L_K`` in
nats, with K = 1000, batched so that any K fits in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from .config import NVAEError


@dataclass
class IWResult:
    """Importance-weighted evaluation of a set of images.

    nll (float): −mean L_K in nats per image.
    elbo_nll (float): −mean of the single-sample bounds (a stochastic −ELBO) in nats.
    k (int): importance samples per image.
    num_images (int): images evaluated.
    per_image (torch.Tensor): ``[N]`` L_K of each image (CPU float64).
    """

    nll: float
    elbo_nll: float
    k: int
    num_images: int
    per_image: torch.Tensor

    def to_dict(self) -> dict:
        return {"nll": self.nll, "elbo_nll": self.elbo_nll, "k": self.k, "num_images": self.num_images}


@torch.no_grad()
def importance_weighted_nll(
    model: nn.Module,
    images: torch.Tensor,
    k: int = 1000,
    batch_size: int = 2000,
    device: Optional[Union[str, torch.device]] = None,
    seed: Optional[int] = 0,
) -> IWResult:
    """The importance-weighted NLL bound of ``images`` under ``model``.

    model (nn.Module): has ``log_weights(x) -> [B]`` (one log p(x, z) − log q(z | x) per row,
        z drawn from q), and optionally ``log_weights_repeated(x, r) -> [B · r]`` (the same for
        ``x.repeat_interleave(r, 0)``, cheaper: the NVAE encodes each image once); run in eval
        mode (restored afterwards).
    images (torch.Tensor): ``[N, ...]`` images in the model's input format.
    k (int): importance samples per image (≥ 1).
    batch_size (int): rows (image copies) per forward pass; k larger than it is split.
    device (str | torch.device | None): where to run (default: the model's device).
    seed (int | None): seeds torch's generator for a reproducible figure (None: leave it).
    RETURNS (IWResult): the NLL bound and the single-sample bound.
    """
    if k < 1:
        raise NVAEError(f"k must be ≥ 1, got {k}")
    if batch_size < 1:
        raise NVAEError(f"batch_size must be ≥ 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) or images.shape[0] == 0:
        raise NVAEError("importance_weighted_nll needs a non-empty tensor of images")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        per_pass_images = max(1, batch_size // k)  # whole images per pass when k fits
        samples_per_pass = min(k, batch_size)
        bounds, singles = [], []
        for start in range(0, images.shape[0], per_pass_images):
            x = images[start : start + per_pass_images].to(device)
            n = x.shape[0]
            chunks = []
            done = 0
            while done < k:
                r = min(samples_per_pass, k - done)
                if hasattr(model, "log_weights_repeated"):
                    lw = model.log_weights_repeated(x, r)
                else:
                    lw = model.log_weights(x.repeat_interleave(r, dim=0))
                lw = lw.double().view(n, r)
                if not torch.isfinite(lw).all():
                    raise NVAEError("non-finite importance weight: the model produced NaN/inf")
                chunks.append(lw.cpu())
                done += r
            lw = torch.cat(chunks, dim=1)
            bounds.append(torch.logsumexp(lw, dim=1) - math.log(k))
            singles.append(lw.mean(dim=1))
        per_image = torch.cat(bounds)
        single = torch.cat(singles)
    finally:
        model.train(was_training)
    return IWResult(
        nll=-per_image.mean().item(),
        elbo_nll=-single.mean().item(),
        k=k,
        num_images=int(per_image.shape[0]),
        per_image=per_image,
    )


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> "torch.Tensor":
    """Tile ``[N, C, H, W]`` images in [0, 1] into one ``[H', W', C]`` array (white gaps)."""
    if images.dim() != 4:
        raise NVAEError(f"image_grid expects [N, C, H, W], got {tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.ones(c, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid.permute(1, 2, 0)


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: int = 8, title: Optional[str] = None) -> Path:
    """Write a PNG grid of ``[N, C, H, W]`` images in [0, 1] (matplotlib, no display needed).

    RETURNS (Path): the file written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = grid.shape[:2]
    fig = plt.figure(figsize=(w / 40 + 0.2, h / 40 + (0.5 if title else 0.2)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return path
