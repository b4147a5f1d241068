"""The semantic-mixing LDM as ComfyUI MODEL and VAE, in-process: parity through core sampling and core VAE nodes."""

from __future__ import annotations

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.sd
import numpy as np
import pytest
import torch
from comfy_extras import nodes_custom_sampler as custom

import nodes as core_nodes
from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.ldm import read_ldm_checkpoint
from comfyui_hs_diffusion.nodes.diffusion_model import HeadSwapDiffusionModel, HeadSwapVQVAE, build_model
from hs_testing.ldm import write_foreign_checkpoint
from hs_testing.tiny_models import tiny_vae

TOL_COND, TOL_EPS, TOL_DECODE, TOL_DDIM = 1e-6, 1e-4, 1e-4, 1e-3
FOLDER = "headswap_diffusion"


pytestmark = pytest.mark.usefixtures("inference_mode")


@pytest.fixture(scope="module")
def loaded(pack_nodes, model_dir):
    """MODEL and VAE per weight set, loaded through the loader node."""
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    out = {}
    for weights, name in (("ema", "tiny_ema.safetensors"), ("live", "tiny_live_fp16.safetensors")):
        out[weights] = loader.execute(ckpt_name=name, weights="auto", weight_dtype="default", quantize_on_decode=True)
    return {k: v.result[:2] for k, v in out.items()}


@pytest.fixture(scope="module")
def conditioning(pack_nodes, ref):
    layout = SemanticLayout(ref["layout"], PAPER5)
    return pack_nodes["HeadSwapLayoutConditioning"].execute(layout=layout, unknown_labels="error").result


def _max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def _alphas_cumprod(model) -> torch.Tensor:
    sigmas = model.get_model_object("model_sampling").sigmas.double()
    return 1.0 / (1.0 + sigmas**2)


def test_loader_outputs_core_types(loaded):
    model, vae = loaded["ema"]
    assert isinstance(model.model, HeadSwapDiffusionModel)
    assert isinstance(vae, comfy.sd.VAE) and isinstance(vae, HeadSwapVQVAE)
    assert model.model.model_config.inpaint_model() is False
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    latent_format = model.get_model_object("latent_format")
    assert latent_format.latent_channels == 3 and latent_format.scale_factor == 1.0
    assert len(latent_format.latent_rgb_factors) == 3
    # every Conv/Linear/GroupNorm of the UNet and τ_θ comes from comfy.ops
    layers = [m for m in model.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv1d | torch.nn.Linear)]
    assert layers and all(hasattr(m, "comfy_cast_weights") for m in layers)
    assert model.model.num_classes == 5
    assert vae.downscale_ratio == 4 and vae.latent_channels == 3 and vae.vae_dtype == torch.float32
    # newer ComfyUI resizes empty latents (EmptyLatentImage: f = 8) by this ratio before sampling
    assert latent_format.spacial_downscale_ratio == vae.spacial_compression_encode() == 4


def test_loader_follows_dynamic_vram_where_comfyui_has_it(tiny_ldm, monkeypatch):
    """Newer ComfyUI (README "Compatibility"): ``CoreModelPatcher`` becomes ``ModelPatcherDynamic`` at start-up and
    ``BaseModel.load_model_weights`` takes ``assign=``. Simulated here: the loader must use the patcher class it
    finds at call time and pass ``assign=is_dynamic()`` to every loader whose signature takes it."""

    class DynamicPatcher(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    seen = {}
    original = HeadSwapDiffusionModel.load_model_weights

    def load_model_weights(self, sd, unet_prefix="", assign=False):  # newer core's signature
        seen["assign"] = assign
        return original(self, sd, unet_prefix)

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicPatcher, raising=False)
    monkeypatch.setattr(HeadSwapDiffusionModel, "load_model_weights", load_model_weights)
    checkpoint = read_ldm_checkpoint(tiny_ldm["ema"], "auto")
    patcher = build_model(checkpoint, "fp32")
    assert type(patcher) is DynamicPatcher and seen == {"assign": True}
    # τ_θ went through torch's load_state_dict(assign=True): its parameter is the checkpoint tensor, not a copy
    weight = patcher.model.layout_encoder.channel_mapper.weight
    assert weight.data_ptr() == checkpoint.layout_encoder["channel_mapper.weight"].data_ptr()


