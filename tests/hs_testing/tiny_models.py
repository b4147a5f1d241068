"""Tiny random-weight models built with ComfyUI's own classes (CPU, seconds): an SD-style MODEL (SD1.5 or SDXL
class, ε- or v-prediction, 4-channel, 9-channel inpainting, or a 3-channel one shaped like the HeadSwap diffusion
model), an SD3-class flow MODEL (MMDiT, 16 channels) and KL VAEs with downscale 8 or 4. ComfyUI's layers start
uninitialised, so every weight (and SD3's position-embedding buffer) is set explicitly here.
"""

from __future__ import annotations

import math

import torch

TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
    "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 2,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}  # fmt: skip
CONTEXT_DIM = TINY_UNET["context_dim"]


def init_random(module: torch.nn.Module, seed: int, gain: float = 1.0) -> torch.nn.Module:
    """Deterministic weights at a scale that keeps activations finite: N(0, gain²/fan_in), norms at 1, biases 0."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        with torch.no_grad():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                if "embedding" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in)))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    for name, buffer in module.named_buffers():
        if name.endswith("pos_embed"):  # MMDiT's fixed embedding: a checkpoint fills it, torch.empty does not
            with torch.no_grad():
                buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.02)
    return module


SD3_CONTEXT_DIM, SD3_POOLED_DIM = 32, 64


def tiny_model(channels: int = 4, inpaint: bool = False, seed: int = 0, family: str = "sd15", prediction: str = "eps"):
    """A ModelPatcher around a tiny BaseModel of a model family, with that family's noise schedule.

    family "sd15", "sdxl" (SDXL's model class: size and pooled-text embeddings, its latent format) or "sd3"
    (SD3's MMDiT and model class: rectified flow with shift 3, 16-channel latents; conditioning with
    ``dim=SD3_CONTEXT_DIM, pooled=SD3_POOLED_DIM``). prediction "eps" or "v" (SD-family only).
    channels=3 gives a 3-channel latent format (scale 1.0), shaped like the HeadSwap diffusion model's.
    inpaint=True gives the 9-channel inpainting variant (concat mask + masked image).
    """
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    if family == "sd3":
        hidden = 64 * 2  # MMDiT: 64 per block of depth
        config = comfy.supported_models.SD3(
            {
                "in_channels": 16, "out_channels": 16, "pos_embed_scaling_factor": None, "patch_size": 2, "depth": 2,
                "adm_in_channels": SD3_POOLED_DIM, "pos_embed_max_size": 16, "num_patches": 256,
                "context_embedder_config": {
                    "target": "torch.nn.Linear", "params": {"in_features": SD3_CONTEXT_DIM, "out_features": hidden}
                },
            }
        )  # fmt: skip
    else:
        unet = dict(TINY_UNET, in_channels=channels + (channels + 1 if inpaint else 0), out_channels=channels)
        model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
        if family == "sdxl":
            base = comfy.supported_models.SDXL
            unet.update(num_classes="sequential", adm_in_channels=2816, use_linear_in_transformer=True)
        else:
            base = comfy.supported_models.SD15

        class TinyConfig(base):
            unet_extra_config = (
                {"num_heads": 2, "num_head_channels": -1} if family == "sdxl" else base.unet_extra_config
            )

            def model_type(self, state_dict, prefix=""):
                return model_type

        if channels != 4:

            class ThreeChannels(comfy.latent_formats.LatentFormat):
                latent_channels = 3
                scale_factor = 1.0

            TinyConfig.latent_format = ThreeChannels
        config = TinyConfig(unet)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_random(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def tiny_vae(channels: int = 4, downscale: int = 8, seed: int = 0):
    """A comfy.sd.VAE around a tiny KL autoencoder with ``channels`` latent channels and the given downscale."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    levels = int(math.log2(downscale)) + 1
    ddconfig = {
        "double_z": True, "z_channels": channels, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1] * levels, "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    module = init_random(AutoencoderKL(ddconfig=ddconfig, embed_dim=channels), seed)
    vae = comfy.sd.VAE(sd=module.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": channels}})
    vae.latent_channels = channels
    vae.downscale_ratio = vae.upscale_ratio = downscale
    return vae


def conditioning(batch: int = 1, tokens: int = 4, seed: int = 0, dim: int = CONTEXT_DIM, pooled: int = 0) -> list:
    """A CONDITIONING with a random text embedding of the tiny UNet's context size (and a pooled one for SDXL)."""
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(batch, pooled, generator=g)} if pooled else {}
    return [[torch.randn(batch, tokens, dim, generator=g), extra]]
