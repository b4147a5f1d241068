"""The denoiser ε_θ of the semantic-mixing LDM: the UNet of LDM's "openaimodel" family (docs/method.md §8.2, §8.4).

Written from the architecture description, with the same module tree (and therefore the same
state-dict keys, ``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``, ``time_embed.*``, ``out.*``)
as the LDM semantic-synthesis checkpoints:

* ResBlocks: GroupNorm → SiLU → 3×3 conv, the projected timestep embedding added (or, with
  ``use_scale_shift_norm``, applied as ``norm(h)·(1+scale)+shift``), GroupNorm → SiLU → dropout → 3×3
  conv, plus a 1×1 skip conv when the width changes.
* The *legacy* attention block (no cross-attention): GroupNorm, a 1×1 Conv1d to q, k, v and a 1×1 Conv1d
  projection. Its channels are grouped per head as ``[q_h, k_h, v_h]`` (``QKVAttentionLegacy``), or as
  ``[q, k, v]`` with heads inside each (``use_new_attention_order``). q and k are each scaled by ch^-1/4
  in the reference, i.e. the logits by ch^-1/2, the default of scaled-dot-product attention, which is
  used here (fused kernels, softmax accumulated in float32).
* Sinusoidal timestep embedding ``[cos, sin]`` (cos first), widened to 4·model_channels by an MLP.

ComfyUI's own ``UNetModel`` only builds SpatialTransformer attention and cannot hold this block, which
is why the pack has its own UNet. Every Conv/Linear/GroupNorm comes from the ``operations`` namespace
(``torch.nn`` by default; ComfyUI injects ``comfy.ops`` for weight casting, low-VRAM offloading and
DynamicVRAM). GroupNorm runs in the input's dtype: in float32 this is the reference computation; in
float16/bfloat16 the CUDA kernels accumulate the statistics in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
NORM_EPS = 1e-5


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps → (N, dim) float32 ``[cos(t·f), sin(t·f)]``, f_i = max_period^(-i/half) (docs/method.md §8.2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Downsample(nn.Module):
    """Halves the resolution: a stride-2 3×3 conv (``op``), or 2×2 average pooling without conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None, *, operations=nn, **factory):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = operations.Conv2d(channels, out_channels, 3, stride=2, padding=1, **factory)
        else:
            if out_channels != channels:
                raise ValueError(f"Downsample without conv cannot change channels ({channels} → {out_channels})")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Doubles the resolution (nearest), then an optional 3×3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None, *, operations=nn, **factory):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = operations.Conv2d(channels, out_channels, 3, padding=1, **factory)
        elif out_channels != channels:
            raise ValueError(f"Upsample without conv cannot change channels ({channels} → {out_channels})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block with timestep embedding (docs/method.md §8.4: in_layers, emb_layers, out_layers, skip)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        *,
        operations=nn,
        **factory,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            operations.GroupNorm(GROUPS, channels, eps=NORM_EPS, **factory),
            nn.SiLU(),
            operations.Conv2d(channels, out_channels, 3, padding=1, **factory),
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            operations.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels, **factory),
        )
        self.out_layers = nn.Sequential(
            operations.GroupNorm(GROUPS, out_channels, eps=NORM_EPS, **factory),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            operations.Conv2d(out_channels, out_channels, 3, padding=1, **factory),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = operations.Conv2d(channels, out_channels, 1, **factory)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Legacy LDM self-attention over the spatial positions (docs/method.md §8.2 "Attention block")."""

    def __init__(self, channels: int, num_heads: int, new_attention_order: bool = False, *, operations=nn, **factory):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels are not divisible into {num_heads} heads")
        self.num_heads = num_heads
        self.new_attention_order = new_attention_order
        self.norm = operations.GroupNorm(GROUPS, channels, eps=NORM_EPS, **factory)
        self.qkv = operations.Conv1d(channels, 3 * channels, 1, **factory)
        self.proj_out = operations.Conv1d(channels, channels, 1, **factory)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, T)
        heads, ch, length = self.num_heads, c // self.num_heads, flat.shape[-1]
        if self.new_attention_order:  # [q | k | v], each split into heads
            q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:  # QKVAttentionLegacy: per head [q_h | k_h | v_h]
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, c, length)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers where ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock | AttentionBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """ε_θ(x_t ⊕ s, t): the openaimodel UNet without cross-attention (docs/method.md §8.4).

    ``attention_resolutions`` are *downsampling factors* (1, 2, 4, … per level), as in LDM; values
    that no level reaches add no attention block, but the middle block always has one.
    ``num_heads``/``num_head_channels``/``num_heads_upsample`` follow LDM: a positive
    ``num_head_channels`` fixes the head width, otherwise ``num_heads`` (``num_heads_upsample`` in the
    decoder half, default ``num_heads``) fixes the head count.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.0,
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        operations: ModuleType | Any = nn,
    ):
        super().__init__()
        self.dtype = dtype or torch.get_default_dtype()
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.downsampling = 2 ** (len(channel_mult) - 1)
        factory = {"dtype": dtype, "device": device, "operations": operations}
        plain = {"dtype": dtype, "device": device}
        heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def heads_for(ch: int, upsample: bool) -> int:
            if num_head_channels != -1:
                return ch // num_head_channels
            return heads_upsample if upsample else num_heads

        def res_block(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(ch_in, time_embed_dim, dropout, ch_out, use_scale_shift_norm, **kw, **factory)

        def attention(ch: int, upsample: bool) -> AttentionBlock:
            return AttentionBlock(ch, heads_for(ch, upsample), use_new_attention_order, **factory)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            operations.Linear(model_channels, time_embed_dim, **plain),
            nn.SiLU(),
            operations.Linear(time_embed_dim, time_embed_dim, **plain),
        )
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(operations.Conv2d(in_channels, model_channels, 3, padding=1, **plain))]
        )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch, upsample=False))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    res_block(ch, ch, down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, ch, operations=operations, **plain)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), attention(ch, upsample=False), res_block(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch, upsample=True))
                if level and i == num_res_blocks:
                    layers.append(
                        res_block(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, ch, operations=operations, **plain)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            operations.GroupNorm(GROUPS, ch, eps=NORM_EPS, **plain),
            nn.SiLU(),
            operations.Conv2d(model_channels, out_channels, 3, padding=1, **plain),
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """(B, in_channels, H, W) input (latent ⊕ layout code), (B,) timesteps → (B, out_channels, H, W) ε.

        Any H and W: the LDM UNet concatenates skips of equal size, so sides that are not multiples of its
        downsampling factor 2^(levels−1) are edge-padded to the next multiple (split evenly between both sides)
        and the output is cropped back, which lets images of any size through (the original LDM code requires
        the multiple). ``context``/``control`` exist in ComfyUI's calling convention; this model has no
        cross-attention and no ControlNet inputs.
        """
        if context is not None:
            raise ValueError(
                "the semantic-mixing LDM has no cross-attention: its conditioning is the layout, not text "
                "(use HeadSwap Layout Conditioning instead of a text encoder)"
            )
        if control is not None:
            raise ValueError("ControlNets cannot be applied to the semantic-mixing LDM")
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.downsampling, -width % self.downsampling
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="replicate")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h)
        if pad_h or pad_w:
            h = h[..., top : top + height, left : left + width]
        return h
