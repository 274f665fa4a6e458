"""The NVAE: a bottom-up encoder tower and a top-down decoder tower over several scales,
several latent groups per scale, residual normal posteriors.

Data flow (B images, finest scale first in the encoder, coarsest first in the decoder)::

    x → stem → pre-processing (↓) → encoder groups (↓ between scales) → encoder0
    prior_ftr0 ⊕ z_top → [decoder cells → prior(h), posterior(enc_combiner(feat, h)) ⊕ z]·G
      (↑ between scales) → post-processing (↑) → image likelihood

``forward`` returns what training and evaluation need (the reconstruction log-likelihood,
the KL of every group, and the sample-based log q and log p for importance weighting); the
training objective with warm-up, balancing and the regularisers is ``objective``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cells import DecoderCell, DecoderCombiner, EncoderCell, EncoderCombiner
from .config import NVAEConfig, NVAEError
from .distributions import (
    DiagonalNormal,
    image_distribution,
    output_channels,
    sum_per_example,
)
from .layers import WNConv2d, bn_layers, cached_weights, conv_layers
from .regularizers import (
    SpectralRegularizer,
    balanced_kl,
    batchnorm_penalty,
    kl_balance_alpha,
)


@dataclass
class NVAEOutput:
    """What one pass over a batch gives.

    recon_log_prob (torch.Tensor): ``[B]`` log p(x | z).
    kl_groups (torch.Tensor): ``[B, G]`` analytic KL of each group (top-down order).
    log_q (torch.Tensor): ``[B]`` Σ log q(z_g | x, z_<g) at the sampled z.
    log_p (torch.Tensor): ``[B]`` Σ log p(z_g | z_<g) at the sampled z.
    likelihood: the image distribution (``mean()``, ``sample()``), for reconstructions.
    """

    recon_log_prob: torch.Tensor
    kl_groups: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    likelihood: object

    @property
    def elbo(self) -> torch.Tensor:
        """``[B]`` evidence lower bound with the analytic KL."""
        return self.recon_log_prob - self.kl_groups.sum(dim=1)

    @property
    def log_weight(self) -> torch.Tensor:
        """``[B]`` log p(x, z) − log q(z | x) at the sampled z (one importance weight)."""
        return self.recon_log_prob + self.log_p - self.log_q


@dataclass
class NVAELoss:
    """The training objective and its parts (all scalars except kl_per_group)."""

    loss: torch.Tensor
    nelbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    kl_per_group: torch.Tensor
    spectral: torch.Tensor
    bn: torch.Tensor


def _crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    return x[..., pad:-pad, pad:-pad] if pad else x


class NVAE(nn.Module):
    """Deep hierarchical VAE (Vahdat & Kautz, NeurIPS 2020), no normalising flows.

    config (NVAEConfig): sizes and switches (``NVAEConfig.tiny()`` for tests).
    """

    def __init__(self, config: NVAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        nz = c.num_latent_per_group
        mom = c.bn_momentum
        ch = c.channels
        self.stem = WNConv2d(c.image_channels, ch, 3, padding=1)

        pre: List[nn.Module] = []
        for _ in range(c.num_preprocess_blocks):
            for i in range(c.num_preprocess_cells):
                down = i == c.num_preprocess_cells - 1
                out = ch * 2 if down else ch
                pre.append(EncoderCell(ch, out, downsample=down, use_se=c.use_se, bn_momentum=mom))
                ch = out
        self.preprocess = nn.Sequential(*pre)

        # bottom-up tower: groups per scale, finest first
        gps = c.groups_per_scale
        self.scale_channels: List[int] = []
        self.enc_groups = nn.ModuleList()
        self.enc_down = nn.ModuleList()
        for s, n_groups in enumerate(gps):
            self.scale_channels.append(ch)
            for _ in range(n_groups):
                self.enc_groups.append(
                    nn.Sequential(*[
                        EncoderCell(ch, ch, use_se=c.use_se, bn_momentum=mom)
                        for _ in range(c.num_cells_per_group_enc)
                    ])
                )
            if s < len(gps) - 1:
                self.enc_down.append(
                    EncoderCell(ch, ch * 2, downsample=True, use_se=c.use_se, bn_momentum=mom)
                )
                ch *= 2
        self.encoder0 = nn.Sequential(nn.ELU(), WNConv2d(ch, ch, 1), nn.ELU())

        # top-down tower: groups coarsest first
        self.groups_top_down = list(reversed(gps))
        self.num_groups = sum(gps)
        top_size = c.padded_size // 2 ** (c.num_preprocess_blocks + c.num_latent_scales - 1)
        self.prior_ftr0 = nn.Parameter(torch.rand(ch, top_size, top_size))
        self.enc_sampler = nn.ModuleList()
        self.dec_sampler = nn.ModuleList()
        self.enc_combiners = nn.ModuleList()
        self.dec_combiners = nn.ModuleList()
        self.dec_groups = nn.ModuleList()
        self.dec_up = nn.ModuleList()
        self.latent_shapes: List[tuple] = []
        size = top_size
        for s, n_groups in enumerate(self.groups_top_down):
            for g in range(n_groups):
                first = s == 0 and g == 0
                self.latent_shapes.append((nz, size, size))
                self.enc_sampler.append(WNConv2d(ch, 2 * nz, 3, padding=1))
                self.dec_combiners.append(DecoderCombiner(ch, nz))
                if not first:
                    self.dec_groups.append(
                        nn.Sequential(*[
                            DecoderCell(ch, ch, c.decoder_expansion, use_se=c.use_se, bn_momentum=mom)
                            for _ in range(c.num_cells_per_group_dec)
                        ])
                    )
                    self.dec_sampler.append(nn.Sequential(nn.ELU(), WNConv2d(ch, 2 * nz, 1)))
                    self.enc_combiners.append(EncoderCombiner(ch, ch))
            if s < len(self.groups_top_down) - 1:
                self.dec_up.append(
                    DecoderCell(ch, ch // 2, c.up_expansion, upsample=True, use_se=c.use_se, bn_momentum=mom)
                )
                ch //= 2
                size *= 2

        post: List[nn.Module] = []
        for _ in range(c.num_postprocess_blocks):
            for i in range(c.num_postprocess_cells):
                up = i == 0
                out = ch // 2 if up else ch
                post.append(
                    DecoderCell(ch, out, c.up_expansion if up else c.decoder_expansion, upsample=up,
                                use_se=c.use_se, bn_momentum=mom)
                )
                ch = out
        self.postprocess = nn.Sequential(*post)
        self.image_conditional = nn.Sequential(
            nn.ELU(), WNConv2d(ch, output_channels(c.output, c.image_channels, c.num_mixtures), 3, padding=1)
        )

        self._convs = conv_layers(self)  # plain list: not registered twice
        self._bns = bn_layers(self)
        self.spectral = SpectralRegularizer(
            [(m.weight.shape[0], m.weight[0].numel()) for m in self._convs], c.power_iterations
        )
        self.register_buffer("kl_alpha", kl_balance_alpha(self.groups_top_down))

    # ----------------------------------------------------------------- checks
    def check_images(self, x: torch.Tensor) -> None:
        """Raise NVAEError unless ``x`` is ``[B, C, H, W]`` of this model, finite, in [0, 1]."""
        c = self.config
        want = (c.image_channels, c.image_size, c.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise NVAEError(f"NVAE expects images of shape [B, {want[0]}, {want[1]}, {want[2]}], got {shape}")
        if x.shape[0] < 1:
            raise NVAEError("NVAE got an empty batch")
        if not torch.isfinite(x).all():
            raise NVAEError("images contain NaN or inf")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise NVAEError(f"image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] (scale uint8 by 1/255)")

    # ----------------------------------------------------------------- passes
    def _decode_output(self, h: torch.Tensor):
        params = _crop(self.image_conditional(self.postprocess(h)), self.config.padding)
        c = self.config
        return image_distribution(c.output, params, c.image_channels, c.num_mixtures, c.num_bits)

    def forward(self, x: torch.Tensor, repeats: int = 1) -> NVAEOutput:
        """Encode ``x`` (``[B, C, H, W]`` in [0, 1]), sample every group from its posterior and
        decode; see NVAEOutput.

        repeats (int): draw this many posterior samples per image (rows image-major, as
            ``x.repeat_interleave(repeats, 0)``): the bottom-up pass runs once per image and its
            features are repeated for the top-down passes (the same result as repeating ``x``
            in eval mode and in training mode, where a repeated batch has the same BN statistics).
        """
        self.check_images(x)
        if repeats < 1:
            raise NVAEError(f"repeats must be ≥ 1, got {repeats}")
        c = self.config
        inp = 2.0 * x - 1.0
        if c.padding:
            inp = F.pad(inp, (c.padding,) * 4, value=-1.0)
        if c.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        h = self.preprocess(self.stem(inp))
        feats: List[torch.Tensor] = []
        gi = 0
        for s, n_groups in enumerate(c.groups_per_scale):
            for g in range(n_groups):
                h = self.enc_groups[gi](h)
                gi += 1
                if not (s == len(c.groups_per_scale) - 1 and g == n_groups - 1):
                    feats.append(h)
            if s < len(self.enc_down):
                h = self.enc_down[s](h)
        feats.reverse()  # top-down order, one per group below the top

        mu, log_sigma = self.enc_sampler[0](self.encoder0(h)).chunk(2, dim=1)
        if repeats > 1:
            feats = [f.repeat_interleave(repeats, dim=0) for f in feats]
            mu, log_sigma = mu.repeat_interleave(repeats, dim=0), log_sigma.repeat_interleave(repeats, dim=0)
            x = x.repeat_interleave(repeats, dim=0)
        q = DiagonalNormal(mu, log_sigma)
        z = q.sample()
        p = DiagonalNormal.standard(z)
        kls = [sum_per_example(q.kl(p))]
        log_q = sum_per_example(q.log_prob(z))
        log_p = sum_per_example(p.log_prob(z))
        d = self.prior_ftr0.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        d = self.dec_combiners[0](d, z.to(d.dtype))
        j, up = 1, 0
        for s, n_groups in enumerate(self.groups_top_down):
            for g in range(n_groups):
                if s == 0 and g == 0:
                    continue
                d = self.dec_groups[j - 1](d)
                p_mu, p_ls = self.dec_sampler[j - 1](d).chunk(2, dim=1)
                p = DiagonalNormal(p_mu, p_ls)
                e_mu, e_ls = self.enc_sampler[j](self.enc_combiners[j - 1](feats[j - 1], d)).chunk(2, dim=1)
                q = DiagonalNormal.residual(p, e_mu, e_ls) if c.residual_posterior else DiagonalNormal(e_mu, e_ls)
                z = q.sample()
                kls.append(sum_per_example(q.kl(p)))
                log_q = log_q + sum_per_example(q.log_prob(z))
                log_p = log_p + sum_per_example(p.log_prob(z))
                d = self.dec_combiners[j](d, z.to(d.dtype))
                j += 1
            if s < len(self.dec_up):
                d = self.dec_up[up](d)
                up += 1
        likelihood = self._decode_output(d)
        return NVAEOutput(
            recon_log_prob=likelihood.log_prob(x),
            kl_groups=torch.stack(kls, dim=1),
            log_q=log_q,
            log_p=log_p,
            likelihood=likelihood,
        )

    def log_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` one importance weight log p(x, z) − log q(z | x) per image (z ~ q)."""
        return self.forward(x).log_weight

    def log_weights_repeated(self, x: torch.Tensor, repeats: int) -> torch.Tensor:
        """``[B · repeats]`` importance weights, ``repeats`` per image (image-major), with one
        bottom-up pass per image (what the IW evaluation uses)."""
        return self.forward(x, repeats=repeats).log_weight

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Images from the prior, every group's noise scaled by ``temperature``.

        num_samples (int): how many images.
        temperature (float): > 0; below 1 trades diversity for quality.
        RETURNS (torch.Tensor): ``[N, C, H, W]`` in [0, 1] (pixel probabilities for the
            Bernoulli output, samples for the logistic mixture).
        """
        if not temperature > 0:
            raise NVAEError(f"temperature must be > 0, got {temperature!r}")
        if num_samples < 1:
            raise NVAEError(f"num_samples must be ≥ 1, got {num_samples}")
        dev = self.prior_ftr0.device
        nz, hs, ws = self.latent_shapes[0]
        z = torch.randn(num_samples, nz, hs, ws, device=dev) * temperature
        d = self.prior_ftr0.unsqueeze(0).expand(num_samples, -1, -1, -1)
        d = self.dec_combiners[0](d, z.to(d.dtype))
        j, up = 1, 0
        for s, n_groups in enumerate(self.groups_top_down):
            for g in range(n_groups):
                if s == 0 and g == 0:
                    continue
                d = self.dec_groups[j - 1](d)
                p_mu, p_ls = self.dec_sampler[j - 1](d).chunk(2, dim=1)
                z = DiagonalNormal(p_mu, p_ls).sample(temperature)
                d = self.dec_combiners[j](d, z.to(d.dtype))
                j += 1
            if s < len(self.dec_up):
                d = self.dec_up[up](d)
                up += 1
        likelihood = self._decode_output(d)
        if self.config.output == "bernoulli":
            return likelihood.mean()
        return likelihood.sample()

    # -------------------------------------------------------------- objective
    def regularizers(self) -> tuple:
        """(spectral term, batch-norm penalty) at the current weights."""
        spectral = self.spectral([m.effective_weight() for m in self._convs])
        return spectral, batchnorm_penalty(self._bns)

    def objective(
        self, x: torch.Tensor, kl_coeff: float = 1.0, reg_coeff: float = 0.0, kl_balance: bool = True
    ) -> NVAELoss:
        """The NVAE training loss on a batch: mean negative ELBO with the KL weighted by
        ``kl_coeff`` (warm-up) and balanced across groups while it is below 1, plus
        ``reg_coeff`` · (spectral term + BN penalty).

        x (torch.Tensor): ``[B, C, H, W]`` images in [0, 1].
        kl_coeff (float): the warm-up weight β in (0, 1].
        reg_coeff (float): the weight λ of the spectral and BN terms (0 disables them).
        kl_balance (bool): balance the groups' KL while β < 1.
        RETURNS (NVAELoss): the loss and its parts (mean over the batch, in nats).
        """
        # the weight-normalised kernels are computed once: the pass and the spectral term share them
        with cached_weights(self._convs if reg_coeff > 0 else ()):
            out = self.forward(x)
            weighted_kl, coeffs = balanced_kl(out.kl_groups, kl_coeff, self.kl_alpha, kl_balance)
            recon = -out.recon_log_prob.mean()
            loss = recon + weighted_kl.mean()
            if reg_coeff > 0:
                spectral, bn = self.regularizers()
                loss = loss + reg_coeff * (spectral + bn)
            else:
                spectral = bn = torch.zeros((), device=x.device)
        kl_mean = out.kl_groups.mean(dim=0)
        return NVAELoss(
            loss=loss,
            nelbo=recon + kl_mean.sum(),
            recon=recon,
            kl=kl_mean.sum(),
            kl_per_group=kl_mean,
            spectral=spectral,
            bn=bn,
        )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


