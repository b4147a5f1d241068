"""The first stage ℰ/𝒟 of the semantic-mixing LDM: the VQ-f4 autoencoder (docs/method.md §8.2).

Written from the architecture description, with the module tree (and state-dict keys) of LDM's
``VQModelInterface`` (``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``,
``quantize.embedding``):

* Encoder: 3×3 conv, per level ``num_res_blocks`` ResnetBlocks (+ attention at the listed
  resolutions) and a downsample (zero-pad right/bottom by 1, stride-2 3×3 conv without padding),
  middle ResnetBlock – attention – ResnetBlock, GroupNorm, swish, 3×3 conv to ``z_channels``.
* Decoder: the mirror image with ``num_res_blocks + 1`` blocks per level and nearest ×2 upsampling.
* GroupNorm with 32 groups and eps 1e-6; attention blocks are single-head over the spatial positions
  with 1×1 Conv2d q/k/v/proj_out (scaled-dot-product attention is the same computation with a fused,
  memory-efficient kernel).
* ``encode`` returns the **pre-quantisation** latent (``quant_conv(encoder(x))``), as LDM's
  ``encode_first_stage``; ``decode`` snaps the latent to the codebook first (nearest entry in squared
  Euclidean distance) unless told not to, as ``decode_first_stage``.

Every Conv/GroupNorm comes from the ``operations`` namespace (``torch.nn`` by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
NORM_EPS = 1e-6
QUANTIZE_CHUNK = 4096  # latent positions per distance computation: bounds memory at n_embed × 4096 floats


def _norm(channels: int, operations, **factory) -> nn.Module:
    return operations.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True, **factory)


class ResnetBlock(nn.Module):
    """GroupNorm → swish → 3×3 conv, twice, plus a 1×1 (``nin_shortcut``) skip when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, *, operations=nn, **factory):
        super().__init__()
        self.norm1 = _norm(in_channels, operations, **factory)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, **factory)
        self.norm2 = _norm(out_channels, operations, **factory)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, **factory)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions with 1×1 conv q, k, v and output projection."""

    def __init__(self, channels: int, *, operations=nn, **factory):
        super().__init__()
        self.norm = _norm(channels, operations, **factory)
        self.q = operations.Conv2d(channels, channels, 1, **factory)
        self.k = operations.Conv2d(channels, channels, 1, **factory)
        self.v = operations.Conv2d(channels, channels, 1, **factory)
        self.proj_out = operations.Conv2d(channels, channels, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (layer(normed).reshape(b, 1, c, h * w).transpose(2, 3) for layer in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), logits scaled by C^-1/2
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding (0,1,0,1) with zeros; 2×2 average pooling without conv."""

    def __init__(self, channels: int, with_conv: bool, *, operations=nn, **factory):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Nearest ×2, then an optional 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool, *, operations=nn, **factory):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = operations.Conv2d(channels, channels, 3, padding=1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


def _level_attention(resolution: int, attn_resolutions: Sequence[int], level: int) -> bool:
    return resolution // 2**level in attn_resolutions


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = False,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        operations=nn,
        **factory,
    ):
        super().__init__()
        kw = {"operations": operations, **factory}
        self.conv_in = operations.Conv2d(in_channels, ch, 3, padding=1, **factory)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * mult
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, dropout, **kw))
                block_in = block_out
                if _level_attention(resolution, attn_resolutions, level):
                    stage.attn.append(AttnBlock(block_in, **kw))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in, resamp_with_conv, **kw)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, **kw)
        self.mid.attn_1 = AttnBlock(block_in, **kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, **kw)
        self.norm_out = _norm(block_in, operations, **factory)
        self.conv_out = operations.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        tanh_out: bool = False,
        operations=nn,
        **factory,
    ):
        super().__init__()
        kw = {"operations": operations, **factory}
        self.tanh_out = tanh_out
        block_in = ch * ch_mult[-1]
        self.conv_in = operations.Conv2d(z_channels, block_in, 3, padding=1, **factory)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, **kw)
        self.mid.attn_1 = AttnBlock(block_in, **kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, **kw)
        stages: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout, **kw))
                block_in = block_out
                if _level_attention(resolution, attn_resolutions, level):
                    stage.attn.append(AttnBlock(block_in, **kw))
            if level != 0:
                stage.upsample = Upsample(block_in, resamp_with_conv, **kw)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)  # indexed by level, run from the last level to the first
        self.norm_out = _norm(block_in, operations, **factory)
        self.conv_out = operations.Conv2d(block_in, out_ch, 3, padding=1, **factory)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser (``quantize.embedding.weight``, n_embed × embed_dim)."""

    def __init__(self, n_embed: int, embed_dim: int, **factory):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim, **factory)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) latent → (B,H,W) int64 code indices, argmin of |z|² + |e|² − 2 z·e."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codebook = self.embedding.weight.to(device=z.device, dtype=z.dtype)
        code_norms = codebook.pow(2).sum(dim=1)
        out = torch.empty(flat.shape[0], dtype=torch.int64, device=z.device)
        for start in range(0, flat.shape[0], QUANTIZE_CHUNK):
            part = flat[start : start + QUANTIZE_CHUNK]
            distances = part.pow(2).sum(dim=1, keepdim=True) + code_norms - 2 * part @ codebook.t()
            out[start : start + QUANTIZE_CHUNK] = distances.argmin(dim=1)
        return out.reshape(b, h, w)

    def lookup(self, indices: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B,H,W) code indices → (B,C,H,W) codebook entries."""
        codebook = self.embedding.weight.to(device=indices.device, dtype=dtype or self.embedding.weight.dtype)
        return codebook[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) latent → the same latent snapped to its nearest codebook entries."""
        return self.lookup(self.indices(z), z.dtype)


class VQAutoencoder(nn.Module):
    """VQ-f4 first stage with LDM's ``VQModelInterface`` behaviour (docs/method.md §8.2).

    ``quantize_on_decode`` sets the default of :meth:`decode` (True: as the reference).
    """

    def __init__(
        self,
        embed_dim: int,
        n_embed: int,
        ddconfig: dict[str, Any],
        *,
        quantize_on_decode: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        operations: ModuleType | Any = nn,
    ):
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        dd = dict(ddconfig)
        out_ch, in_channels, double_z = dd.pop("out_ch"), dd.pop("in_channels"), dd.pop("double_z", False)
        self.encoder = Encoder(in_channels=in_channels, double_z=double_z, operations=operations, **dd, **factory)
        self.decoder = Decoder(out_ch=out_ch, operations=operations, **dd, **factory)
        z_channels = dd["z_channels"]
        self.quant_conv = operations.Conv2d(2 * z_channels if double_z else z_channels, embed_dim, 1, **factory)
        self.post_quant_conv = operations.Conv2d(embed_dim, z_channels, 1, **factory)
        self.quantize = VectorQuantizer(n_embed, embed_dim, **factory)
        self.quantize_on_decode = quantize_on_decode
        self.downscale_factor = 2 ** (len(dd["ch_mult"]) - 1)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) image in −1..1 → (B,embed_dim,H/f,W/f) pre-quantisation latent."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """(B,embed_dim,h,w) latent → (B,3,h·f,w·f) image in about −1..1; quantises first by default."""
        if self.quantize_on_decode if quantize is None else quantize:
            h = self.quantize(h)
        return self.decoder(self.post_quant_conv(h))
