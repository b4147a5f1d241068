"""The semantic-mixing latent diffusion model (docs/method.md §8): UNet ε_θ, VQ-f4 autoencoder, layout encoder τ_θ.

HS-Diffusion builds on LDM's semantic-synthesis model; its authors released neither code nor weights,
so these modules are written from the architecture description (docs/method.md §8.2–§8.5) with the
LDM checkpoint layout, and any LDM semantic-synthesis checkpoint loads into them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..log import logger
from .checkpoint import CheckpointError, load_state_dict, read_metadata, read_shapes
from .config import (
    FIRST_STAGE_PREFIX,
    ConfigError,
    LDMConfig,
    builtin_config,
    infer_config,
    read_config_file,
    schedule_from_betas,
)
from .convert import (
    METADATA_TENSOR_KEY,
    describe_foreign,
    is_semantic_ldm,
    lacks_first_stage,
    metadata_from_tensor,
    mismatches,
    select_unet,
    split,
)
from .rescaler import SpatialRescaler
from .unet import UNetModel
from .vq import VQAutoencoder

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ForeignCheckpointError",
    "LDMCheckpoint",
    "MissingAutoencoderError",
    "LDMConfig",
    "SpatialRescaler",
    "UNetModel",
    "VQAutoencoder",
    "builtin_config",
    "read_ldm_checkpoint",
]

METADATA_CONFIG = "hs_ldm_config"
METADATA_WEIGHTS = "hs_ldm_weights"
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")
_LISTED = 8


class ForeignCheckpointError(CheckpointError):
    """A readable checkpoint of another model family (SD1.x, SDXL, …)."""

    def __init__(self, name: str, description: str | None):
        self.name, self.description = name, description
        what = description or "not an LDM checkpoint"
        super().__init__(
            f"{name!r} is {what}, not a semantic-mixing LDM: expected an LDM-format checkpoint with a UNet "
            f"(model.diffusion_model.*), a VQ autoencoder (first_stage_model.quantize.embedding.weight) and a "
            f"layout encoder (cond_stage_model.channel_mapper.weight)"
        )


class MissingAutoencoderError(CheckpointError):
    """The UNet and τ_θ of a semantic-mixing LDM without its VQ autoencoder (e.g. saved by core Save Model)."""

    def __init__(self, name: str):
        super().__init__(
            f"{name!r} holds the UNet and the layout encoder τ_θ of a semantic-mixing LDM but no VQ autoencoder "
            f"(no first_stage_model.* weights), which the loader needs for its VAE; core Save Model (ModelSave) "
            f"writes such files. Add the autoencoder of the checkpoint it came from: python scripts/convert_ldm.py "
            f"{name} complete.safetensors --first-stage-from ORIGINAL.safetensors (or save with core Checkpoint "
            f"Save, which stores the VAE you connect)"
        )


def _check_kind(name: str, keys: Any) -> None:
    """``keys``: a state dict or key → shape mapping (read before loading the tensors where the format allows)."""
    if is_semantic_ldm(keys):
        return
    if lacks_first_stage(keys):
        raise MissingAutoencoderError(name)
    raise ForeignCheckpointError(name, describe_foreign(keys))


def _with_first_stage_from(state_dict: dict[str, Any], other: Path) -> dict[str, Any]:
    """``state_dict`` with its autoencoder replaced by the ``first_stage_model.*`` weights of ``other``."""
    donor = {k: v for k, v in load_state_dict(other).items() if k.startswith(FIRST_STAGE_PREFIX)}
    if not donor:
        raise CheckpointError(
            f"{other.name!r} has no autoencoder weights (first_stage_model.*) to take; give the original "
            f"checkpoint (.ckpt or .safetensors) the model was loaded from"
        )
    kept = {k: v for k, v in state_dict.items() if not k.startswith(FIRST_STAGE_PREFIX)}
    return {**kept, **donor}


@dataclass
class LDMCheckpoint:
    """The three networks' weights of one checkpoint (prefixes removed) and the config they fit."""

    config: LDMConfig
    unet: dict[str, Any]
    first_stage: dict[str, Any]
    layout_encoder: dict[str, Any]
    weights: str  # "ema" or "live"
    config_source: str


