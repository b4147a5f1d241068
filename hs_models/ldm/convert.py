"""State-dict transforms for LDM-format checkpoints (docs/method.md §8.5): detection, splitting, EMA un-flattening.

Key layout of a LatentDiffusion checkpoint:

``model.diffusion_model.*``   the UNet ε_θ (live weights)
``model_ema.*``               EMA copies, keyed ``model_ema.diffusion_model<UNet key without dots>``, plus
                              ``model_ema.decay`` and ``model_ema.num_updates``
``first_stage_model.*``       VQ autoencoder (``loss.*`` training modules, if present, are dropped)
``cond_stage_model.*``        layout encoder τ_θ (``channel_mapper.weight``)
schedule buffers              ``betas``, ``alphas_cumprod``, … (the schedule is re-derived from ``betas``)

Everything here works on mappings of tensors or of shapes (meta tensors included), never on files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import FIRST_STAGE_PREFIX, LAYOUT_ENCODER_PREFIX, UNET_PREFIX, LDMConfig
from .rescaler import SpatialRescaler
from .unet import UNetModel
from .vq import VQAutoencoder

EMA_PREFIX = "model_ema."
EMA_STATE_KEYS = ("model_ema.decay", "model_ema.num_updates")
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
# Top-level entries that carry no weights of the three networks.
OTHER_KEYS = ("lvlb_weights", "logvar", "scale_factor")
# The pack's metadata (architecture, weight set) stored as a tensor where a writer cannot set file metadata.
METADATA_TENSOR_KEY = "hs_ldm_metadata"
WEIGHT_CHOICES = ("auto", "ema", "live")

_MARKER_UNET = UNET_PREFIX + "input_blocks.0.0.weight"
_MARKER_VQ = FIRST_STAGE_PREFIX + "quantize.embedding.weight"
_MARKER_TAU = LAYOUT_ENCODER_PREFIX + "channel_mapper.weight"


def ema_key(unet_key: str) -> str:
    """UNet key (without prefix) → its EMA key: ``model_ema.diffusion_model`` + the key without dots."""
    return EMA_PREFIX + "diffusion_model" + unet_key.replace(".", "")


def is_semantic_ldm(keys: Any) -> bool:
    """True for an LDM checkpoint with a UNet, a VQ first stage and a SpatialRescaler layout encoder."""
    keys = set(keys)
    return _MARKER_UNET in keys and _MARKER_VQ in keys and _MARKER_TAU in keys


def lacks_first_stage(keys: Any) -> bool:
    """True for a UNet + layout encoder without any autoencoder weights (what core Save Model writes)."""
    keys = set(keys)
    return (
        _MARKER_UNET in keys
        and _MARKER_TAU in keys
        and not any(k.startswith(FIRST_STAGE_PREFIX) and not k.startswith(FIRST_STAGE_PREFIX + "loss.") for k in keys)
    )


def metadata_to_tensor(metadata: Mapping[str, str]) -> torch.Tensor:
    """String metadata as a uint8 tensor of its JSON, for writers that store tensors only (ComfyUI's save nodes)."""
    return torch.frombuffer(bytearray(json.dumps(dict(metadata), sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def metadata_from_tensor(tensor: Any) -> dict[str, str]:
    """Inverse of :func:`metadata_to_tensor`; raises ValueError for anything that is not such a tensor."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError("expected a 1-D uint8 tensor of JSON text")
    data = json.loads(bytes(tensor.tolist()).decode("utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("expected a JSON object of strings")
    return data


def describe_foreign(shapes: Mapping[str, Any]) -> str | None:
    """What a checkpoint that is not a semantic-mixing LDM is, in words (None when unknown)."""
    keys = set(shapes)

    def shape(key: str) -> tuple[int, ...] | None:
        value = shapes.get(key)
        if value is None:
            return None
        return tuple(value.shape) if hasattr(value, "shape") else tuple(value)

    for prefix in (UNET_PREFIX, ""):
        label = shape(prefix + "label_emb.0.0.weight")
        if any(k.startswith("conditioner.embedders.") for k in keys) or (label is not None and label[1] == 2816):
            return "a Stable Diffusion XL (SDXL) checkpoint"
        to_k = shape(prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight") or shape(
            prefix + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
        )
        if to_k is not None:
            first = shape(prefix + "input_blocks.0.0.weight")
            inpaint = " inpainting" if first is not None and first[1] == 9 else ""
            if to_k[1] == 768:
                return f"a Stable Diffusion 1.x{inpaint} checkpoint"
            if to_k[1] == 1024:
                return f"a Stable Diffusion 2.x{inpaint} checkpoint"
            return "a Stable Diffusion-family checkpoint with cross-attention"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "a Flux checkpoint"
    if any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in keys):
        return "a Stable Diffusion 3 checkpoint"
    if any(k.startswith("down_blocks.") and ".attentions." in k for k in keys):
        return "a diffusers-format UNet"
    if _MARKER_UNET in keys and FIRST_STAGE_PREFIX + "encoder.conv_in.weight" in keys and _MARKER_VQ not in keys:
        return "an LDM checkpoint with a KL autoencoder (the semantic-mixing LDM needs a VQ first stage)"
    if _MARKER_UNET in keys and _MARKER_TAU not in keys:
        return "an LDM checkpoint without a SpatialRescaler layout encoder (cond_stage_model.channel_mapper)"
    if "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys:
        return "a standalone autoencoder (VAE) file"
    return None


@dataclass
class LDMParts:
    """The pieces of an LDM state dict, each with its own prefix removed."""

    unet: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] = field(default_factory=dict)  # flattened EMA keys, prefix ``model_ema.`` kept
    first_stage: dict[str, Any] = field(default_factory=dict)
    layout_encoder: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # training-only entries (first_stage_model.loss.*, lvlb_weights)
    unexpected: list[str] = field(default_factory=list)


def split(state_dict: Mapping[str, Any]) -> LDMParts:
    """Sort every key of an LDM state dict into its part; keys that fit nowhere go to ``unexpected``."""
    parts = LDMParts()
    for key, value in state_dict.items():
        if key.startswith(UNET_PREFIX):
            parts.unet[key[len(UNET_PREFIX) :]] = value
        elif key.startswith(EMA_PREFIX):
            parts.ema[key] = value
        elif key.startswith(FIRST_STAGE_PREFIX + "loss."):
            parts.dropped.append(key)
        elif key.startswith(FIRST_STAGE_PREFIX):
            parts.first_stage[key[len(FIRST_STAGE_PREFIX) :]] = value
        elif key.startswith(LAYOUT_ENCODER_PREFIX):
            parts.layout_encoder[key[len(LAYOUT_ENCODER_PREFIX) :]] = value
        elif key in SCHEDULE_KEYS or key in OTHER_KEYS:
            parts.schedule[key] = value
        else:
            parts.unexpected.append(key)
    return parts


def has_ema(parts: LDMParts) -> bool:
    return any(k not in EMA_STATE_KEYS for k in parts.ema)


def ema_unet(parts: LDMParts) -> dict[str, Any]:
    """The EMA UNet weights under the UNet's own keys (docs/method.md §8.5: iterate over the live keys)."""
    out, missing = {}, []
    for key in parts.unet:
        flat = ema_key(key)
        if flat in parts.ema:
            out[key] = parts.ema[flat]
        else:
            missing.append(key)
    if missing:
        raise ValueError(
            f"the EMA weights are incomplete: {len(missing)} of {len(parts.unet)} UNet tensors have no model_ema "
            f"copy (e.g. {ema_key(missing[0])}); use the live weights"
        )
    leftover = set(parts.ema) - {ema_key(k) for k in parts.unet} - set(EMA_STATE_KEYS)
    if leftover:
        raise ValueError(f"{len(leftover)} model_ema entries match no UNet tensor (e.g. {sorted(leftover)[0]})")
    return out


def select_unet(parts: LDMParts, weights: str, stored: str | None = None) -> tuple[dict[str, Any], str]:
    """The UNet weights to use: ``weights`` is auto/ema/live; ``stored`` says what a converted file holds.

    Returns (state dict, "ema" | "live"). A file that holds both picks EMA for "auto".
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if has_ema(parts):
        if weights == "live":
            return parts.unet, "live"
        return ema_unet(parts), "ema"
    held = stored or "live"
    if weights not in ("auto", held):
        hint = "converted with --weights live" if held == "live" else "converted with --weights ema"
        raise ValueError(
            f"the file holds only the {held} UNet weights (no model_ema.* entries; {hint}); choose weights "
            f"'{held}' or 'auto'"
        )
    return parts.unet, held


def module_shapes(config: LDMConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of the three networks of ``config`` with their LDM prefixes (built on the meta device)."""
    with torch.device("meta"):
        unet = UNetModel(**config.unet)
        vq = VQAutoencoder(**config.first_stage)
        rescaler = SpatialRescaler(**config.layout_encoder)
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, module in ((UNET_PREFIX, unet), (FIRST_STAGE_PREFIX, vq), (LAYOUT_ENCODER_PREFIX, rescaler)):
        shapes.update({prefix + k: tuple(v.shape) for k, v in module.state_dict().items()})
    return shapes


def mismatches(config: LDMConfig, parts: LDMParts) -> list[str]:
    """Missing keys, unexpected keys and shape differences between ``config``'s networks and ``parts``."""
    expected = module_shapes(config)
    given: dict[str, tuple[int, ...]] = {}
    for prefix, part in (
        (UNET_PREFIX, parts.unet),
        (FIRST_STAGE_PREFIX, parts.first_stage),
        (LAYOUT_ENCODER_PREFIX, parts.layout_encoder),
    ):
        given.update({prefix + k: tuple(v.shape) for k, v in part.items()})
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in given]
    problems += [f"unexpected {k} {list(s)}" for k, s in given.items() if k not in expected]
    problems += [
        f"{k} has shape {list(given[k])}, expected {list(s)}"
        for k, s in expected.items()
        if k in given and given[k] != s
    ]
    return problems


def to_ldm_state_dict(
    unet: Mapping[str, torch.Tensor],
    first_stage: Mapping[str, torch.Tensor],
    layout_encoder: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One set of weights under the LDM prefixes, contiguous (and cast to ``dtype`` when given)."""
    out = {}
    for prefix, part in (
        (UNET_PREFIX, unet),
        (FIRST_STAGE_PREFIX, first_stage),
        (LAYOUT_ENCODER_PREFIX, layout_encoder),
    ):
        for key, value in part.items():
            value = value.detach()
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            out[prefix + key] = value.contiguous().clone()
    return out


def reinitialise_layout_encoder(config: LDMConfig, num_classes: int, seed: int = 0) -> tuple[LDMConfig, dict]:
    """A fresh τ_θ for ``num_classes`` layout classes (PyTorch's default conv init, seeded).

    The CompVis semantic-synthesis τ_θ maps 182 COCO-Stuff/landscape classes; a model for another label
    set keeps the UNet and VQ weights and re-learns τ_θ (docs/method.md §8.6).
    """
    new = config.with_num_classes(num_classes)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / num_classes**0.5  # kaiming_uniform(a=√5) of a 1×1 conv: U(−1/√fan_in, 1/√fan_in)
    shape = (new.layout_encoder["out_channels"], num_classes, 1, 1)
    weights = {"channel_mapper.weight": (torch.rand(shape, generator=generator) * 2 - 1) * bound}
    if new.layout_encoder["bias"]:
        weights["channel_mapper.bias"] = (torch.rand(shape[0], generator=generator) * 2 - 1) * bound
    return new, weights
