"""Hyper-parameters of the semantic-mixing LDM as data (docs/method.md §8.3).

An :class:`LDMConfig` has four parts, named and spelled as in LDM's ``config.yaml`` so that both
formats read alike:

``unet``            UNetModel parameters (in/out channels, model_channels, channel_mult, …)
``first_stage``     ``embed_dim``, ``n_embed`` and the ``ddconfig`` of the VQ autoencoder
``layout_encoder``  SpatialRescaler parameters (``in_channels`` = number of layout classes)
``diffusion``       timesteps, β schedule, parameterisation, latent scale factor

It is read from the pack's JSON files (``configs/*.json``), from an LDM ``config.yaml`` (the
``model.params`` tree), from the metadata of converted ``.safetensors`` files, or inferred from the
state-dict shapes (:func:`infer_config`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).with_name("configs")

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
LAYOUT_ENCODER_PREFIX = "cond_stage_model."

# Values that state-dict shapes cannot reveal: the LDM semantic-synthesis settings (docs/method.md §8.3).
DEFAULT_NUM_HEADS = 8
DEFAULT_DIFFUSION = {
    "timesteps": 1000,
    "beta_schedule": "linear",
    "linear_start": 0.0015,
    "linear_end": 0.0205,
    "parameterization": "eps",
    "scale_factor": 1.0,
}

_UNET_KEYS = {
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
    "channel_mult",
    "dropout",
    "conv_resample",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_new_attention_order",
}
# LDM UNet options that do not change the computation here, with the only value that is supported.
_UNET_IGNORED = {"image_size", "use_checkpoint", "use_fp16", "legacy", "transformer_depth"}
_UNET_REQUIRED_VALUE = {
    "dims": 2,
    "num_classes": None,
    "use_spatial_transformer": False,
    "context_dim": None,
    "n_embed": None,
}
_DD_KEYS = {
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
}
_DD_REQUIRED_VALUE = {"give_pre_end": False, "tanh_out": False, "use_linear_attn": False, "attn_type": "vanilla"}
_RESCALER_KEYS = {"n_stages", "method", "multiplier", "in_channels", "out_channels", "bias"}


class ConfigError(ValueError):
    """A configuration that the pack's LDM cannot represent."""


@dataclass(frozen=True)
class LDMConfig:
    unet: dict[str, Any]
    first_stage: dict[str, Any]
    layout_encoder: dict[str, Any]
    diffusion: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_DIFFUSION))

    def __post_init__(self) -> None:
        object.__setattr__(self, "unet", _normalise_unet(self.unet))
        object.__setattr__(self, "first_stage", _normalise_first_stage(self.first_stage))
        object.__setattr__(self, "layout_encoder", _normalise_rescaler(self.layout_encoder))
        object.__setattr__(self, "diffusion", _normalise_diffusion(self.diffusion))
        latent = self.first_stage["embed_dim"]
        code = self.layout_encoder["out_channels"]
        if self.unet["in_channels"] != latent + code:
            raise ConfigError(
                f"UNet in_channels is {self.unet['in_channels']} but latent ({latent}) + layout code ({code}) "
                f"channels are {latent + code}: not a concat-conditioned semantic-synthesis LDM"
            )
        if self.unet["out_channels"] != latent:
            raise ConfigError(f"UNet out_channels {self.unet['out_channels']} differs from the latent's {latent}")
        if 2 ** self.layout_encoder["n_stages"] != self.vae_factor:
            raise ConfigError(
                f"the layout encoder downscales by {2 ** self.layout_encoder['n_stages']} but the autoencoder by "
                f"{self.vae_factor}; the layout code must have the latent's resolution"
            )

    @property
    def num_classes(self) -> int:
        """Number of layout classes τ_θ expects (its input channels)."""
        return self.layout_encoder["in_channels"]

    @property
    def latent_channels(self) -> int:
        return self.first_stage["embed_dim"]

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel (4 for VQ-f4)."""
        return 2 ** (len(self.first_stage["ddconfig"]["ch_mult"]) - 1)

    @property
    def unet_factor(self) -> int:
        """Latent sides must be multiples of this."""
        return 2 ** (len(self.unet["channel_mult"]) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet,
            "first_stage": self.first_stage,
            "layout_encoder": self.layout_encoder,
            "diffusion": self.diffusion,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LDMConfig:
        """Either the pack's format (unet/first_stage/layout_encoder/diffusion) or an LDM config tree."""
        if {"unet", "first_stage", "layout_encoder"} <= set(data):
            return cls(
                dict(data["unet"]),
                dict(data["first_stage"]),
                dict(data["layout_encoder"]),
                dict(data.get("diffusion", DEFAULT_DIFFUSION)),
            )
        return from_ldm_config(data)

    def with_num_classes(self, num_classes: int) -> LDMConfig:
        return LDMConfig(
            self.unet, self.first_stage, {**self.layout_encoder, "in_channels": num_classes}, self.diffusion
        )

    def with_diffusion(self, **values: Any) -> LDMConfig:
        return LDMConfig(self.unet, self.first_stage, self.layout_encoder, {**self.diffusion, **values})


