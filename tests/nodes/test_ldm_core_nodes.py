"""The semantic-mixing LDM MODEL with core model nodes, in-process: LoRA loaders, Checkpoint Save / Save Model
round trips, block-patch nodes (FreeU) and config-file errors of the loader."""

from __future__ import annotations

import shutil

import comfy.lora
import comfy.model_management as mm
import comfy.sd
import folder_paths
import pytest
import torch
from comfy_extras.nodes_freelunch import FreeU_V2
from comfy_extras.nodes_model_merging import CheckpointSave, ModelSave
from safetensors.torch import save_file

import nodes as core_nodes
from comfyui_hs_diffusion.hs_models.files import creation_mode
from comfyui_hs_diffusion.hs_models.labels import PAPER5
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from hs_testing.ldm import TINY_CKPT, run_converter
from hs_testing.tiny_models import tiny_model, tiny_vae

FOLDER = "headswap_diffusion"


pytestmark = pytest.mark.usefixtures("inference_mode")


def _load(pack_nodes, name: str, weights: str = "auto"):
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    return loader.execute(ckpt_name=name, weights=weights, weight_dtype="default", quantize_on_decode=True).result[:2]


@pytest.fixture(scope="module")
def loaded(pack_nodes, model_dir):
    return _load(pack_nodes, "tiny_ema.safetensors")


@pytest.fixture(scope="module")
def conditioning(pack_nodes, ref):
    layout = SemanticLayout(ref["layout"], PAPER5)
    return pack_nodes["HeadSwapLayoutConditioning"].execute(layout=layout, unknown_labels="error").result


def _eps_input(ref):
    return ref["fs_h"], torch.tensor([1.0]), ref["cond"][:1]


def _denoised(patcher, ref) -> torch.Tensor:
    """apply_model of a (possibly patched) MODEL, loaded by ComfyUI's model management (patches applied)."""
    x, sigma, c_concat = _eps_input(ref)
    mm.load_models_gpu([patcher], force_full_load=True)
    try:
        return patcher.model.apply_model(x, sigma, c_concat=c_concat).clone()
    finally:
        mm.unload_all_models()


def _sample(model, conditioning, ref) -> torch.Tensor:
    positive, negative = conditioning
    latent = {"samples": ref["fs_h"].repeat(2, 1, 1, 1)}
    return core_nodes.KSampler().sample(model, 7, 3, 1.0, "euler", "normal", positive, negative, latent, 1.0)[0][
        "samples"
    ]


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------


def _out_conv_lora(model, rank: int = 2) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A LoRA on the UNet's output conv in ComfyUI's generic key format, and the weight change it encodes."""
    weight = model.model.diffusion_model.out[2].weight
    generator = torch.Generator().manual_seed(0)
    up = torch.randn(weight.shape[0], rank, 1, 1, generator=generator) * 0.1
    down = torch.randn(rank, *weight.shape[1:], generator=generator) * 0.1
    lora = {"diffusion_model.out.2.lora_up.weight": up, "diffusion_model.out.2.lora_down.weight": down}
    return lora, (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


def test_unet_config_holds_no_architecture_for_core_sd_code(loaded):
    model, _ = loaded
    unet_config = model.model.model_config.unet_config
    assert "num_res_blocks" not in unet_config and "channel_mult" not in unet_config
    assert unet_config["in_channels"] == 6 and unet_config["out_channels"] == 3
    keys = comfy.lora.model_lora_keys_unet(model.model, {})
    assert keys["diffusion_model.out.2"] == "diffusion_model.out.2.weight"
    assert keys["lora_unet_out_2"] == "diffusion_model.out.2.weight"


def test_lora_loader_model_only_patches_the_unet(loaded, ref, comfy_dirs):
    model, _ = loaded
    lora, delta = _out_conv_lora(model)
    lora_dir = comfy_dirs["models"] / "loras"
    lora_dir.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)
    save_file(lora, str(lora_dir / "ldm_out_conv.safetensors"))
    original = model.model.diffusion_model.out[2].weight.detach().clone()
    base = _denoised(model, ref)

    (patched,) = core_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "ldm_out_conv.safetensors", 1.0)
    assert "diffusion_model.out.2.weight" in patched.patches
    mm.load_models_gpu([patched], force_full_load=True)
    try:
        weight = patched.model.diffusion_model.out[2].weight.detach().clone()
    finally:
        mm.unload_all_models()
    assert torch.allclose(weight, original + delta, atol=1e-6)
    assert torch.equal(model.model.diffusion_model.out[2].weight, original)  # unpatched again after unloading
    lora_out = _denoised(patched, ref)
    assert float((lora_out - base).abs().max()) > 1e-3
    # strength 0 through the core API: no change
    (same, _) = comfy.sd.load_lora_for_models(model, None, lora, 0.0, 0.0)
    assert torch.allclose(_denoised(same, ref), base, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# saving with core nodes and loading back
# ------------------------------------------------------------------------------------------------


def _saved(comfy_dirs, prefix: str):
    found = sorted((comfy_dirs["output"] / prefix.split("/")[0]).glob(prefix.split("/")[1] + "*.safetensors"))
    assert len(found) == 1, found
    return found[0]


def test_checkpoint_save_round_trip_through_the_loader(pack_nodes, loaded, model_dir, comfy_dirs, ref):
    model, vae = loaded
    CheckpointSave().save(model, None, vae, "ldm_saved/full")
    shutil.copy(_saved(comfy_dirs, "ldm_saved/full"), model_dir / "resaved_full.safetensors")
    model2, vae2 = _load(pack_nodes, "resaved_full.safetensors")
    assert model2.model.model_config.ldm_config == model.model.model_config.ldm_config  # heads 4, not the default 8
    assert model2.model.unet_weights == "ema"
    assert torch.equal(_denoised(model2, ref), _denoised(model, ref))
    image = (ref["image"][:1].permute(0, 2, 3, 1) + 1) / 2
    latent = vae.encode(image)
    assert torch.equal(vae2.encode(image), latent)
    assert torch.equal(vae2.decode(latent), vae.decode(latent))


def test_the_pack_save_node_writes_a_file_the_loader_reads_back(pack_nodes, loaded, model_dir, comfy_dirs, ref):
    """Core Checkpoint Save needs a CLIP input this model does not have; the pack's node takes MODEL + VAE."""
    model, vae = loaded
    lora, _ = _out_conv_lora(model)
    (patched, _) = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    save = pack_nodes["HeadSwapSaveDiffusion"]
    save.execute(patched, vae, "ldm_saved/pack")
    saved = _saved(comfy_dirs, "ldm_saved/pack")
    assert saved.stat().st_mode & 0o777 == creation_mode(saved.parent)  # the umask's, not safetensors' 0600
    shutil.copy(saved, model_dir / "resaved_pack.safetensors")
    model2, vae2 = _load(pack_nodes, "resaved_pack.safetensors")
    assert model2.model.model_config.ldm_config == model.model.model_config.ldm_config
    assert torch.equal(_denoised(model2, ref), _denoised(patched, ref))
    image = (ref["image"][:1].permute(0, 2, 3, 1) + 1) / 2
    assert torch.equal(vae2.encode(image), vae.encode(image))
    with pytest.raises(ValueError, match=r"vae: expected the VQ autoencoder from Load Semantic-Mixing LDM, got a"):
        save.execute(model, tiny_vae(channels=3, downscale=4, seed=0), "ldm_saved/bad")
    with pytest.raises(ValueError, match=r"model: this node saves a semantic-mixing LDM, got a .*Checkpoint Save"):
        save.execute(tiny_model(channels=4), vae, "ldm_saved/bad")


