"""The layout encoder τ_θ of the semantic-mixing LDM: LDM's SpatialRescaler (docs/method.md §8.2).

s = τ_θ(L): the one-hot layout (B, C, H, W) is resized ``n_stages`` times by ``multiplier`` (bilinear,
align_corners False: for even sizes and ×0.5 that is a 2×2 mean), then mapped to ``out_channels`` by a
bias-free 1×1 conv (``channel_mapper``). s is concatenated with the latent at the UNet input.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SpatialRescaler(nn.Module):
    """τ_θ: bilinear downscaling by ``multiplier**n_stages``, then a 1×1 conv C → out_channels."""

    def __init__(
        self,
        n_stages: int = 2,
        method: str = "bilinear",
        multiplier: float = 0.5,
        in_channels: int = 3,
        out_channels: int = 3,
        bias: bool = False,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        operations: ModuleType | Any = nn,
    ):
        super().__init__()
        if method not in ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area"):
            raise ValueError(f"SpatialRescaler: unknown interpolation method {method!r}")
        self.n_stages, self.method, self.multiplier = n_stages, method, multiplier
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel_mapper = operations.Conv2d(in_channels, out_channels, 1, bias=bias, dtype=dtype, device=device)

    @property
    def downscale_factor(self) -> float:
        return 1.0 / self.multiplier**self.n_stages

    def _rescale(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) one-hot layout (float) → (B, out_channels, H·m^n, W·m^n)."""
        return self.channel_mapper(self._rescale(x))

    def encode_labels(self, labels: torch.Tensor, unknown: int | None = None) -> torch.Tensor:
        """(B,H,W) int64 class ids → τ_θ(one_hot(labels)), without materialising the one-hot tensor.

        The 1×1 conv and the per-channel interpolation are both linear, so they commute: the conv is
        applied first as a per-pixel lookup of its weight columns (out_channels wide instead of C),
        then the resizing. Pixels equal to ``unknown`` get an all-zero one-hot vector (no class).
        Ids outside 0..C−1 (other than ``unknown``) are an error.
        """
        if labels.dtype != torch.int64 or labels.ndim != 3:
            raise ValueError(f"labels must be (B,H,W) int64, got {tuple(labels.shape)} {labels.dtype}")
        weight = self.channel_mapper.weight
        table = weight.reshape(self.out_channels, self.in_channels).t().to(labels.device, torch.float32)
        valid = (labels >= 0) & (labels < self.in_channels)
        if unknown is not None:
            valid |= labels == unknown
        if not bool(valid.all()):
            bad = torch.unique(labels[~valid])[:8].tolist()
            raise ValueError(f"layout ids {bad} are outside the layout encoder's {self.in_channels} classes")
        if unknown is not None:  # row C of the table: the all-zero one-hot vector
            table = torch.cat([table, torch.zeros_like(table[:1])])
            labels = labels.masked_fill(labels == unknown, self.in_channels)
        code = self._rescale(table[labels].permute(0, 3, 1, 2))
        if self.channel_mapper.bias is not None:
            code = code + self.channel_mapper.bias.to(code)[None, :, None, None]
        return code
