"""The complete head-swap templates end to end through a real ComfyUI server, on real photos: Grace Hopper's
head (matplotlib's sample photo) onto the astronaut's body (scikit-image's), resized to 192 px wide.

Real: the server and every node of the templates' API twins (tests/e2e/prompts/headswap_sd15 and headswap_hs_ldm,
which test_workflows.py checks are the workflows/ templates) with their widget values; the photos; ComfyUI's own
checkpoint loader, CLIP, VAE and UNet at the full SD1.5 architecture; the pack's LDM loader, layout conditioning
and VQ VAE; the face parser's real BiSeNet architecture, run on both photos.

Stand-ins: the weights are random (tests/hs_testing/sd15.py's cached random SD1.5 checkpoint under the template's
file name, the fixture BiSeNet as 79999_iter.pth, the tiny fixture LDM as hs_ldm.safetensors), so the generated
neck is not a neck and nothing here says anything about image quality. A parser with random weights labels almost
every pixel of a real photo "face", which makes alignment and blending meaningless; so in the main runs the two
Face Parse nodes still parse the photos (their layouts are previewed and checked) but the alignment, blend,
inpaint and calibration chain reads the layouts hand-drawn for these photos (tests/hs_testing/layouts.py, through
Load Layout) instead: the only rewiring of the twins. Probe nodes (SaveImage / SaveLatent of intermediate
results) are added to check the invariants, and the sampler runs 2 steps (3 for the tiny LDM) instead of the
templates' 25 / 50. One more run takes the SD1.5 twin as shipped, random parses and all, to show that it runs
through as wired.

Invariants: outside the transition band the saved image equals the body photo and the aligned head bit for bit;
the skin-tone match changes only the neck inside the band, towards the head's face colour; with the paper's model
the sampled latent equals the source latents exactly wherever a source is kept, in both noise modes.
"""

from __future__ import annotations

import copy
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hs_testing import PACK_DIR
from hs_testing.layouts import astronaut, grace_hopper, palette_png
from hs_testing.parsing import fixture_bisenet_state_dict
from hs_testing.sd15 import random_sd15_checkpoint
from hs_testing.server import error_message

PROMPTS = PACK_DIR / "tests" / "e2e" / "prompts"
BODY_SIZE = (192, 192)  # W, H: a multiple of 16, as the paper's VQ-f4 model needs
HEAD_SIZE = (192, 225)  # Grace Hopper's 512×600 at the same scale
DRAWN = {"head": "pipeline_head_layout.png", "body": "pipeline_body_layout.png"}


def _twin(name: str) -> dict:
    return json.loads((PROMPTS / f"{name}.api.json").read_text())


def _node(prompt: dict, class_type: str) -> str:
    """The id of the one node of this class in the prompt."""
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, (class_type, ids)
    return ids[0]


def _nodes(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


@pytest.fixture(scope="module")
def photos(comfy_server, fixtures_dir):
    """The template's input files (head.png, body.png), the drawn layouts, and the models under the template's names."""
    images = {}
    for role, (photo, labels), size in (("head", grace_hopper(), HEAD_SIZE), ("body", astronaut(), BODY_SIZE)):
        small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
        Image.fromarray(small).save(comfy_server.input_dir / f"{role}.png")
        drawn = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        Image.fromarray(palette_png(drawn)).save(comfy_server.input_dir / DRAWN[role])
        images[role] = small
    parser = comfy_server.models_dir("headswap_parsing") / "79999_iter.pth"
    if not parser.exists():
        state = fixture_bisenet_state_dict(fixtures_dir)
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, parser)
    return images


@pytest.fixture(scope="module")
def sd15_checkpoint(comfy_server):
    target = comfy_server.models_dir("checkpoints") / "v1-5-pruned-emaonly.safetensors"
    if not target.exists():
        target.symlink_to(random_sd15_checkpoint())
    return target.name


@pytest.fixture(scope="module")
def hs_ldm_checkpoint(comfy_server, tiny_ldm):
    target = comfy_server.models_dir("headswap_diffusion") / "hs_ldm.safetensors"
    shutil.copy(tiny_ldm["ema"], target)
    return target.name