def builtin_config(name: str) -> LDMConfig:
    """A config shipped with the pack, e.g. ``semantic_synthesis256`` (docs/method.md §8.3)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ConfigError(f"no built-in LDM config {name!r}; available: {names}")
    return LDMConfig.from_dict(json.loads(path.read_text()))


_EXPECTED_CONFIG = (
    "expected the checkpoint's LDM config.yaml (model.params with unet_config, first_stage_config and "
    "cond_stage_config) or the pack's JSON config (unet, first_stage, layout_encoder, diffusion)"
)
_CONFIG_FIX = "fix the file, or replace it with the config.yaml the checkpoint was trained with"


def read_config_file(path: str | Path) -> LDMConfig:
    """Read an LDM config (``.yaml`` as in the LDM repository, or ``.json`` in either format).

    Every failure is a :class:`ConfigError` that names the file, what was expected and the fix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path.name!r} ({type(e).__name__}: {e}); {_EXPECTED_CONFIG}") from e
    data = _parse_config_text(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path.name!r} is not an LDM config: expected a mapping at the top level, got {type(data).__name__}; "
            f"{_EXPECTED_CONFIG}; {_CONFIG_FIX}"
        )
    try:
        return LDMConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path.name!r}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        missing = f"no entry {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ConfigError(
            f"{path.name!r} is not a complete LDM config: {missing}; {_EXPECTED_CONFIG}; {_CONFIG_FIX}"
        ) from None


def _parse_config_text(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # ComfyUI depends on PyYAML; imported here so the package imports without it

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"{path.name!r} is not valid YAML ({where}{problem}); {_EXPECTED_CONFIG}; {_CONFIG_FIX}"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path.name!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {_EXPECTED_CONFIG}; "
            f"{_CONFIG_FIX}"
        ) from None


