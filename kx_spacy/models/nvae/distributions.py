"""Distributions of the NVAE: diagonal normals for the latents (with the residual
parameterisation and soft clamps) and the two image likelihoods (Bernoulli for binarised images,
a discretised logistic mixture for grey / colour images).

Every log-density is computed in float32 whatever the autocast dtype, and is summed over all
but the batch dimension by the callers that need it (``sum_per_example``).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .layers import LOG_2PI, soft_clamp

#: σ = exp(log σ) + SIGMA_FLOOR keeps every normal proper (as the reference does)
SIGMA_FLOOR = 1e-2


def sum_per_example(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first."""
    return x.flatten(1).sum(dim=1)


class DiagonalNormal:
    """A diagonal normal with soft-clamped parameters.

    mu (torch.Tensor): means (clamped to ±5 softly).
    log_sigma (torch.Tensor): log standard deviations (clamped to ±5 softly); σ gets a floor of
        SIGMA_FLOOR.
    clamp (bool): apply the soft clamps (set False for parameters already clamped).
    """

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor, clamp: bool = True) -> None:
        self.mu_raw = mu = mu.float()
        self.log_sigma_raw = log_sigma = log_sigma.float()
        if clamp:
            mu = soft_clamp(mu)
            log_sigma = soft_clamp(log_sigma)
        self.mu = mu
        self.sigma = log_sigma.exp() + SIGMA_FLOOR

    @classmethod
    def standard(cls, like: torch.Tensor) -> "DiagonalNormal":
        """N(0, 1) of the shape and device of ``like`` (σ exactly 1, no floor)."""
        zeros = torch.zeros_like(like, dtype=torch.float32)
        d = cls(zeros, zeros, clamp=False)
        d.sigma = torch.ones_like(zeros)
        return d

    @classmethod
    def residual(
        cls, prior: "DiagonalNormal", delta_mu: torch.Tensor, delta_log_sigma: torch.Tensor
    ) -> "DiagonalNormal":
        """The residual posterior of NVAE: ``N(μ_p + Δμ, ≈σ_p · exp(Δlog σ))``.

        The encoder predicts only the shift of the prior's (unclamped) parameters, so that a
        posterior equal to the prior costs nothing and the KL stays well scaled across the
        hierarchy; the sums are soft-clamped as any other normal's parameters.
        """
        return cls(prior.mu_raw + delta_mu.float(), prior.log_sigma_raw + delta_log_sigma.float())

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        """A reparameterised sample, the noise scaled by ``temperature``."""
        # contiguous draws: the same noise whatever the memory format (channels-last or not)
        eps = torch.randn(self.mu.shape, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.sigma * (eps * temperature)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Element-wise log density of ``z``."""
        z = z.float()
        return -0.5 * ((z - self.mu) / self.sigma) ** 2 - self.sigma.log() - 0.5 * LOG_2PI

    def kl(self, other: "DiagonalNormal") -> torch.Tensor:
        """Element-wise analytic KL(self ‖ other)."""
        ratio = self.sigma / other.sigma
        diff = (self.mu - other.mu) / other.sigma
        return 0.5 * (diff * diff + ratio * ratio) - 0.5 - ratio.log()


class BernoulliImage:
    """Independent Bernoulli pixels from logits (binarised images in {0, 1})."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits.float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example log-likelihood (summed over pixels)."""
        return -sum_per_example(
            F.binary_cross_entropy_with_logits(self.logits, x.float(), reduction="none")
        )

    def mean(self) -> torch.Tensor:
        """Pixel probabilities."""
        return torch.sigmoid(self.logits)

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        """Binary sample (temperature does not apply to the pixels)."""
        return torch.bernoulli(self.mean())


class DiscretizedLogisticMixture:
    """A mixture of discretised logistics per pixel (PixelCNN++ likelihood, channels
    independent given the shared mixture component).

    params (torch.Tensor): ``[B, M·(1 + 2C), H, W]``: M mixture logits, then M·C means, then
        M·C log scales.
    channels (int): image channels C.
    num_mixtures (int): M.
    num_bits (int): bits per sub-pixel (8 for 256 grey levels).
    """

    def __init__(self, params: torch.Tensor, channels: int, num_mixtures: int, num_bits: int = 8) -> None:
        params = params.float()
        b, _, h, w = params.shape
        m, c = num_mixtures, channels
        self.logit_pi = params[:, :m]
        self.means = params[:, m : m + m * c].reshape(b, m, c, h, w)
        self.log_scales = params[:, m + m * c :].reshape(b, m, c, h, w).clamp(min=-7.0)
        self.channels, self.num_mixtures = c, m
        self.bins = 2 ** num_bits - 1

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example log-likelihood of images ``x`` in [0, 1] (multiples of 1/(2^bits − 1))."""
        x = (x.float() * 2.0 - 1.0).unsqueeze(1)  # [B, 1, C, H, W] in [-1, 1]
        centred = x - self.means
        inv_s = torch.exp(-self.log_scales)
        half = 1.0 / self.bins
        plus = inv_s * (centred + half)
        minus = inv_s * (centred - half)
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        log_cdf_plus = plus - F.softplus(plus)  # log σ(plus), for the lowest bin
        log_one_minus_cdf_min = -F.softplus(minus)  # log(1 − σ(minus)), for the highest bin
        mid = inv_s * centred
        log_pdf_mid = mid - self.log_scales - 2.0 * F.softplus(mid)  # density approximation
        inner = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp(min=1e-12)),
            log_pdf_mid - math.log(self.bins / 2.0),
        )
        log_probs = torch.where(
            x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner)
        )
        log_probs = log_probs.sum(dim=2) + F.log_softmax(self.logit_pi, dim=1)  # [B, M, H, W]
        return sum_per_example(torch.logsumexp(log_probs, dim=1))

    def sample(self, temperature: float = 1.0) -> torch.Tensor:
        """Images in [0, 1]: a mixture component per pixel, then a logistic sample, binned."""
        b, m, c, h, w = self.means.shape
        gumbel = -torch.log(-torch.log(torch.rand_like(self.logit_pi).clamp(1e-5, 1 - 1e-5)))
        choice = F.one_hot((self.logit_pi + gumbel).argmax(dim=1), m).permute(0, 3, 1, 2)
        sel = choice.unsqueeze(2).to(self.means.dtype)
        mu = (self.means * sel).sum(dim=1)
        log_s = (self.log_scales * sel).sum(dim=1)
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        x = mu + log_s.exp() * temperature * (torch.log(u) - torch.log1p(-u))
        x = ((x.clamp(-1, 1) + 1) / 2 * self.bins).round() / self.bins
        return x

    def mean(self) -> torch.Tensor:
        """The mixture mean of the (continuous) logistics, mapped to [0, 1]."""
        pi = torch.softmax(self.logit_pi, dim=1).unsqueeze(2)
        return (((self.means * pi).sum(dim=1)).clamp(-1, 1) + 1) / 2


def output_channels(kind: str, image_channels: int, num_mixtures: int) -> int:
    """Channels the decoder's last convolution must produce for an output ``kind``."""
    if kind == "bernoulli":
        return image_channels
    return num_mixtures * (1 + 2 * image_channels)


def image_distribution(
    kind: str, params: torch.Tensor, image_channels: int, num_mixtures: int, num_bits: int
):
    """The likelihood object for decoder outputs ``params``."""
    if kind == "bernoulli":
        return BernoulliImage(params)
    return DiscretizedLogisticMixture(params, image_channels, num_mixtures, num_bits)


__all__ = [
    "DiagonalNormal",
    "BernoulliImage",
    "DiscretizedLogisticMixture",
    "image_distribution",
    "output_channels",
    "sum_per_example",
    "SIGMA_FLOOR",
]