def _find_config(path: Path, metadata: dict[str, str]) -> tuple[LDMConfig | None, str]:
    if METADATA_CONFIG in metadata:
        try:
            return LDMConfig.from_dict(json.loads(metadata[METADATA_CONFIG])), "file metadata"
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(
                f"{path.name!r}: its {METADATA_CONFIG} metadata is not a valid LDM config: {e}"
            ) from e
    for suffix in SIDECAR_SUFFIXES:
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            try:
                return read_config_file(sidecar), f"config file {sidecar.name!r}"
            except ConfigError as e:
                raise CheckpointError(
                    f"{path.name!r}: its config file {e} (a {suffix} file with the checkpoint's name next to it is "
                    f"read as its config; remove or rename it to let the loader read the architecture from the "
                    f"tensor shapes)"
                ) from e
    return None, "state-dict shapes"


def read_ldm_checkpoint(
    path: str | Path, weights: str = "auto", config: LDMConfig | None = None, first_stage_from: str | Path | None = None
) -> LDMCheckpoint:
    """Read an LDM semantic-synthesis checkpoint (``.ckpt`` or ``.safetensors``) and check it fits a config.

    The config is, in order: ``config``; the ``hs_ldm_config`` metadata that scripts/convert_ldm.py writes
    (as file metadata, or as the ``hs_ldm_metadata`` tensor that the MODEL's save path writes); a same-named
    ``.yaml``/``.yml``/``.json`` next to the file (LDM's config.yaml works); else inferred from the tensor
    shapes with LDM's semantic-synthesis head count (8), which shapes cannot show. A ``betas`` buffer, when
    present, overrides the schedule. ``weights`` picks EMA or live UNet weights. ``first_stage_from``: take
    the autoencoder from that file instead (completes a file saved without one).
    """
    path = Path(path)
    shapes = read_shapes(path)
    if shapes is not None and first_stage_from is None:
        _check_kind(path.name, shapes)
    state_dict = load_state_dict(path)
    if first_stage_from is not None:
        state_dict = _with_first_stage_from(state_dict, Path(first_stage_from))
    _check_kind(path.name, state_dict)
    metadata = read_metadata(path)
    if METADATA_TENSOR_KEY in state_dict:
        try:
            metadata = {**metadata_from_tensor(state_dict.pop(METADATA_TENSOR_KEY)), **metadata}
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path.name!r}: its {METADATA_TENSOR_KEY} entry is not the pack's metadata: {e}"
            ) from e
    parts = split(state_dict)
    if parts.unexpected:
        logger.warning(
            "%s: ignoring %d entries that belong to no network: %s",
            path.name,
            len(parts.unexpected),
            ", ".join(parts.unexpected[:_LISTED]),
        )
    source = "given config"
    if config is None:
        config, source = _find_config(path, metadata)
    try:
        if config is None:
            config = infer_config(state_dict)
            logger.info(
                "%s: architecture inferred from the tensor shapes (attention heads: %d)",
                path.name,
                config.unet["num_heads"],
            )
        if "betas" in parts.schedule:
            config = config.with_diffusion(**schedule_from_betas(parts.schedule["betas"]))
        if "scale_factor" in parts.schedule:
            config = config.with_diffusion(scale_factor=float(parts.schedule["scale_factor"]))
    except ConfigError as e:
        raise CheckpointError(f"{path.name!r}: {e}") from e
    problems = mismatches(config, parts)
    if problems:
        listed = "; ".join(problems[:_LISTED]) + (f"; … ({len(problems)} in all)" if len(problems) > _LISTED else "")
        raise CheckpointError(
            f"{path.name!r} does not match the LDM architecture from its {source}: {listed}. If the checkpoint was "
            f"trained with another configuration, put its LDM config.yaml next to it as "
            f"{path.with_suffix('.yaml').name!r}"
        )
    try:
        unet, used = select_unet(parts, weights, metadata.get(METADATA_WEIGHTS))
    except ValueError as e:
        raise CheckpointError(f"{path.name!r}: {e}") from e
    return LDMCheckpoint(config, unet, parts.first_stage, parts.layout_encoder, used, source)