def with_drawn_layouts(twin: dict) -> tuple[dict, dict]:
    """The twin with the drawn layouts in place of the two parses, plus probes; returns (prompt, probe ids)."""
    prompt = copy.deepcopy(twin)
    probes = {"result": _node(twin, "SaveImage")}
    load_image = {prompt[k]["inputs"]["image"]: k for k in _nodes(prompt, "LoadImage")}
    for parse in _nodes(prompt, "HeadSwapFaceParse"):
        role = {load_image["head.png"]: "head", load_image["body.png"]: "body"}[prompt[parse]["inputs"]["image"][0]]
        drawn = f"drawn_{role}"
        prompt[drawn] = {"class_type": "HeadSwapLoadLayout", "inputs": {"image": DRAWN[role], "label_set": "canonical8", "decode": "auto"}}  # fmt: skip
        for node_id, node in prompt.items():  # every consumer of the parse reads the drawn layout instead
            for name, value in node["inputs"].items():
                if value == [parse, 0]:
                    prompt[node_id]["inputs"][name] = [drawn, 0]
        probes[f"parse_{role}"] = f"probe_parse_{role}"  # keeps the parse running: its layout is previewed
        prompt[probes[f"parse_{role}"]] = {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": [parse, 0], "opacity": 1.0}}  # fmt: skip

    def save_image(name: str, source: list) -> None:
        probes[name] = f"probe_{name}"
        prompt[probes[name]] = {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": f"pipeline_{name}"}}  # fmt: skip

    def save_mask(name: str, source: list) -> None:
        prompt[f"probe_{name}_image"] = {"class_type": "MaskToImage", "inputs": {"mask": source}}
        save_image(name, [f"probe_{name}_image", 0])

    def save_latent(name: str, source: list) -> None:
        probes[name] = f"probe_{name}"
        prompt[probes[name]] = {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": f"pipeline_{name}"}}  # fmt: skip

    align, calibration = _node(prompt, "HeadSwapNeckAlign"), _node(prompt, "HeadSwapSemanticCalibration")
    encode, sampler = _node(prompt, "HeadSwapEncodeSources"), _node(prompt, "HeadSwapSemanticMixingKSampler")
    paste = _node(prompt, "HeadSwapPasteBack")
    save_image("aligned", [align, 0])
    for slot, name in enumerate(("head_mask", "body_mask", "transition_mask")):
        save_mask(name, [calibration, slot])
    save_mask("head_skin", prompt[paste]["inputs"]["head_skin_mask"])
    save_mask("neck", prompt[paste]["inputs"]["neck_mask"])
    save_mask("head_keep", [encode, 1])
    save_mask("body_keep", [encode, 3])
    save_latent("head_latent", [encode, 0])
    save_latent("body_latent", [encode, 2])
    save_latent("sampled", [sampler, 0])
    return prompt, probes


def _read_image(server, entry: dict, node: str) -> np.ndarray:
    return np.asarray(Image.open(server.output_files(entry, node)[0]).convert("RGB"))


def _read_mask(server, entry: dict, node: str) -> np.ndarray:
    values = np.asarray(Image.open(server.output_files(entry, node)[0]).convert("L"))
    assert set(np.unique(values).tolist()) <= {0, 255}, "the masks are binary"
    return values == 255


def _read_latent(server, entry: dict, node: str) -> torch.Tensor:
    (saved,) = entry["outputs"][node]["latents"]
    return load_file(str(server.base_dir / saved["type"] / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _run(server, prompt: dict) -> dict:
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    return entry


def _check_swap(server, entry: dict, probes: dict, photos: dict) -> dict:
    """Invariants every head swap must satisfy; returns the saved images and masks."""
    out = _read_image(server, entry, probes["result"])
    body_photo = photos["body"]
    assert out.shape == body_photo.shape == (BODY_SIZE[1], BODY_SIZE[0], 3)
    for role, size in (("head", HEAD_SIZE), ("body", BODY_SIZE)):  # the parses ran on the photos themselves
        parsed = Image.open(server.output_files(entry, probes[f"parse_{role}"])[0])
        assert parsed.size == size
    head, body, transition = (
        _read_mask(server, entry, probes[n]) for n in ("head_mask", "body_mask", "transition_mask")
    )
    assert head.any() and body.any() and transition.any()
    assert not (head & body).any() and not (head & transition).any() and not (body & transition).any()
    assert (head | body | transition).all()
    aligned = _read_image(server, entry, probes["aligned"])
    # outside the transition band: the body photo and the aligned head, bit for bit
    assert np.array_equal(out[body], body_photo[body])
    assert np.array_equal(out[head], aligned[head])
    assert not np.array_equal(out[transition], body_photo[transition])  # the band is generated
    assert out[transition].std() > 0
    return {"out": out, "aligned": aligned, "head": head, "body": body, "transition": transition}


def test_sd15_template_swaps_the_head_end_to_end(comfy_server, photos, sd15_checkpoint):
    prompt, probes = with_drawn_layouts(_twin("headswap_sd15"))
    assert prompt[_node(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] == sd15_checkpoint
    prompt[_node(prompt, "HeadSwapSemanticMixingKSampler")]["inputs"]["steps"] = 2
    entry = _run(comfy_server, prompt)
    swap = _check_swap(comfy_server, entry, probes, photos)
    report = entry["outputs"][_node(prompt, "PreviewAny")]["text"][0]
    assert report.startswith("image 0: layout") and "head 192×225 → body 192×192" in report, report

    # Skin-tone matching is wired: without it (only Paste Back runs again) the neck inside the band changes
    # and nothing else does; with it the generated neck is closer to the colour of the head's face.
    paste = _node(prompt, "HeadSwapPasteBack")
    assert prompt[paste]["inputs"]["skin_tone"] > 0
    prompt[paste]["inputs"]["skin_tone"] = 0.0
    plain = _read_image(comfy_server, _run(comfy_server, prompt), probes["result"])
    neck = _read_mask(comfy_server, entry, probes["neck"]) & swap["transition"]
    face = _read_mask(comfy_server, entry, probes["head_skin"])
    assert neck.any() and face.any()
    assert np.array_equal(plain[~neck], swap["out"][~neck])
    assert not np.array_equal(plain[neck], swap["out"][neck])
    target = swap["aligned"][face].astype(np.float64).mean(0)
    matched = np.abs(swap["out"][neck].astype(np.float64).mean(0) - target).sum()
    unmatched = np.abs(plain[neck].astype(np.float64).mean(0) - target).sum()
    assert matched < unmatched, (matched, unmatched)


def test_hs_ldm_template_keeps_the_source_latents_exactly(comfy_server, photos, hs_ldm_checkpoint):
    """The paper's pipeline: the layout (converted to paper5) conditions the LDM, its VQ VAE encodes the sources."""
    prompt, probes = with_drawn_layouts(_twin("headswap_hs_ldm"))
    sampler = _node(prompt, "HeadSwapSemanticMixingKSampler")
    options = prompt[sampler]["inputs"]
    assert (options["cfg"], options["sampler_name"], options["scheduler"]) == (1.0, "ddim", "ddim_uniform")
    assert options["final_fusion"] is True and options["denoise"] == 1.0
    assert prompt[_node(prompt, "HeadSwapConvertLayout")]["inputs"]["label_set"] == "paper5"
    options["steps"] = 3
    for noise_mode in ("fresh", "shared"):  # the template's (paper-exact) mode first
        options["noise_mode"] = noise_mode
        entry = _run(comfy_server, prompt)
        _check_swap(comfy_server, entry, probes, photos)
        sampled = _read_latent(comfy_server, entry, probes["sampled"])
        assert sampled.shape == (1, 3, BODY_SIZE[1] // 4, BODY_SIZE[0] // 4)
        cells = torch.zeros(sampled.shape[-2:], dtype=torch.bool)
        for source in ("head", "body"):
            keep = torch.from_numpy(_read_mask(comfy_server, entry, probes[f"{source}_keep"]))
            latent = _read_latent(comfy_server, entry, probes[f"{source}_latent"])
            assert keep.shape == sampled.shape[-2:] and keep.any()
            assert torch.equal(sampled[..., keep], latent[..., keep]), (noise_mode, source)
            cells |= keep
        generated = sampled[..., ~cells]
        assert generated.numel() and torch.isfinite(generated).all()
        assert not torch.equal(generated, _read_latent(comfy_server, entry, probes["body_latent"])[..., ~cells])


def test_sd15_template_runs_as_shipped_with_the_random_parser(comfy_server, photos, sd15_checkpoint):
    """The twin as shipped (only 2 steps instead of 25): the random parser's layouts drive the whole chain.

    A random BiSeNet labels almost every pixel "face", so this swap is meaningless; it shows that the parses are
    wired into alignment, blending and calibration as the template says and that the graph runs through.
    """
    prompt = _twin("headswap_sd15")
    prompt[_node(prompt, "HeadSwapSemanticMixingKSampler")]["inputs"]["steps"] = 2
    entry = _run(comfy_server, prompt)
    assert entry["outputs"][_node(prompt, "PreviewAny")]["text"][0].startswith("image 0: layout")
    saved = _read_image(comfy_server, entry, _node(prompt, "SaveImage"))
    assert saved.shape == photos["body"].shape
