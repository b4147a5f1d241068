#!/usr/bin/env python
"""Convert an LDM semantic-synthesis checkpoint (.ckpt) to the .safetensors file the pack loads.

The output keeps the LDM key layout (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.*) with ONE set of UNet weights (EMA un-flattened, or the live weights), drops the
training-only entries (model_ema copies, schedule buffers, first_stage_model.loss.*) and stores the
architecture as JSON metadata, so the loader needs no config file. The .ckpt is read with
torch.load(weights_only=True): nothing in it is executed.

Examples:
    python scripts/convert_ldm.py model.ckpt semantic_synthesis256.safetensors --config config.yaml
    python scripts/convert_ldm.py model.ckpt hs_ldm.safetensors --weights live --fp16
    python scripts/convert_ldm.py model.ckpt hs_paper5.safetensors --layout-classes 5   # re-initialise τ_θ
    python scripts/convert_ldm.py saved_model.safetensors complete.safetensors --first-stage-from hs_ldm.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hs_models.files import save_safetensors  # noqa: E402
from hs_models.ldm import METADATA_CONFIG, METADATA_WEIGHTS, CheckpointError, read_ldm_checkpoint  # noqa: E402
from hs_models.ldm.config import ConfigError, read_config_file  # noqa: E402
from hs_models.ldm.convert import reinitialise_layout_encoder, to_ldm_state_dict  # noqa: E402


def convert(
    source: Path,
    target: Path,
    weights: str = "auto",
    fp16: bool = False,
    config_path: Path | None = None,
    layout_classes: int | None = None,
    seed: int = 0,
    first_stage_from: Path | None = None,
) -> dict[str, str]:
    """Write ``target``; returns its metadata."""
    config = read_config_file(config_path) if config_path else None
    checkpoint = read_ldm_checkpoint(source, weights, config=config, first_stage_from=first_stage_from)
    config, layout_encoder = checkpoint.config, checkpoint.layout_encoder
    if layout_classes is not None:
        config, layout_encoder = reinitialise_layout_encoder(config, layout_classes, seed)
    state_dict = to_ldm_state_dict(
        checkpoint.unet, checkpoint.first_stage, layout_encoder, torch.float16 if fp16 else torch.float32
    )
    metadata = {
        METADATA_CONFIG: config.to_json(),
        METADATA_WEIGHTS: checkpoint.weights,
        "hs_ldm_source": source.name,
        "hs_ldm_layout_encoder": "re-initialised" if layout_classes is not None else "from source",
    }
    if first_stage_from is not None:
        metadata["hs_ldm_first_stage"] = first_stage_from.name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict, target, metadata)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="LDM checkpoint (.ckpt with a state_dict, or .safetensors)")
    parser.add_argument("target", type=Path, help="output .safetensors file")
    parser.add_argument(
        "--weights",
        choices=("auto", "ema", "live"),
        default="auto",
        help="UNet weights to keep: EMA (what LDM samples with; auto picks it when present) or live",
    )
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors as float16 (half the size)")
    parser.add_argument(
        "--config",
        type=Path,
        help="LDM config.yaml (or the pack's JSON) of the checkpoint; needed when its attention head count is not "
        "LDM semantic-synthesis's 8, which tensor shapes cannot show",
    )
    parser.add_argument(
        "--layout-classes",
        type=int,
        metavar="N",
        help="replace the layout encoder τ_θ by a freshly initialised one for N layout classes (a starting point "
        "for fine-tuning, e.g. CompVis semantic_synthesis weights for the paper5 or canonical8 label set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-initialised layout encoder")
    parser.add_argument(
        "--first-stage-from",
        type=Path,
        metavar="FILE",
        help="take the VQ autoencoder (first_stage_model.*) from FILE, e.g. the original checkpoint of a model that "
        "core Save Model wrote without one",
    )
    args = parser.parse_args(argv)
    if args.target.suffix.lower() != ".safetensors":
        parser.error(f"target must end in .safetensors, got {args.target.name}")
    if args.layout_classes is not None and args.layout_classes < 1:
        parser.error("--layout-classes must be at least 1")
    try:
        metadata = convert(
            args.source,
            args.target,
            args.weights,
            args.fp16,
            args.config,
            args.layout_classes,
            args.seed,
            args.first_stage_from,
        )
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = args.target.stat().st_size / 2**20
    print(f"wrote {args.target} ({size:.1f} MiB, {metadata[METADATA_WEIGHTS]} UNet weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
