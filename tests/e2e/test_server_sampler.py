"""The generic semantic-mixing path through a real ComfyUI server with a random-weight SD1.5 checkpoint
(full size, cached): CheckpointLoaderSimple → CLIPTextEncode → Encode Sources → Semantic-Mixing KSampler →
VAEDecode → Paste Back → SaveImage, an interrupt during sampling, and a bad input, all via POST /prompt."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from PIL import Image

from hs_testing.sd15 import link_into, random_sd15_checkpoint
from hs_testing.server import error_message

SAMPLER_NODE = "9"


@pytest.fixture(scope="module")
def sd15(comfy_server):
    """The cached random SD1.5 checkpoint, linked into the server's checkpoints folder; test images."""
    from matplotlib import cbook
    from skimage import data

    name = link_into(comfy_server.models_dir("checkpoints"), random_sd15_checkpoint())
    for size in (128, 64):
        body = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BILINEAR)
        body.save(comfy_server.input_dir / f"body_{size}.png")
        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
            hopper.convert("RGB").crop((0, 0, 512, 512)).resize((size, size), Image.Resampling.BILINEAR).save(
                comfy_server.input_dir / f"head_{size}.png"
            )
        yy, xx = np.mgrid[:size, :size] / size
        head = ((xx - 0.5) ** 2 / 0.22**2 + (yy - 0.3) ** 2 / 0.28**2) <= 1.0  # the face and hair
        body_keep = (yy >= 0.7) & ~head  # shoulders and below; the neck between is generated
        Image.fromarray((head * 255).astype(np.uint8)).save(comfy_server.input_dir / f"head_mask_{size}.png")
        Image.fromarray((body_keep * 255).astype(np.uint8)).save(comfy_server.input_dir / f"body_mask_{size}.png")
    return name


def headswap_prompt(checkpoint: str, size: int, seed: int, steps: int, prefix: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": f"head_{size}.png"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": f"body_{size}.png"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": f"head_mask_{size}.png"}},
        "7": {"class_type": "LoadImage", "inputs": {"image": f"body_mask_{size}.png"}},
        "61": {"class_type": "ImageToMask", "inputs": {"image": ["6", 0], "channel": "red"}},
        "71": {"class_type": "ImageToMask", "inputs": {"image": ["7", 0], "channel": "red"}},
        "8": {"class_type": "HeadSwapEncodeSources", "inputs": {
            "vae": ["1", 2], "head_image": ["4", 0], "head_mask": ["61", 0], "body_image": ["5", 0], "body_mask": ["71", 0]}},
        SAMPLER_NODE: {"class_type": "HeadSwapSemanticMixingKSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
            "head_latent": ["8", 0], "head_mask": ["8", 1], "body_latent": ["8", 2], "body_mask": ["8", 3],
            "seed": seed, "steps": steps, "cfg": 1.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "noise_mode": "shared", "fusion_start": 0.0, "fusion_end": 1.0, "mask_dilation": "", "soft_masks": "blend",
            "final_fusion": True}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER_NODE, 0], "vae": ["1", 2]}},
        "11": {"class_type": "HeadSwapPasteBack", "inputs": {
            "result": ["10", 0], "body_image": ["5", 0], "body_mask": ["71", 0], "blend": "feathered", "feather": 4,
            "skin_tone": 0.0, "head_image": ["4", 0], "head_mask": ["61", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": prefix}},
    }  # fmt: skip


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _mask(server, name) -> np.ndarray:
    return np.asarray(Image.open(server.input_dir / name).convert("L")) > 127


def test_sd15_semantic_mixing_workflow_runs_on_the_server(comfy_server, sd15):
    entry = comfy_server.run(headswap_prompt(sd15, 128, seed=1, steps=2, prefix="hs_sd15"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    out = _png(comfy_server.output_files(entry, "12")[0])
    assert out.shape == (128, 128, 3)
    head, body = _mask(comfy_server, "head_mask_128.png"), _mask(comfy_server, "body_mask_128.png")
    assert np.array_equal(out[body], _png(comfy_server.input_dir / "body_128.png")[body])
    assert np.array_equal(out[head], _png(comfy_server.input_dir / "head_128.png")[head])
    band = ~(head | body)
    assert out[band].std() > 0  # the generated neck region is an image, not a constant
    assert not np.array_equal(out[band], _png(comfy_server.input_dir / "body_128.png")[band])


def _running(server, prompt_id: str) -> bool:
    return any(item[1] == prompt_id for item in server.get("/queue").json()["queue_running"])


def test_interrupt_during_sampling_leaves_the_server_ready(comfy_server, sd15):
    first = comfy_server.run(headswap_prompt(sd15, 64, seed=5, steps=2, prefix="hs_first"))
    assert first["status"]["status_str"] == "success", error_message(first)
    other = comfy_server.run(headswap_prompt(sd15, 64, seed=6, steps=2, prefix="hs_other"))
    assert other["status"]["status_str"] == "success", error_message(other)

    # Only the sampler re-runs (every other node is cached): a long run, interrupted while it samples.
    response = comfy_server.queue(headswap_prompt(sd15, 64, seed=7, steps=10000, prefix="hs_long"))
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]
    deadline = time.monotonic() + 60
    while not _running(comfy_server, prompt_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    started = time.monotonic()
    assert requests.post(comfy_server.url + "/interrupt", timeout=10).status_code == 200
    entry = comfy_server.wait(prompt_id, timeout=120)
    assert time.monotonic() - started < 60
    assert entry["status"]["status_str"] == "error"
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_id"] == SAMPLER_NODE, entry["status"]["messages"]

    # The server is ready and samples correctly: the first prompt again gives the same image, bit for bit.
    again = comfy_server.run(headswap_prompt(sd15, 64, seed=5, steps=2, prefix="hs_again"))
    assert again["status"]["status_str"] == "success", error_message(again)
    assert np.array_equal(
        _png(comfy_server.output_files(again, "12")[0]), _png(comfy_server.output_files(first, "12")[0])
    )


def test_mismatched_latents_fail_before_sampling_and_the_server_keeps_serving(comfy_server, sd15):
    prompt = headswap_prompt(sd15, 64, seed=5, steps=2, prefix="hs_bad")
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "head_128.png"}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}}
    prompt[SAMPLER_NODE]["inputs"]["head_latent"] = ["21", 0]
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "latents of different sizes: body_latent is 8×8 and head_latent is 16×16" in message, message
    assert comfy_server.get("/system_stats").status_code == 200
    ok = comfy_server.run(headswap_prompt(sd15, 64, seed=8, steps=2, prefix="hs_after_error"))
    assert ok["status"]["status_str"] == "success", error_message(ok)