def from_ldm_config(tree: Mapping[str, Any]) -> LDMConfig:
    """An LDM ``LatentDiffusion`` config: ``{model: {target, params}}``, ``{model_config: …}`` or ``{target, params}``."""
    node: Any = tree
    for key in ("model", "model_config"):
        if isinstance(node, Mapping) and key in node and isinstance(node[key], Mapping):
            node = node[key]
    params = node.get("params", node) if isinstance(node, Mapping) else None
    if not isinstance(params, Mapping) or "unet_config" not in params:
        raise ConfigError("not an LDM LatentDiffusion config (no model.params.unet_config)")
    conditioning = params.get("conditioning_key", "concat" if params.get("concat_mode", True) else "crossattn")
    if conditioning != "concat":
        raise ConfigError(f"conditioning_key is {conditioning!r}; the semantic-mixing LDM is concat-conditioned")
    first_stage, cond_stage = params.get("first_stage_config"), params.get("cond_stage_config")
    if not isinstance(first_stage, Mapping) or "VQModel" not in str(first_stage.get("target", "VQModel")):
        target = first_stage.get("target") if isinstance(first_stage, Mapping) else first_stage
        raise ConfigError(f"first stage {target!r} is not a VQ autoencoder (VQModelInterface)")
    if not isinstance(cond_stage, Mapping) or "SpatialRescaler" not in str(cond_stage.get("target", "SpatialRescaler")):
        target = cond_stage.get("target") if isinstance(cond_stage, Mapping) else cond_stage
        raise ConfigError(f"cond stage {target!r} is not a SpatialRescaler layout encoder")
    fs = dict(first_stage.get("params", {}))
    fs.pop("lossconfig", None)
    for key in ("ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "batch_resize_range"):
        fs.pop(key, None)
    for key in ("remap", "sane_index_shape"):
        if fs.pop(key, None) not in (None, False):
            raise ConfigError(f"first stage option {key} is not supported")
    diffusion = dict(DEFAULT_DIFFUSION)
    for key in ("timesteps", "linear_start", "linear_end", "parameterization", "scale_factor"):
        if key in params:
            diffusion[key] = params[key]
    if params.get("beta_schedule", "linear") != "linear":
        raise ConfigError(f"beta_schedule {params['beta_schedule']!r} is not supported (only 'linear')")
    if params.get("scale_by_std", False):
        raise ConfigError("scale_by_std checkpoints store their scale in the state dict; convert the checkpoint")
    return LDMConfig(dict(params["unet_config"]["params"]), fs, dict(cond_stage.get("params", {})), diffusion)


def _check_keys(part: str, given: Mapping[str, Any], allowed: set[str], required_value: Mapping[str, Any]) -> None:
    for key, value in given.items():
        if key in allowed:
            continue
        if key in required_value:
            if value != required_value[key]:
                raise ConfigError(f"{part}: {key}={value!r} is not supported (only {required_value[key]!r})")
            continue
        raise ConfigError(f"{part}: unknown option {key!r}")


def _normalise_unet(params: Mapping[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in params.items() if k not in _UNET_IGNORED}
    _check_keys("unet", given, _UNET_KEYS, _UNET_REQUIRED_VALUE)
    out = {
        "dropout": 0.0,
        "conv_resample": True,
        "num_heads": 1,
        "num_head_channels": -1,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": False,
        "resblock_updown": False,
        "use_new_attention_order": False,
    }
    out.update({k: v for k, v in given.items() if k in _UNET_KEYS})
    for key in ("in_channels", "model_channels", "out_channels", "num_res_blocks", "channel_mult"):
        if key not in out:
            raise ConfigError(f"unet: {key} is required")
    out["channel_mult"] = [int(m) for m in out["channel_mult"]]
    out["attention_resolutions"] = sorted(int(r) for r in out.get("attention_resolutions", []))
    if out["num_head_channels"] == -1 and out["num_heads"] < 1:
        raise ConfigError("unet: num_heads must be ≥ 1 when num_head_channels is -1")
    return out


def _normalise_first_stage(params: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys("first_stage", params, {"embed_dim", "n_embed", "ddconfig"}, {})
    for key in ("embed_dim", "n_embed", "ddconfig"):
        if key not in params:
            raise ConfigError(f"first_stage: {key} is required")
    dd = dict(params["ddconfig"])
    _check_keys("first_stage.ddconfig", dd, _DD_KEYS, _DD_REQUIRED_VALUE)
    dd = {k: v for k, v in dd.items() if k in _DD_KEYS}
    dd.setdefault("double_z", False)
    dd.setdefault("dropout", 0.0)
    dd.setdefault("resamp_with_conv", True)
    dd.setdefault("attn_resolutions", [])
    dd["ch_mult"] = [int(m) for m in dd["ch_mult"]]
    dd["attn_resolutions"] = sorted(int(r) for r in dd["attn_resolutions"])
    return {"embed_dim": int(params["embed_dim"]), "n_embed": int(params["n_embed"]), "ddconfig": dd}


def _normalise_rescaler(params: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys("layout_encoder", params, _RESCALER_KEYS, {})
    out = {"n_stages": 1, "method": "bilinear", "multiplier": 0.5, "out_channels": None, "bias": False}
    out.update(params)
    if "in_channels" not in params or out["out_channels"] is None:
        raise ConfigError("layout_encoder: in_channels (number of layout classes) and out_channels are required")
    if out["multiplier"] != 0.5:
        raise ConfigError(f"layout_encoder: multiplier {out['multiplier']} is not supported (only 0.5)")
    return out


def _normalise_diffusion(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {**DEFAULT_DIFFUSION, **params}
    unknown = set(out) - set(DEFAULT_DIFFUSION)
    if unknown:
        raise ConfigError(f"diffusion: unknown options {sorted(unknown)}")
    if out["beta_schedule"] != "linear":
        raise ConfigError(f"diffusion: beta_schedule {out['beta_schedule']!r} is not supported (only 'linear')")
    if out["parameterization"] != "eps":
        raise ConfigError(
            f"diffusion: parameterization {out['parameterization']!r} is not supported (only 'eps', as LDM)"
        )
    return out


def linear_betas(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """LDM's "linear" schedule (linear in √β), float64 (docs/method.md §8.2)."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2


def schedule_from_betas(betas: torch.Tensor) -> dict[str, Any]:
    """Recover (linear_start, linear_end, timesteps) from a checkpoint's ``betas`` buffer; error if not linear."""
    values = betas.detach().to("cpu", torch.float64).flatten()
    start, end = float(f"{values[0].item():.6g}"), float(f"{values[-1].item():.6g}")
    expected = linear_betas(start, end, values.numel())
    error = float((expected - values).abs().max())
    if not math.isfinite(error) or error > 1e-7:
        raise ConfigError(
            f"the checkpoint's β schedule is not LDM's linear schedule (max deviation {error:.3g} from a linear-in-√β "
            f"schedule {start}→{end}); only linear schedules are supported"
        )
    return {"timesteps": values.numel(), "linear_start": start, "linear_end": end}


# ------------------------------------------------------------------------------------------------
# inference from state-dict shapes
# ------------------------------------------------------------------------------------------------


def _shape(shapes: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = shapes.get(key)
    if value is None:
        return None
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def infer_unet(shapes: Mapping[str, Any], prefix: str = UNET_PREFIX, num_heads: int = DEFAULT_NUM_HEADS) -> dict:
    """UNet parameters from shapes (conv resampling, no ResBlock up/down; heads are not visible in shapes)."""

    def get(key: str) -> tuple[int, ...] | None:
        return _shape(shapes, prefix + key)

    first = get("input_blocks.0.0.weight")
    out = get("out.2.weight")
    if first is None or out is None:
        raise ConfigError(f"no UNet found (keys {prefix}input_blocks.0.0.weight, {prefix}out.2.weight)")
    model_channels, in_channels = first[0], first[1]
    channel_mult: list[int] = []
    blocks_per_level: list[int] = []
    attention: set[int] = set()
    use_scale_shift = False
    count, ds, i = 0, 1, 1
    while True:
        if get(f"input_blocks.{i}.0.op.weight") is not None:
            blocks_per_level.append(count)
            count, ds = 0, ds * 2
        elif (conv := get(f"input_blocks.{i}.0.in_layers.2.weight")) is not None:
            if count == 0:
                channel_mult.append(conv[0] // model_channels)
            count += 1
            emb = get(f"input_blocks.{i}.0.emb_layers.1.weight")
            use_scale_shift = emb is not None and emb[0] == 2 * conv[0]
            if get(f"input_blocks.{i}.1.qkv.weight") is not None:
                attention.add(ds)
        else:
            break
        i += 1
    blocks_per_level.append(count)
    if len(set(blocks_per_level)) != 1 or not channel_mult:
        raise ConfigError(f"the UNet's input blocks do not form regular levels ({blocks_per_level} ResBlocks)")
    return {
        "in_channels": in_channels,
        "model_channels": model_channels,
        "out_channels": out[0],
        "num_res_blocks": blocks_per_level[0],
        "attention_resolutions": sorted(attention),
        "channel_mult": channel_mult,
        "num_heads": num_heads,
        "num_head_channels": -1,
        "use_scale_shift_norm": use_scale_shift,
    }


def infer_first_stage(shapes: Mapping[str, Any], prefix: str = FIRST_STAGE_PREFIX, resolution: int = 256) -> dict:
    """VQ autoencoder parameters from shapes (``resolution`` only names where attention sits)."""

    def get(key: str) -> tuple[int, ...] | None:
        return _shape(shapes, prefix + key)

    conv_in, codebook = get("encoder.conv_in.weight"), get("quantize.embedding.weight")
    if conv_in is None or codebook is None:
        raise ConfigError(f"no VQ autoencoder found (keys {prefix}encoder.*, {prefix}quantize.embedding.weight)")
    ch = conv_in[0]
    ch_mult, attn = [], []
    level = 0
    while (conv := get(f"encoder.down.{level}.block.0.conv2.weight")) is not None:
        ch_mult.append(conv[0] // ch)
        if get(f"encoder.down.{level}.attn.0.q.weight") is not None:
            attn.append(resolution // 2**level)
        level += 1
    blocks = 0
    while get(f"encoder.down.0.block.{blocks}.conv1.weight") is not None:
        blocks += 1
    z_channels = get("decoder.conv_in.weight")[1]
    return {
        "embed_dim": get("quant_conv.weight")[0],
        "n_embed": codebook[0],
        "ddconfig": {
            "double_z": get("encoder.conv_out.weight")[0] == 2 * z_channels,
            "z_channels": z_channels,
            "resolution": resolution,
            "in_channels": conv_in[1],
            "out_ch": get("decoder.conv_out.weight")[0],
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": blocks,
            "attn_resolutions": sorted(attn),
            "dropout": 0.0,
            "resamp_with_conv": len(ch_mult) == 1 or get("encoder.down.0.downsample.conv.weight") is not None,
        },
    }


def infer_layout_encoder(shapes: Mapping[str, Any], n_stages: int, prefix: str = LAYOUT_ENCODER_PREFIX) -> dict:
    mapper = _shape(shapes, prefix + "channel_mapper.weight")
    if mapper is None:
        raise ConfigError(f"no layout encoder found (key {prefix}channel_mapper.weight)")
    return {
        "n_stages": n_stages,
        "method": "bilinear",
        "multiplier": 0.5,
        "in_channels": mapper[1],
        "out_channels": mapper[0],
        "bias": _shape(shapes, prefix + "channel_mapper.bias") is not None,
    }


def infer_config(shapes: Mapping[str, Any], num_heads: int = DEFAULT_NUM_HEADS) -> LDMConfig:
    """An :class:`LDMConfig` from an LDM-format state dict (tensors or shapes; meta tensors work).

    The β schedule is read from the ``betas`` buffer when it holds values, else LDM's defaults.
    """
    first_stage = infer_first_stage(shapes)
    n_stages = len(first_stage["ddconfig"]["ch_mult"]) - 1
    diffusion = dict(DEFAULT_DIFFUSION)
    betas = shapes.get("betas")
    if isinstance(betas, torch.Tensor) and betas.device.type != "meta":
        diffusion.update(schedule_from_betas(betas))
    scale = shapes.get("scale_factor")
    if isinstance(scale, torch.Tensor) and scale.device.type != "meta":
        diffusion["scale_factor"] = float(scale)
    return LDMConfig(
        infer_unet(shapes, num_heads=num_heads), first_stage, infer_layout_encoder(shapes, n_stages), diffusion
    )
