"""Sizes and switches of an NVAE, validated once, with a tiny preset for tests."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List

from ...errors import KxError


class NVAEError(KxError):
    """An NVAE setting, input or checkpoint is invalid (the message says which and why)."""


OUTPUTS = ("bernoulli", "logistic_mixture")


@dataclass
class NVAEConfig:
    """Architecture of an NVAE (Vahdat & Kautz 2020), sizes configurable.

    image_channels (int): channels of the images (1 grey / binary, 3 colour).
    image_size (int): height = width of the images.
    padding (int): zero padding on each side before the encoder (28 + 2·2 = 32 as in the
        paper's MNIST set-up); the decoder's output is cropped back.
    output (str): "bernoulli" (binarised images) or "logistic_mixture" (grey / colour).
    num_mixtures (int): logistic mixture components.
    num_bits (int): bits per sub-pixel for the logistic mixture.
    channels (int): channels after the stem; doubled at every down-sampling.
    num_preprocess_blocks (int): down-sampling blocks before the first latent scale.
    num_preprocess_cells (int): cells per pre-processing block (the last one down-samples).
    num_latent_scales (int): spatial scales that carry latent groups.
    num_groups_per_scale (int): latent groups at the finest latent scale.
    adaptive_groups (bool): halve the number of groups at each coarser scale (the paper's
        --ada_groups), never below min_groups_per_scale.
    min_groups_per_scale (int): floor of the adaptive halving.
    num_latent_per_group (int): latent channels per group.
    num_cells_per_group_enc (int): encoder cells per group.
    num_cells_per_group_dec (int): decoder cells per group.
    num_postprocess_blocks (int): up-sampling blocks after the last latent scale.
    num_postprocess_cells (int): cells per post-processing block (the first one up-samples).
    decoder_expansion (int): inverted-bottleneck width multiplier of the decoder cells.
    up_expansion (int): the same for the up-sampling cells (3 in the paper; 1 makes the
        full-resolution cells of a CPU model cheap).
    channels_last (bool): run convolutions in channels-last memory format (much faster
        depthwise convolutions on CPU; the caller converts the module with
        ``module.to(memory_format=torch.channels_last)``).
    use_se (bool): squeeze-excitation in every cell.
    residual_posterior (bool): the encoder predicts shifts of the prior (paper: --res_dist).
    bn_momentum (float): batch-norm momentum (0.05 in the paper).
    power_iterations (int): power-iteration steps per spectral-regulariser call (×10 on the
        first call).
    """

    image_channels: int = 1
    image_size: int = 28
    padding: int = 0
    output: str = "bernoulli"
    num_mixtures: int = 10
    num_bits: int = 8
    channels: int = 16
    num_preprocess_blocks: int = 1
    num_preprocess_cells: int = 2
    num_latent_scales: int = 2
    num_groups_per_scale: int = 5
    adaptive_groups: bool = True
    min_groups_per_scale: int = 1
    num_latent_per_group: int = 20
    num_cells_per_group_enc: int = 1
    num_cells_per_group_dec: int = 1
    num_postprocess_blocks: int = 1
    num_postprocess_cells: int = 2
    decoder_expansion: int = 6
    up_expansion: int = 3
    channels_last: bool = False
    use_se: bool = True
    residual_posterior: bool = True
    bn_momentum: float = 0.05
    power_iterations: int = 1

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def tiny(cls, **overrides: Any) -> "NVAEConfig":
        """A model of a few thousand parameters for tests (28×28, 2 scales, 1 group each)."""
        base = dict(
            channels=4, num_preprocess_blocks=1, num_preprocess_cells=1, num_latent_scales=2,
            num_groups_per_scale=1, adaptive_groups=False, num_latent_per_group=2,
            num_postprocess_blocks=1, num_postprocess_cells=1, decoder_expansion=2,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "NVAEConfig":
        """Build from a mapping (e.g. a config section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise NVAEError(f"Unknown NVAE setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def padded_size(self) -> int:
        return self.image_size + 2 * self.padding

    @property
    def groups_per_scale(self) -> List[int]:
        """Groups at each latent scale, finest first."""
        out, n = [], self.num_groups_per_scale
        for _ in range(self.num_latent_scales):
            out.append(n)
            if self.adaptive_groups:
                n = max(self.min_groups_per_scale, n // 2)
        return out

    def validate(self) -> None:
        """Raise NVAEError for a setting that cannot build a working model."""
        if self.output not in OUTPUTS:
            raise NVAEError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        positive = [
            "image_channels", "image_size", "channels", "num_preprocess_cells", "num_latent_scales",
            "num_groups_per_scale", "min_groups_per_scale", "num_latent_per_group",
            "num_postprocess_cells", "decoder_expansion", "up_expansion", "num_mixtures", "num_bits",
            "power_iterations",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise NVAEError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("padding", "num_preprocess_blocks", "num_postprocess_blocks",
                     "num_cells_per_group_enc", "num_cells_per_group_dec"):
            if getattr(self, name) < 0:
                raise NVAEError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.num_preprocess_blocks != self.num_postprocess_blocks:
            raise NVAEError(
                "num_preprocess_blocks and num_postprocess_blocks must be equal (the decoder "
                f"must come back to the input size), got {self.num_preprocess_blocks} and "
                f"{self.num_postprocess_blocks}"
            )
        downs = self.num_preprocess_blocks + self.num_latent_scales - 1
        if self.padded_size % (2 ** downs):
            raise NVAEError(
                f"image_size + 2·padding = {self.padded_size} must be divisible by 2^{downs} "
                f"({self.num_preprocess_blocks} pre-processing blocks and "
                f"{self.num_latent_scales} latent scales halve it {downs} times)"
            )
        if self.output == "bernoulli" and self.image_channels < 1:
            raise NVAEError("bernoulli output needs at least one channel")
        if not 0 < self.bn_momentum <= 1:
            raise NVAEError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
