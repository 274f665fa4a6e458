"""Residual cells of the NVAE towers and the cells that join the two towers.

- ``EncoderCell``: BN–Swish–conv3×3, BN–Swish–conv3×3, squeeze-excitation; the residual branch
  is scaled by 0.1 (stride 2 halves the size and the skip becomes a factorised reduction).
- ``DecoderCell``: BN, 1×1 expand (×E) BN–Swish, 5×5 depthwise BN–Swish, 1×1 project, BN,
  squeeze-excitation; up-sampling cells start with a nearest 2× resize.
- ``EncoderCombiner``: encoder feature + 1×1(decoder feature) → the posterior's input.
- ``DecoderCombiner``: 1×1(concat(decoder feature, z)) → the next decoder feature.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (
    BN_MOMENTUM,
    BNSwish,
    FactorizedReduce,
    SqueezeExcite,
    UpSkip,
    WNConv2d,
    batch_norm,
)

#: scale of the residual branch at initialisation (keeps a deep tower near the identity)
RESIDUAL_SCALE = 0.1


class EncoderCell(nn.Module):
    """Bottom-up residual cell (BN–Swish–conv ×2 + SE).

    in_channels (int): input channels.
    out_channels (int): output channels (2× in_channels when down-sampling).
    downsample (bool): stride 2 in the first convolution, factorised-reduce skip.
    use_se (bool): append squeeze-excitation to the residual branch.
    bn_momentum (float): batch-norm momentum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: bool = False,
        use_se: bool = True,
        bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        if downsample:
            self.skip: nn.Module = FactorizedReduce(in_channels, out_channels)
        elif in_channels != out_channels:
            self.skip = WNConv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()
        layers = [
            BNSwish(in_channels, bn_momentum),
            WNConv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            BNSwish(out_channels, bn_momentum),
            WNConv2d(out_channels, out_channels, 3, padding=1),
        ]
        if use_se:
            layers.append(SqueezeExcite(out_channels))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


class DecoderCell(nn.Module):
    """Top-down residual cell (1×1 expand, 5×5 depthwise, 1×1 project, SE).

    in_channels (int): input channels.
    out_channels (int): output channels (in_channels // 2 when up-sampling).
    expansion (int): width multiplier of the inverted bottleneck (6 in the paper, 3 in the
        up-sampling post-processing cells).
    upsample (bool): nearest 2× before the bottleneck, 1×1 conv on the up-sampled skip.
    use_se (bool): append squeeze-excitation.
    bn_momentum (float): batch-norm momentum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 6,
        upsample: bool = False,
        use_se: bool = True,
        bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        self.upsample = upsample
        if upsample:
            self.skip: nn.Module = UpSkip(in_channels, out_channels)
        elif in_channels != out_channels:
            self.skip = WNConv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()
        hidden = in_channels * expansion
        layers = [
            batch_norm(in_channels, bn_momentum),
            WNConv2d(in_channels, hidden, 1, bias=False, weight_norm=False),
            BNSwish(hidden, bn_momentum),
            WNConv2d(hidden, hidden, 5, padding=2, groups=hidden, bias=False, weight_norm=False),
            BNSwish(hidden, bn_momentum),
            WNConv2d(hidden, out_channels, 1, bias=False, weight_norm=False),
            batch_norm(out_channels, bn_momentum),
        ]
        if use_se:
            layers.append(SqueezeExcite(out_channels))
        self.branch = nn.Sequential(*layers)

    #: branch layers before the depthwise convolution (BN, 1×1 expand, BN–Swish): pointwise,
    #: so an up-sampling cell runs them before the nearest 2× resize (see forward)
    POINTWISE_PREFIX = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.upsample:
            return self.skip(x) + RESIDUAL_SCALE * self.branch(x)
        # Nearest 2× resizing copies each pixel into a 2×2 block, so it commutes with every
        # per-pixel layer (1×1 convolutions, Swish) and leaves batch statistics unchanged
        # (the same mean and biased variance; only the running variance's n/(n−1) correction
        # sees 4× more pixels). The skip's 1×1 convolution and the branch's pointwise prefix
        # therefore run at the input size and are resized after: the same function and
        # gradients as resizing first, at a quarter of their cost.
        up = self.skip.conv(x)
        h = x
        for layer in self.branch[: self.POINTWISE_PREFIX]:
            h = layer(h)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for layer in self.branch[self.POINTWISE_PREFIX :]:
            h = layer(h)
        return F.interpolate(up, scale_factor=2, mode="nearest") + RESIDUAL_SCALE * h


class EncoderCombiner(nn.Module):
    """``enc + 1×1(dec)``: where the bottom-up feature meets the top-down state."""

    def __init__(self, enc_channels: int, dec_channels: int) -> None:
        super().__init__()
        self.conv = WNConv2d(dec_channels, enc_channels, 1)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return enc + self.conv(dec)


class DecoderCombiner(nn.Module):
    """``1×1(concat(dec, z))``: feeds a latent group into the top-down state."""

    def __init__(self, dec_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.conv = WNConv2d(dec_channels + latent_channels, dec_channels, 1)

    def forward(self, dec: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([dec, z], dim=1))
