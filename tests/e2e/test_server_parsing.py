"""Face parsing through a real ComfyUI server: the fixture BiSeNet on a real photo, errors, the template."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.layout import labels_from_rgb
from comfyui_hs_diffusion.hs_models.parsing.labels import BISENET19_CLASSES, canonical_table
from hs_testing import PACK_DIR
from hs_testing.parsing import FIXTURE_BISENET, FIXTURE_EXPECTED, fake_sd_checkpoint, fixture_bisenet_state_dict
from hs_testing.server import error_message


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return dict(np.load(fixtures_dir / FIXTURE_EXPECTED))


@pytest.fixture(scope="module")
def parsing_folder(comfy_server, fixtures_dir, expected):
    from skimage import data

    folder = comfy_server.models_dir("headswap_parsing")
    shutil.copy(fixtures_dir / FIXTURE_BISENET, folder / "bisenet_fixture.safetensors")
    astronaut = data.astronaut()  # the photo the reference outputs were computed on
    assert np.array_equal(astronaut, expected["astronaut_uint8"])
    Image.fromarray(astronaut).save(comfy_server.input_dir / "astronaut.png")
    return folder


def _parse_prompt(model_name: str, image: str = "astronaut.png", mode: str = "whole image") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "HeadSwapParsingModelLoader", "inputs": {"model_name": model_name, "precision": "auto"}},
        "3": {"class_type": "HeadSwapFaceParse", "inputs": {"parser": ["2", 0], "image": ["1", 0], "mode": mode, "min_region_percent": 0.0, "crop_scale": 1.6}},
        "4": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["3", 0], "opacity": 0.5}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "e2e_parse"}},
        "6": {"class_type": "HeadSwapLayoutToMask", "inputs": {"layout": ["3", 0], "classes": "head"}},
        "7": {"class_type": "MaskToImage", "inputs": {"mask": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "e2e_head"}},
    }  # fmt: skip


def test_face_parsing_of_a_real_photo_matches_the_reference(comfy_server, parsing_folder, expected):
    entry = comfy_server.run(_parse_prompt("bisenet_fixture.safetensors"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    preview = np.asarray(Image.open(comfy_server.output_files(entry, "5")[0]).convert("RGB"))
    labels = labels_from_rgb(preview, CANONICAL, "saved preview")
    reference = canonical_table(BISENET19_CLASSES, "bisenet")[torch.from_numpy(expected["astronaut_argmax"]).long()][0]
    decided = ~torch.from_numpy(expected["astronaut_near_tie"][0])
    assert torch.equal(labels[decided], reference[decided])
    head = np.asarray(Image.open(comfy_server.output_files(entry, "8")[0]).convert("L")) > 127
    assert np.array_equal(head, np.isin(labels.numpy(), CANONICAL.group_ids("head")))
    assert entry["outputs"]["3"]["images"]  # the parse node shows its colour preview in the UI


def test_a_portrait_photo_of_another_size_is_parsed_at_its_own_size(comfy_server, parsing_folder):
    from matplotlib import cbook

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    hopper.save(comfy_server.input_dir / "grace_hopper.png")
    entry = comfy_server.run(_parse_prompt("bisenet_fixture.safetensors", "grace_hopper.png", mode="head crop"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    preview = Image.open(comfy_server.output_files(entry, "5")[0])
    assert preview.size == hopper.size  # 512 wide, 600 high: letterboxed for the network, mapped back
    labels = labels_from_rgb(np.asarray(preview.convert("RGB")), CANONICAL, "saved preview")
    head = np.asarray(Image.open(comfy_server.output_files(entry, "8")[0]).convert("L")) > 127
    assert np.array_equal(head, np.isin(labels.numpy(), CANONICAL.group_ids("head")))


def test_parsing_errors_are_clear_and_the_server_keeps_serving(comfy_server, parsing_folder):
    missing = comfy_server.queue(_parse_prompt("79999_iter.pth"))
    assert missing.status_code == 400
    assert "is not in the headswap_parsing model folder" in missing.text
    assert "Face parsing models" in missing.text
    save_file(fake_sd_checkpoint(), str(parsing_folder / "v1-5-pruned.safetensors"))
    entry = comfy_server.run(_parse_prompt("v1-5-pruned.safetensors"))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "'v1-5-pruned.safetensors' is not a face parsing model" in message
    assert "BiSeNet" in message and "SegFormer" in message
    entry = comfy_server.run(_parse_prompt("bisenet_fixture.safetensors"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert comfy_server.alive()


def test_face_parsing_template_runs(comfy_server, parsing_folder, fixtures_dir, expected):
    """The API twin of workflows/headswap_face_parsing.json, with the fixture saved as 79999_iter.pth."""
    sd = {k: v.float() if v.is_floating_point() else v for k, v in fixture_bisenet_state_dict(fixtures_dir).items()}
    torch.save(sd, parsing_folder / "79999_iter.pth")
    Image.fromarray(expected["astronaut_uint8"]).save(comfy_server.input_dir / "example.png")
    prompt = json.loads((PACK_DIR / "tests" / "e2e" / "prompts" / "headswap_face_parsing.api.json").read_text())
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert entry["outputs"]["4"]["images"] and entry["outputs"]["6"]["images"]
