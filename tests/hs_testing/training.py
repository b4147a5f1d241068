"""Helpers for the training tests: a tiny LDM config, a random first stage, procedural datasets, runs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hs_testing import PACK_DIR

# The smallest model the pack's modules build: GroupNorm(32) needs 32 channels; VQ f = 2 and one UNet down level,
# so 16² images give 8² latents.
TINY_LDM_CONFIG = {
    "unet": {"in_channels": 6, "out_channels": 3, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
             "attention_resolutions": [2], "num_heads": 2},
    "first_stage": {"embed_dim": 3, "n_embed": 128, "ddconfig": {
        "double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}},
    "layout_encoder": {"n_stages": 1, "in_channels": 5, "out_channels": 3},
    "diffusion": {},
}  # fmt: skip
RESOLUTION = 16


def write_tiny_config(folder: Path, **unet_overrides) -> Path:
    config = json.loads(json.dumps(TINY_LDM_CONFIG))
    config["unet"].update(unet_overrides)
    path = folder / ("tiny_ldm.json" if not unet_overrides else "tiny_ldm_other.json")
    path.write_text(json.dumps(config))
    return path


def write_random_first_stage(path: Path, seed: int = 0) -> Path:
    """A random-weight VQ autoencoder of the tiny config under the LDM prefix (what ``--first-stage`` reads)."""
    from hs_models.ldm.vq import VQAutoencoder

    torch.manual_seed(seed)
    vq = VQAutoencoder(**TINY_LDM_CONFIG["first_stage"])
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in vq.state_dict().items()}, str(path))
    return path


def ldm_settings(data: Path, out: Path, config: Path, first_stage: Path, **extra) -> dict:
    settings = {
        "data": str(data), "out": str(out), "model": str(config), "first_stage": str(first_stage),
        "resolution": RESOLUTION, "batch_size": 4, "lr": 1e-3, "ema_decay": 0.9, "log_every": 1,
        "sample_every": 0, "checkpoint_every": 0, "sample_steps": 2, "sample_count": 2, "progress": False,
        "device": "cpu",
    }  # fmt: skip
    settings.update(extra)
    return settings


@contextlib.contextmanager
def torch_threads(n: int):
    """Few threads: the CPU is shared, and oversubscribed OpenMP threads slow small models down many times."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PACK_DIR)}


def run_cli(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m hs_training …`` from the repository root, through torchrun when ``nproc`` > 1."""
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m"]
    else:
        launcher = [sys.executable, "-m"]
    return subprocess.run(
        [*launcher, "hs_training", *args],
        cwd=PACK_DIR,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out
