"""The semantic-mixing LDM through a real ComfyUI server: loader + layout conditioning + stock KSampler + decode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5
from comfyui_hs_diffusion.hs_models.layout import colorize
from hs_testing.ldm import expected, write_foreign_checkpoint
from hs_testing.server import error_message

CKPT = "tiny_ema.safetensors"


@pytest.fixture(scope="module")
def ldm_inputs(comfy_server, tiny_ldm, fixtures_dir):
    shutil.copy(tiny_ldm["ema"], comfy_server.models_dir("headswap_diffusion") / CKPT)
    ref = expected(fixtures_dir)
    layout = ref["layout"][0]
    rgb = (colorize(layout[None], PAPER5)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(rgb).save(comfy_server.input_dir / "ldm_layout.png")
    rgb = (colorize(layout[None] % CANONICAL.num_classes + 3, CANONICAL)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(rgb).save(comfy_server.input_dir / "ldm_layout_canonical.png")
    photo = ((ref["image"][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(photo).save(comfy_server.input_dir / "ldm_photo.png")
    return ref


def _graph(ckpt: str = CKPT, layout: str = "ldm_layout.png", label_set: str = "paper5", seed: int = 11) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ldm_photo.png"}},
        "2": {"class_type": "HeadSwapDiffusionLoader", "inputs": {"ckpt_name": ckpt, "weights": "auto", "weight_dtype": "default", "quantize_on_decode": True}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 1]}},
        "4": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": layout, "label_set": label_set, "decode": "auto"}},
        "5": {"class_type": "HeadSwapLayoutConditioning", "inputs": {"layout": ["4", 0], "unknown_labels": "error"}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": seed, "steps": 4, "cfg": 1.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["3", 0], "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 1]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "ldm_e2e"}},
    }  # fmt: skip


def _in_process(pack_nodes, comfy_dirs, tiny_ldm, comfy_server) -> torch.Tensor:
    """The same graph run in this process with the same nodes and inputs (the server's result must equal it)."""
    import nodes as core_nodes
    from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
    from comfyui_hs_diffusion.nodes.layout_io import decode_layout_image

    shutil.copy(tiny_ldm["ema"], comfy_dirs["models"] / "headswap_diffusion" / CKPT)
    with torch.inference_mode():
        model, vae, _ = pack_nodes["HeadSwapDiffusionLoader"].execute(CKPT, "auto", "default", True).result
        photo = np.asarray(Image.open(comfy_server.input_dir / "ldm_photo.png").convert("RGB"))
        pixels = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]
        latent = core_nodes.VAEEncode().encode(vae, pixels)[0]
        labels = decode_layout_image(Image.open(comfy_server.input_dir / "ldm_layout.png"), "paper5", "auto", "layout")
        layout = SemanticLayout(labels[None], PAPER5)
        positive, negative = pack_nodes["HeadSwapLayoutConditioning"].execute(layout, "error").result
        samples = core_nodes.KSampler().sample(
            model, 11, 4, 1.0, "ddim", "ddim_uniform", positive, negative, latent, 0.6
        )[0]
        return core_nodes.VAEDecode().decode(vae, samples)[0]


def test_ldm_graph_runs_in_the_server(comfy_server, ldm_inputs, pack_nodes, comfy_dirs, tiny_ldm):
    entry = comfy_server.run(_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry)
    saved = np.asarray(Image.open(comfy_server.output_files(entry, "8")[0]).convert("RGB"))
    assert saved.shape == (64, 64, 3)
    assert saved.std() > 5  # an image, not a constant
    reference = (_in_process(pack_nodes, comfy_dirs, tiny_ldm, comfy_server)[0] * 255).round().clamp(0, 255)
    assert np.abs(saved.astype(np.int16) - reference.numpy().astype(np.int16)).max() <= 1


def test_ldm_bad_input_gives_clear_errors_and_the_server_keeps_serving(comfy_server, ldm_inputs):
    write_foreign_checkpoint(comfy_server.models_dir("headswap_diffusion") / "sd15_like.safetensors", "sd15")
    entry = comfy_server.run(_graph(ckpt="sd15_like.safetensors"))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "'sd15_like.safetensors' is a Stable Diffusion 1.x checkpoint" in message, message
    assert "semantic-mixing sampler can use that MODEL directly" in message, message
    entry = comfy_server.run(_graph(layout="ldm_layout_canonical.png", label_set="canonical8"))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "has 8 classes, but this model's layout encoder τ_θ expects 5" in message, message
    entry = comfy_server.run(_graph(seed=12))  # a new seed: the sampler really runs again
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert comfy_server.output_files(entry, "8")[0].is_file()
    assert comfy_server.alive()
