"""The learned layout generator through a real ComfyUI server: a file exported by the training command is
loaded by Load Layout Generator and fills Layout Blend's holes on Grace Hopper's head over the astronaut."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.layout import labels_from_rgb
from hs_testing.layouts import astronaut, grace_hopper, palette_png
from hs_testing.server import error_message

ALIGN = {"mode": "auto", "scale_min": 0.5, "scale_max": 2.0, "max_rotation": 0.0, "scale_nudge": 1.0, "offset_x": 0, "offset_y": 0}  # fmt: skip
BLEND = {"keep_body_background": True, "head_erosion": 0.004, "body_erosion": 0.004, "seam_band": 0.01}


def write_inputs(server) -> None:
    body_photo, body_labels = astronaut()
    head_photo, head_labels = grace_hopper()
    Image.fromarray(head_photo).save(server.input_dir / "gen_grace.png")
    Image.fromarray(palette_png(head_labels)).save(server.input_dir / "gen_grace_layout.png")
    Image.fromarray(palette_png(body_labels)).save(server.input_dir / "gen_astronaut_layout.png")


def prompt(model_name: str) -> dict:
    load_layout = {"label_set": "canonical8", "decode": "auto"}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "gen_grace.png"}},
        "3": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "gen_grace_layout.png", **load_layout}},
        "4": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "gen_astronaut_layout.png", **load_layout}},
        "5": {"class_type": "HeadSwapNeckAlign", "inputs": {"head_image": ["1", 0], "head_layout": ["3", 0], "body_layout": ["4", 0], **ALIGN}},
        "6": {"class_type": "HeadSwapLayoutBlend", "inputs": {"head_layout": ["5", 1], "body_layout": ["4", 0], **BLEND}},
        "30": {"class_type": "HeadSwapLayoutGeneratorLoader", "inputs": {"model_name": model_name}},
        "7": {"class_type": "HeadSwapLayoutInpaint", "inputs": {"layout": ["6", 0], "backend": "auto", "generator": ["30", 0]}},
        "10": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["6", 0], "opacity": 1.0}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "gen_blended"}},
        "12": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["7", 0], "opacity": 1.0}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "gen_completed"}},
    }  # fmt: skip


def read_labels(path) -> np.ndarray:
    return labels_from_rgb(np.asarray(Image.open(path).convert("RGB")), CANONICAL, str(path)).numpy()


def test_trained_generator_fills_the_blend_through_the_server(comfy_server, trained_layout_generator):
    shutil.copy(trained_layout_generator, comfy_server.models_dir("headswap_layout") / "gen_tiny.safetensors")
    write_inputs(comfy_server)
    entry = comfy_server.run(prompt("gen_tiny.safetensors"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    blended = read_labels(comfy_server.output_files(entry, "11")[0])
    completed = read_labels(comfy_server.output_files(entry, "13")[0])
    holes = blended == 255
    assert holes.any() and not (completed == 255).any()
    assert np.array_equal(completed[~holes], blended[~holes])  # known labels never change


def test_a_file_that_is_no_generator_is_a_clear_error_and_the_server_keeps_serving(
    comfy_server, trained_layout_generator
):
    folder = comfy_server.models_dir("headswap_layout")
    (folder / "gen_broken.safetensors").write_bytes(b"\x00" * 64)
    write_inputs(comfy_server)
    entry = comfy_server.run(prompt("gen_broken.safetensors"))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "gen_broken.safetensors" in message and "cannot be read" in message, message
    assert comfy_server.alive()
    shutil.copy(trained_layout_generator, folder / "gen_ok.safetensors")
    entry = comfy_server.run(prompt("gen_ok.safetensors"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