def test_latent_previews_use_the_rgb_factors(loaded, ref):
    import latent_preview

    latent_format = loaded["ema"][0].get_model_object("latent_format")
    previewer = latent_preview.Latent2RGBPreviewer(
        latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias
    )
    preview = previewer.decode_latent_to_preview(ref["fs_h"].clamp(-1, 1))
    assert preview.size == (16, 16)
    expected_rgb = ((ref["fs_h"][0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0)
    assert (torch.tensor(np.array(preview.convert("RGB")), dtype=torch.float32) - expected_rgb).abs().max() <= 1


def test_fp16_weights_with_manual_cast_keep_parity(pack_nodes, model_dir, conditioning, ref):
    """fp16 storage (the fixture's weights are exact in fp16) with ComfyUI's manual cast to fp32 on the CPU."""
    model = (
        pack_nodes["HeadSwapDiffusionLoader"]
        .execute(ckpt_name="tiny_live_fp16.safetensors", weights="auto", weight_dtype="fp16", quantize_on_decode=True)
        .result[0]
    )
    base = model.model
    assert base.get_dtype() == torch.float16 and base.manual_cast_dtype == torch.float32
    assert next(base.diffusion_model.parameters()).dtype == torch.float16
    mm.load_models_gpu([model])
    sigmas = base.model_sampling.sigmas[ref["t"]]
    alpha_bar = (1.0 / (1.0 + sigmas.double() ** 2)).float()
    x = ref["x_noisy"] / alpha_bar.sqrt()[:, None, None, None]
    denoised = base.apply_model(x, sigmas, c_concat=ref["cond"])
    eps = (x - denoised) / sigmas[:, None, None, None]
    assert _max_diff(eps, ref["eps_live"]) <= TOL_EPS
    mm.unload_all_models()


def test_schedule_matches_reference(loaded, ref):
    model = loaded["ema"][0]
    assert _max_diff(_alphas_cumprod(model), ref["alphas_cumprod"].double()) <= 1e-7


@pytest.mark.parametrize("weights", ["live", "ema"])
def test_eps_through_apply_model_matches_reference(loaded, conditioning, ref, weights):
    model = loaded[weights][0]
    positive = conditioning[0]
    mm.load_models_gpu([model])
    base = model.model
    # the layout conditioning entry becomes c_concat = τ_θ(layout), computed inside the model
    conds = base.extra_conds(**positive[0][1], noise=ref["x_noisy"], device=torch.device("cpu"))
    c_concat = conds["c_concat"].cond
    assert _max_diff(c_concat, ref["cond"]) <= TOL_COND
    sigmas = base.model_sampling.sigmas[ref["t"]]
    alpha_bar = (1.0 / (1.0 + sigmas.double() ** 2)).float()
    x = ref["x_noisy"] / alpha_bar.sqrt()[:, None, None, None]  # ComfyUI's variance-exploding latent
    with torch.no_grad():
        denoised = base.apply_model(x, sigmas, c_concat=c_concat)
    eps = (x - denoised) / sigmas[:, None, None, None]
    assert _max_diff(eps, ref[f"eps_{weights}"]) <= TOL_EPS


@pytest.mark.parametrize("weights", ["ema", "live"])
def test_ddim_run_through_comfy_sampling_matches_reference(loaded, conditioning, ref, weights):
    """10-step DDIM η=0 = ComfyUI's ddim sampler over the ddim_uniform schedule (comfyui.md §6)."""
    model = loaded[weights][0]
    positive, negative = conditioning
    alpha_bar = _alphas_cumprod(model)
    noise = (ref["x_T"].double() / (1 - alpha_bar[901]).sqrt()).float()  # ComfyUI scales the noise by σ_901
    steps, eps_seen = [], []
    hook = model.model.diffusion_model.register_forward_hook(lambda m, i, o: eps_seen.append(o.detach().clone()))
    try:
        samples = comfy.sample.sample(
            model, noise, 10, 1.0, "ddim", "ddim_uniform", positive, negative, torch.zeros_like(noise),
            denoise=1.0, callback=lambda i, x0, x, total: steps.append((x0.clone(), x.clone())),
            disable_pbar=True, seed=0,
        )  # fmt: skip
    finally:
        hook.remove()
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 10)
    timesteps = model.get_model_object("model_sampling").timestep(sigmas[:-1])
    assert torch.equal(timesteps.long(), ref["ddim_timesteps"].flip(0))
    prefix = f"ddim_{weights}"
    # ComfyUI ends at σ = 0 and returns the last predicted x0
    assert _max_diff(samples, ref[f"{prefix}_pred_x0"][9]) <= TOL_DDIM
    assert len(steps) == 10 and len(eps_seen) == 10
    for i, (x0, x) in enumerate(steps):
        assert _max_diff(x0, ref[f"{prefix}_pred_x0"][i]) <= TOL_DDIM, f"pred_x0 at step {i}"
        assert _max_diff(eps_seen[i], ref[f"{prefix}_eps"][i]) <= TOL_DDIM, f"eps at step {i}"
        if i > 0:  # the x entering step i (σ-space) is the reference x after step i−1 (ᾱ-space)
            x_vp = x.double() * alpha_bar[ref["ddim_timesteps"][9 - i]].sqrt()
            assert _max_diff(x_vp, ref[f"{prefix}_x_inter"][i - 1]) <= TOL_DDIM, f"x after step {i - 1}"
    relative = (samples - ref[f"{prefix}_pred_x0"][9]).abs().max() / ref[f"{prefix}_pred_x0"][9].abs().max()
    assert relative <= 1e-5


def test_core_vae_nodes_encode_and_decode_like_the_reference(loaded, ref):
    vae = loaded["ema"][1]
    image = ((ref["image"] + 1) / 2).permute(0, 2, 3, 1)  # IMAGE in 0..1, BHWC
    latent = core_nodes.VAEEncode().encode(vae, image)[0]
    assert _max_diff(latent["samples"], ref["fs_h"]) <= TOL_DECODE  # the pre-quantisation latent
    decoded = core_nodes.VAEDecode().decode(vae, {"samples": ref["fs_h"]})[0]
    expected_image = ((ref["fs_decode_quantized"] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert _max_diff(decoded, expected_image) <= TOL_DECODE
    for weights in ("ema", "live"):  # the DDIM outputs decode (quantised) like the reference
        decoded = core_nodes.VAEDecode().decode(vae, {"samples": ref[f"ddim_{weights}_x0"]})[0]
        expected_image = ((ref[f"ddim_{weights}_decoded"] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
        assert _max_diff(decoded, expected_image) <= TOL_DECODE


def test_vae_without_quantisation_and_tiled_nodes(pack_nodes, model_dir, loaded, ref):
    vae = (
        pack_nodes["HeadSwapDiffusionLoader"]
        .execute(ckpt_name="tiny_ema.safetensors", weights="auto", weight_dtype="default", quantize_on_decode=False)
        .result[1]
    )
    decoded = core_nodes.VAEDecode().decode(vae, {"samples": ref["fs_h"]})[0]
    expected_image = ((ref["fs_decode_not_quantized"] + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert _max_diff(decoded, expected_image) <= TOL_DECODE
    # tiled variants on a 128×80 image: with one tile per pass they equal the untiled result; with small tiles
    # they run through core's tiler (the decoder's global attention then sees less context, as for any VAE)
    image = torch.rand(1, 80, 128, 3)
    plain = core_nodes.VAEEncode().encode(vae, image)[0]["samples"]
    assert plain.shape == (1, 3, 20, 32)
    whole = core_nodes.VAEEncodeTiled().encode(vae, image, 256, 0, 64, 8)[0]["samples"]
    assert _max_diff(whole, plain) <= TOL_DECODE
    tiled = core_nodes.VAEEncodeTiled().encode(vae, image, 64, 16, 64, 8)[0]["samples"]
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    untiled = core_nodes.VAEDecode().decode(vae, {"samples": plain})[0]
    whole = core_nodes.VAEDecodeTiled().decode(vae, {"samples": plain}, 256, 0, 64, 8)[0]
    assert _max_diff(whole, untiled) <= TOL_DECODE
    images = core_nodes.VAEDecodeTiled().decode(vae, {"samples": plain}, 64, 32, 64, 8)[0]
    assert images.shape == (1, 80, 128, 3) and images.min() >= 0 and images.max() <= 1
    # encode crops to multiples of 4 like every core VAE
    assert core_nodes.VAEEncode().encode(vae, torch.rand(1, 66, 67, 3))[0]["samples"].shape == (1, 3, 16, 16)


# Set by newer ComfyUI on every VAE, read only by its audio nodes (comfy/sd.py VAE.__init__).
AUDIO_ONLY_VAE_ATTRIBUTES = {"audio_sample_rate"}


def test_vae_sets_every_attribute_a_core_vae_sets(loaded):
    """The VQ VAE skips core's ``__init__``: whatever the running ComfyUI sets on its own VAEs (and its methods
    may read) must exist here too. On a newer ComfyUI this fails as soon as core adds an attribute."""
    core = tiny_vae(channels=3, downscale=4)
    vae = loaded["ema"][1]
    assert not set(vars(core)) - set(vars(vae)) - AUDIO_ONLY_VAE_ATTRIBUTES
    # read unconditionally by newer ComfyUI's encode/decode (README "Compatibility"); core's image-VAE defaults
    assert vae.handles_tiling is False and vae.format_encoded is None


def test_vae_output_processing_works_in_place(loaded, ref):
    """Newer ComfyUI decodes into a preallocated buffer and calls ``process_output`` on a slice of it without
    using the return value; 0.3.75 uses the return value. Both must give the same 0..1 image."""
    vae = loaded["ema"][1]
    raw = vae.first_stage_model.decode(ref["fs_h"]).float()  # about −1..1
    expected_image = ((raw + 1.0) / 2.0).clamp(0.0, 1.0)
    buffer = torch.empty((2, *raw.shape[1:]))
    buffer[1:].copy_(raw)
    returned = vae.process_output(buffer[1:])
    assert _max_diff(buffer[1:], expected_image) == 0.0 and _max_diff(returned, expected_image) == 0.0
    assert returned.data_ptr() == buffer[1:].data_ptr()
    # process_input must not touch the caller's IMAGE
    image = torch.rand(1, 16, 16, 3)
    before = image.clone()
    vae.process_input(image)
    assert torch.equal(image, before)


def _latent(ref, size=16):
    return {"samples": ref["fs_h"].repeat(2, 1, 1, 1)[:, :, :size, :size]}


def test_every_sampler_runs_in_the_stock_ksampler(loaded, conditioning, ref):
    model = loaded["ema"][0]
    positive, negative = conditioning
    latent = _latent(ref)
    for sampler in comfy.samplers.KSampler.SAMPLERS:
        out = core_nodes.KSampler().sample(model, 1, 2, 1.0, sampler, "normal", positive, negative, latent, 1.0)[0]
        assert out["samples"].shape == (2, 3, 16, 16) and torch.isfinite(out["samples"]).all(), sampler


def test_every_scheduler_runs_in_the_stock_ksampler(loaded, conditioning, ref):
    model = loaded["live"][0]
    positive, negative = conditioning
    latent = _latent(ref)
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        out = core_nodes.KSampler().sample(model, 2, 3, 1.0, "euler", scheduler, positive, negative, latent, 0.8)[0]
        assert out["samples"].shape == (2, 3, 16, 16) and torch.isfinite(out["samples"]).all(), scheduler


def test_sampler_custom_advanced_with_cfg_guider(loaded, conditioning, ref):
    model = loaded["ema"][0]
    positive, negative = conditioning
    guider = custom.CFGGuider.execute(model, positive, negative, 2.0).result[0]
    sampler = custom.KSamplerSelect.execute("dpmpp_2m").result[0]
    sigmas = custom.BasicScheduler.execute(model, "karras", 4, 1.0).result[0]
    noise = custom.RandomNoise.execute(7).result[0]
    out, denoised = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, _latent(ref)).result
    assert out["samples"].shape == (2, 3, 16, 16) and torch.isfinite(out["samples"]).all()
    # positive and negative carry the same layout, so cfg > 1 changes nothing
    basic = custom.BasicGuider.execute(model, positive).result[0]
    out_basic = custom.SamplerCustomAdvanced.execute(noise, basic, sampler, sigmas, _latent(ref)).result[0]
    assert _max_diff(out["samples"], out_basic["samples"]) <= 1e-3


def test_memory_management_loads_and_partially_offloads(pack_nodes, model_dir, conditioning, ref):
    model, _, _ = (
        pack_nodes["HeadSwapDiffusionLoader"]
        .execute(ckpt_name="tiny_ema.safetensors", weights="auto", weight_dtype="default", quantize_on_decode=True)
        .result
    )
    positive, negative = conditioning
    core_nodes.KSampler().sample(model, 3, 2, 1.0, "euler", "normal", positive, negative, _latent(ref), 1.0)
    assert any(entry.model.model is model.model for entry in mm.current_loaded_models)
    assert model.model_size() > 0
    x, sigma, c_concat = ref["fs_h"], torch.tensor([1.0]), ref["cond"][:1]
    full = model.model.apply_model(x, sigma, c_concat=c_concat)
    mm.unload_all_models()
    assert not any(entry.model.model is model.model for entry in mm.current_loaded_models)
    # a low-VRAM load leaves layers to be cast at run time by comfy.ops, with the same result
    model.load(torch.device("cpu"), lowvram_model_memory=512 * 1024, full_load=False)
    try:
        cast = [m for m in model.model.modules() if getattr(m, "comfy_cast_weights", False)]
        assert model.model.model_lowvram and len(cast) > 10
        partial = model.model.apply_model(x, sigma, c_concat=c_concat)
    finally:
        model.detach()
    assert _max_diff(full, partial) <= 1e-6
    # ComfyUI weight patches (as LoRA loaders add them) reach the UNet
    patched = model.clone()
    patched.add_patches({"diffusion_model.out.2.bias": (torch.full((3,), 0.5),)}, 1.0)
    mm.load_models_gpu([patched], force_full_load=True)
    shifted = patched.model.apply_model(x, sigma, c_concat=c_concat)
    mm.unload_all_models()
    assert torch.allclose(full - shifted, torch.full_like(full, 0.5), atol=1e-4)  # denoised = x − σ·ε, σ = 1


def test_layout_conditioning_errors(pack_nodes, loaded, ref):
    model = loaded["ema"][0]
    latent = _latent(ref)
    node = pack_nodes["HeadSwapLayoutConditioning"]

    def sample(layout, unknown="error"):
        positive, negative = node.execute(layout=layout, unknown_labels=unknown).result
        return core_nodes.KSampler().sample(model, 0, 1, 1.0, "euler", "normal", positive, negative, latent, 1.0)[0]

    canonical = SemanticLayout(ref["layout"], CANONICAL)
    with pytest.raises(
        ValueError, match=r"label set 'canonical8' has 8 classes, but this model's layout encoder τ_θ expects 5"
    ):
        sample(canonical)
    holes = ref["layout"].clone()
    holes[:, :4, :4] = UNKNOWN
    with pytest.raises(ValueError, match=r"the layout has 32 UNKNOWN pixels .* set unknown_labels to 'no class'"):
        sample(SemanticLayout(holes, PAPER5))
    assert torch.isfinite(sample(SemanticLayout(holes, PAPER5), "no class")["samples"]).all()
    with pytest.raises(ValueError, match="the layout batch has 3 maps but the latent batch has 2"):
        sample(SemanticLayout(ref["layout"][:1].repeat(3, 1, 1), PAPER5))
    with pytest.raises(ValueError, match="the layout is 32×64 but the latent is for a 64×64 image"):
        sample(SemanticLayout(ref["layout"][:, :, :32], PAPER5))
    # a layout of another size with the same aspect ratio is resized (nearest) to the image size
    small = SemanticLayout(ref["layout"][:, ::2, ::2].contiguous(), PAPER5)
    assert torch.isfinite(sample(small)["samples"]).all()
    # text conditioning has no layout
    with pytest.raises(ValueError, match="the conditioning has no layout"):
        core_nodes.KSampler().sample(model, 0, 1, 1.0, "euler", "normal", [[None, {}]], [[None, {}]], latent, 1.0)


def test_loader_errors(pack_nodes, model_dir, tiny_ldm):
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    write_foreign_checkpoint(model_dir / "sd15_like.safetensors", "sd15")
    write_foreign_checkpoint(model_dir / "sdxl_like.safetensors", "sdxl")
    data = tiny_ldm["ema"].read_bytes()
    (model_dir / "cut.safetensors").write_bytes(data[: len(data) // 2])

    def load(name, weights="auto"):
        return loader.execute(ckpt_name=name, weights=weights, weight_dtype="default", quantize_on_decode=True)

    with pytest.raises(ValueError, match=r"'sd15_like.safetensors' is a Stable Diffusion 1.x checkpoint") as info:
        load("sd15_like.safetensors")
    assert "the semantic-mixing sampler can use that MODEL directly" in str(info.value)
    with pytest.raises(ValueError, match=r"'sdxl_like.safetensors' is a Stable Diffusion XL \(SDXL\) checkpoint"):
        load("sdxl_like.safetensors")
    with pytest.raises(ValueError, match="cannot read 'cut.safetensors': the file is truncated or corrupted"):
        load("cut.safetensors")
    with pytest.raises(ValueError, match="holds only the live UNet weights"):
        load("tiny_live_fp16.safetensors", "ema")
    with pytest.raises(FileNotFoundError):
        load("missing.safetensors")
