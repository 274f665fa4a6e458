"""Building blocks of the NVAE towers: weight-normalised convolutions, batch norm with the
paper's momentum, Swish, squeeze-excitation, the factorised 2× reduction and the soft clamp.

Pure torch; no device is assumed (parameters follow the module, buffers travel with it).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Batch-norm momentum (the paper lowers PyTorch's 0.1 to 0.05 so that the running statistics
#: follow the slowly moving features of a VAE and evaluation matches training).
BN_MOMENTUM = 0.05
BN_EPS = 1e-5


def soft_clamp(x: torch.Tensor, bound: float = 5.0) -> torch.Tensor:
    """Smoothly squash ``x`` into ``(-bound, bound)``: ``bound · tanh(x / bound)``.

    Keeps the gradient everywhere (a hard clamp kills it) and leaves small values nearly
    unchanged; used on the posterior and prior ``μ`` and ``log σ``.

    x (torch.Tensor): any tensor.
    bound (float): the half-width of the range.
    RETURNS (torch.Tensor): the clamped tensor.
    """
    return torch.tanh(x / bound) * bound


def batch_norm(channels: int, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    """A BatchNorm2d with the NVAE momentum and eps.

    channels (int): number of channels.
    momentum (float): running-statistics momentum.
    RETURNS (nn.BatchNorm2d): the layer.
    """
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


class WNConv2d(nn.Conv2d):
    """A 2-D convolution, optionally weight-normalised.

    With ``weight_norm`` the effective kernel is ``exp(g) · v / ‖v‖`` per output channel,
    with ``log_gain`` (= g) initialised to ``log ‖v‖`` so that the layer starts as the plain
    convolution. The effective kernel (``effective_weight()``) is what the spectral
    regulariser reads.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        weight_norm: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            groups=groups, bias=bias,
        )
        self.weight_norm = weight_norm
        if weight_norm:
            with torch.no_grad():
                norm = self.weight.flatten(1).norm(dim=1).clamp_min(1e-8)
            self.log_gain = nn.Parameter(norm.log())
        else:
            self.register_parameter("log_gain", None)

    #: the kernel computed once for a block of passes (``cached_weights``); None: compute
    _cached_weight: Optional[torch.Tensor] = None

    def compute_weight(self) -> torch.Tensor:
        """The kernel from the current parameters (weight-normalised when enabled)."""
        if not self.weight_norm:
            return self.weight
        norm = self.weight.flatten(1).norm(dim=1).clamp_min(1e-5)
        scale = self.log_gain.exp() / norm
        return self.weight * scale.view(-1, 1, 1, 1)

    def effective_weight(self) -> torch.Tensor:
        """The kernel the convolution applies: the cached one inside ``cached_weights``,
        else computed from the current parameters."""
        if self._cached_weight is not None:
            return self._cached_weight
        return self.compute_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation,
            self.groups,
        )


@contextmanager
def cached_weights(convs: Sequence[WNConv2d]) -> Iterator[None]:
    """Compute every kernel of ``convs`` once for the enclosed passes (one training step: the
    forward pass and the spectral regulariser then share the weight-normalised kernels and
    their graph, instead of normalising each weight twice). The parameters must not change
    inside the block; the cache is dropped on exit, also after an error.

    convs (Sequence[WNConv2d]): the convolutions (e.g. ``conv_layers(model)``).
    """
    try:
        for m in convs:
            m._cached_weight = m.compute_weight() if m.weight_norm else None
        yield
    finally:
        for m in convs:
            m._cached_weight = None


class BNSwish(nn.Sequential):
    """Batch norm followed by Swish (x · sigmoid(x))."""

    def __init__(self, channels: int, momentum: float = BN_MOMENTUM) -> None:
        super().__init__(batch_norm(channels, momentum), nn.SiLU())


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gates from the spatially averaged features.

    Hidden width ``max(C // 16, 4)``, ReLU then sigmoid gates, as in the NVAE paper.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 16, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class FactorizedReduce(nn.Module):
    """A stride-2 skip path: four 1×1 stride-2 convolutions on shifted inputs, concatenated.

    Used as the skip connection of down-sampling cells (out_channels must split four ways,
    the last part taking the remainder).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        part = out_channels // 4
        sizes = [part, part, part, out_channels - 3 * part]
        self.convs = nn.ModuleList(
            WNConv2d(in_channels, s, 1, stride=2, bias=True) for s in sizes
        )

    #: where each part's 1×1 kernel reads in the 2×2 window of the fused form (row, column)
    OFFSETS = ((0, 0), (1, 1), (0, 1), (1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One 2×2 stride-2 convolution on the padded input whose kernel is zero except each
        # part's 1×1 kernel at that part's pixel of the 2×2 window: the same function and
        # gradients as the four shifted 1×1 convolutions and their concatenation
        # (forward_plain, tested equal), in one convolution instead of four slices, four
        # convolutions and a copy (~2.5× cheaper on one CPU thread at 8 → 16 channels, 28×28).
        x = F.silu(x)
        shifted = F.pad(x, (0, 1, 0, 1))  # H + 1: the 2×2 stride-2 output size is ceil(H / 2)
        kernels = []
        for conv, (r, c) in zip(self.convs, self.OFFSETS):
            kernels.append(F.pad(conv.effective_weight(), (c, 1 - c, r, 1 - r)))
        bias = torch.cat([conv.bias for conv in self.convs])
        return F.conv2d(shifted, torch.cat(kernels), bias, stride=2)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The reference form: four shifted 1×1 stride-2 convolutions, concatenated."""
        x = F.silu(x)
        shifted = F.pad(x, (0, 1, 0, 1))
        outs: List[torch.Tensor] = [
            self.convs[0](x),
            self.convs[1](shifted[:, :, 1:, 1:]),
            self.convs[2](shifted[:, :, :-1, 1:]),
            self.convs[3](shifted[:, :, 1:, :-1]),
        ]
        return torch.cat(outs, dim=1)


class UpSkip(nn.Module):
    """The skip path of an up-sampling cell: nearest 2× then a 1×1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = WNConv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def conv_layers(module: nn.Module) -> List[WNConv2d]:
    """Every WNConv2d below ``module``, in registration order."""
    return [m for m in module.modules() if isinstance(m, WNConv2d)]


def bn_layers(module: nn.Module) -> List[nn.BatchNorm2d]:
    """Every BatchNorm2d below ``module`` (SyncBatchNorm included), in registration order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


LOG_2PI = math.log(2 * math.pi)
