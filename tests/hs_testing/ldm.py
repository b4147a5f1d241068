"""Helpers for the semantic-mixing LDM tests: the tiny fixture checkpoint and look-alike foreign files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from hs_testing import PACK_DIR

TINY_CKPT = "ldm_tiny.ckpt"
TINY_CONFIG = "ldm_tiny_config.json"
TINY_EXPECTED = "ldm_tiny_expected.npz"
FULL_KEYS = "ldm_semantic_synthesis256_keys.json"


def tiny_config(fixtures_dir: Path):
    from comfyui_hs_diffusion.hs_models.ldm.config import from_ldm_config

    return from_ldm_config(json.loads((fixtures_dir / TINY_CONFIG).read_text()))


def expected(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    with np.load(fixtures_dir / TINY_EXPECTED) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def run_converter(*args: str | Path) -> subprocess.CompletedProcess:
    """scripts/convert_ldm.py in a subprocess (as users run it)."""
    script = PACK_DIR / "scripts" / "convert_ldm.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300)


def convert_tiny(fixtures_dir: Path, target: Path, *extra: str) -> Path:
    """The tiny fixture checkpoint as the pack's .safetensors (scripts/convert_ldm.py with the fixture config)."""
    result = run_converter(fixtures_dir / TINY_CKPT, target, "--config", fixtures_dir / TINY_CONFIG, *extra)
    if result.returncode != 0:
        raise RuntimeError(f"convert_ldm.py failed:\n{result.stderr}")
    return target


def full_size_meta_state_dict(fixtures_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The semantic_synthesis256 key set as meta tensors (no memory), and the fixture's description."""
    data = json.loads((fixtures_dir / FULL_KEYS).read_text())
    dtypes = {
        "float32": torch.float32,
        "int32": torch.int32,
        "torch.float32": torch.float32,
        "torch.int32": torch.int32,
    }
    tensors = {
        key: torch.empty(spec["shape"], dtype=dtypes[spec["dtype"]], device="meta")
        for key, spec in data["keys"].items()
    }
    return tensors, data


def write_foreign_checkpoint(path: Path, kind: str) -> Path:
    """A small file with the key layout (and the telling shapes) of an SD1.5 or SDXL checkpoint."""
    z = torch.zeros
    if kind == "sd15":
        tensors = {
            "model.diffusion_model.input_blocks.0.0.weight": z(8, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": z(8, 768),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": z(4, 8),
            "first_stage_model.encoder.conv_in.weight": z(8, 3, 3, 3),
        }
    elif kind == "sdxl":
        tensors = {
            "model.diffusion_model.input_blocks.0.0.weight": z(8, 4, 3, 3),
            "model.diffusion_model.label_emb.0.0.weight": z(8, 2816),
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": z(8, 2048),
            "conditioner.embedders.1.model.token_embedding.weight": z(4, 8),
        }
    else:
        raise ValueError(kind)
    save_file(tensors, str(path))
    return path


LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


def write_lightning_checkpoint(path: Path, state_dict: dict, extra_callback: type | None = None) -> Path:
    """A PyTorch-Lightning 1.x style ``.ckpt``: the state dict plus training state, with the ``callbacks`` entry
    keyed by Lightning's ``ModelCheckpoint`` class and a numpy scalar score (as the CompVis releases are).

    Lightning is not installed: a stand-in class is pickled under Lightning's module path (pickle only records
    the name), registered in ``sys.modules`` just for the save. ``extra_callback`` adds another class as a key.
    """
    import types

    saved = {name: sys.modules.get(name) for name in ("pytorch_lightning", "pytorch_lightning.callbacks")}
    saved[LIGHTNING_MODULE] = sys.modules.get(LIGHTNING_MODULE)
    module = types.ModuleType(LIGHTNING_MODULE)
    model_checkpoint = type("ModelCheckpoint", (), {"__module__": LIGHTNING_MODULE})
    module.ModelCheckpoint = model_checkpoint
    callbacks = {model_checkpoint: {"monitor": None, "best_model_score": np.float64(0.25), "best_model_path": "x"}}
    if extra_callback is not None:
        setattr(module, extra_callback.__name__, extra_callback)
        extra_callback.__module__, extra_callback.__qualname__ = LIGHTNING_MODULE, extra_callback.__name__
        callbacks[extra_callback] = {}
    try:
        for name in saved:
            sys.modules[name] = module if name == LIGHTNING_MODULE else types.ModuleType(name)
        torch.save(
            {
                "epoch": 3,
                "global_step": 1000,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": callbacks,
                "optimizer_states": [],
                "lr_schedulers": [],
                "state_dict": state_dict,
            },
            path,
        )
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return path