def test_saved_file_keeps_a_lora_and_the_layout_encoder(pack_nodes, loaded, model_dir, comfy_dirs, ref):
    model, vae = loaded
    lora, _ = _out_conv_lora(model)
    (patched, _) = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    patched.add_patches({"layout_encoder.channel_mapper.weight": (torch.full((3, 5, 1, 1), 0.25),)}, 1.0)
    expected_out = _denoised(patched, ref)
    x, sigma, _ = _eps_input(ref)
    CheckpointSave().save(patched, None, vae, "ldm_saved/lora")
    shutil.copy(_saved(comfy_dirs, "ldm_saved/lora"), model_dir / "resaved_lora.safetensors")
    model2, _ = _load(pack_nodes, "resaved_lora.safetensors")
    assert torch.equal(_denoised(model2, ref), expected_out)
    assert torch.equal(
        model2.model.layout_encoder.channel_mapper.weight,
        model.model.layout_encoder.channel_mapper.weight + 0.25,
    )


def test_model_save_file_names_the_missing_autoencoder_and_the_converter_completes_it(
    pack_nodes, loaded, model_dir, comfy_dirs, fixtures_dir, ref
):
    model, _ = loaded
    ModelSave().save(model, "ldm_saved/unet_only")
    unet_only = model_dir / "unet_only.safetensors"
    shutil.copy(_saved(comfy_dirs, "ldm_saved/unet_only"), unet_only)
    with pytest.raises(ValueError) as info:
        _load(pack_nodes, unet_only.name)
    message = str(info.value)
    assert "'unet_only.safetensors' holds the UNet and the layout encoder τ_θ of a semantic-mixing LDM but no VQ" in (
        message
    )
    assert "--first-stage-from" in message and "Checkpoint Save" in message
    complete = model_dir / "completed.safetensors"
    result = run_converter(unet_only, complete, "--first-stage-from", fixtures_dir / TINY_CKPT)
    assert result.returncode == 0, result.stderr
    model2, _ = _load(pack_nodes, complete.name)
    assert torch.equal(_denoised(model2, ref), _denoised(model, ref))


# ------------------------------------------------------------------------------------------------
# block patches and loader config errors
# ------------------------------------------------------------------------------------------------


def test_freeu_runs_but_has_no_effect(loaded, conditioning, ref):
    """The README says so: this UNet does not run ComfyUI's block patches (FreeU's output_block_patch)."""
    model, _ = loaded
    base = _sample(model, conditioning, ref)
    (patched,) = FreeU_V2().patch(model, 1.3, 1.4, 0.9, 0.2)
    assert patched.model_options["transformer_options"]["patches"]["output_block_patch"]
    assert torch.equal(_sample(patched, conditioning, ref), base)


def test_loader_reports_a_malformed_sidecar_config(pack_nodes, model_dir, fixtures_dir):
    state = torch.load(fixtures_dir / TINY_CKPT, weights_only=True)["state_dict"]
    save_file(state, str(model_dir / "with_sidecar.safetensors"))
    (model_dir / "with_sidecar.yaml").write_text("model:\n  params: [unclosed\n")
    try:
        with pytest.raises(ValueError, match=r"'with_sidecar.safetensors': its config file 'with_sidecar.yaml' is not"):
            _load(pack_nodes, "with_sidecar.safetensors")
    finally:
        (model_dir / "with_sidecar.yaml").unlink()
