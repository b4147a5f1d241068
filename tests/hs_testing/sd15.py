"""A random-weight SD1.5 checkpoint with the real key names and shapes, for tests that go through
ComfyUI's own checkpoint loader (model detection needs the full-size UNet, CLIP-L and VAE).

Built with ComfyUI's model classes (the SD15 model config, ``SD1ClipModel``, ``AutoencoderKL``), saved in
fp16 with the key layout ComfyUI itself writes when saving a checkpoint, and cached: generated once per
work directory (``$HS_WORK_DIR/cache``), in well under a minute. Weights are N(0, 1/fan_in) with norms at
1 and biases at 0, a scale at which every network gives finite outputs.

Run as a script to generate it ahead of time: ``python tests/hs_testing/sd15.py [--inpaint]``.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from pathlib import Path

import torch

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}  # fmt: skip
SD_VAE = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}  # fmt: skip
FILE_NAMES = {False: "hs_random_sd15_fp16.safetensors", True: "hs_random_sd15_inpainting_fp16.safetensors"}


def cache_dir() -> Path:
    work = Path(os.environ.get("HS_WORK_DIR", Path(__file__).resolve().parents[2] / ".work"))
    path = work / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """In place, in the module's own dtype: N(0, 1/fan_in) matrices, 0.02 embeddings, unit norms, zero biases."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                std = 0.02 if "embedding" in name else 1.0 / math.sqrt(math.prod(p.shape[1:]))
                p.normal_(0.0, std, generator=generator)
            elif name.endswith("weight") or name.endswith("logit_scale"):
                p.fill_(1.0)
            else:
                p.zero_()


def build_state_dict(inpaint: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint state dict (``model.diffusion_model.*``, ``cond_stage_model.*``, ``first_stage_model.*``)."""
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    generator = torch.Generator().manual_seed(seed)
    config = comfy.supported_models.SD15(dict(SD15_UNET, in_channels=9 if inpaint else 4))
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({})
    _randomise(model.diffusion_model, generator)
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float16)
    _randomise(clip, generator)
    vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4).to(torch.float16)
    _randomise(vae, generator)
    state = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    return {k: v.to(torch.float16).contiguous() for k, v in state.items()}


def random_sd15_checkpoint(inpaint: bool = False) -> Path:
    """Path of the cached random SD1.5 (or SD1.5-inpainting) checkpoint; generated on first use."""
    from safetensors.torch import save_file

    path = cache_dir() / FILE_NAMES[inpaint]
    if path.exists():
        return path
    state = build_state_dict(inpaint)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    save_file(state, str(partial), metadata={"generated_by": "tests/hs_testing/sd15.py", "weights": "random"})
    os.replace(partial, path)  # atomic: concurrent generators never see a half-written file
    return path


def link_into(folder: Path, checkpoint: Path) -> str:
    """Make ``checkpoint`` available in a models folder (symlink, copy where links are impossible)."""
    target = folder / checkpoint.name
    if not target.exists():
        try:
            target.symlink_to(checkpoint)
        except OSError:
            import shutil

            shutil.copy(checkpoint, target)
    return checkpoint.name


if __name__ == "__main__":
    comfy_dir = Path(os.environ.get("COMFYUI_DIR", cache_dir().parent / "ComfyUI"))
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    print(random_sd15_checkpoint(inpaint="--inpaint" in sys.argv))  # noqa: T201
