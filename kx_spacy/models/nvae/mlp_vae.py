"""The IWAE paper's one-stochastic-layer MLP VAE (Burda, Grosse & Salakhutdinov 2016):
784–200–200–50 with tanh units, a diagonal normal posterior and Bernoulli pixels. The baseline
every NVAE figure is reported beside."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NVAEError
from .distributions import DiagonalNormal


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """MLP VAE with Bernoulli output.

    image_shape (Sequence[int]): ``(C, H, W)`` of the images (784 pixels for MNIST).
    hidden (Sequence[int]): hidden widths of the encoder (mirrored in the decoder).
    latent (int): latent dimensions.
    """

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (200, 200),
                 latent: int = 50) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        d = 1
        for s in self.image_shape:
            d *= s
        self.encoder = _mlp([d, *hidden, 2 * latent])
        self.decoder = _mlp([latent, *reversed(list(hidden)), d])
        self.latent = latent

    def check_images(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.image_shape:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise NVAEError(f"MLPVAE expects images of shape [B, {', '.join(map(str, self.image_shape))}], got {shape}")
        if not torch.isfinite(x).all() or x.min().item() < 0 or x.max().item() > 1:
            raise NVAEError("MLPVAE: image values must be finite and lie in [0, 1]")

    def _pass(self, x: torch.Tensor):
        self.check_images(x)
        flat = x.flatten(1)
        mu, log_sigma = self.encoder(flat).chunk(2, dim=1)
        q = DiagonalNormal(mu, log_sigma, clamp=False)
        q.sigma = log_sigma.float().exp()  # plain normal, no floor (as in the IWAE paper)
        z = q.sample()
        logits = self.decoder(z.to(flat.dtype)).float()
        recon = -F.binary_cross_entropy_with_logits(logits, flat.float(), reduction="none").sum(1)
        return q, z, recon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` negative ELBO (analytic KL), in nats."""
        q, _, recon = self._pass(x)
        kl = 0.5 * (q.mu ** 2 + q.sigma ** 2 - 1).sum(1) - q.sigma.log().sum(1)
        return kl - recon

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` one importance weight log p(x, z) − log q(z | x)."""
        q, z, recon = self._pass(x)
        prior = DiagonalNormal.standard(z)
        return recon + prior.log_prob(z).sum(1) - q.log_prob(z).sum(1)

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Pixel probabilities of images decoded from ``N(0, temperature²)``."""
        if not temperature > 0:
            raise NVAEError(f"temperature must be > 0, got {temperature!r}")
        dev = next(self.parameters()).device
        z = torch.randn(num_samples, self.latent, device=dev) * temperature
        return torch.sigmoid(self.decoder(z)).view(num_samples, *self.image_shape)
