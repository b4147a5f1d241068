"""Bad and hostile input through a real ComfyUI server: every case gets a clear error naming the input, and the
next valid prompt runs. Also a soak (memory of the server process stays bounded) and interrupt-then-run.

One server (the session's ``comfy_server``), tiny inputs, one table of cases; docs/robustness.md lists them.
"""

from __future__ import annotations

import io as std_io
import json
import pickle
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from hs_testing.layouts import astronaut, grace_hopper, palette_png
from hs_testing.ldm import write_foreign_checkpoint
from hs_testing.parsing import FIXTURE_BISENET, fake_sd_checkpoint
from hs_testing.server import error_message

LDM = "bad_tiny_ldm.safetensors"
PARSER = "bad_bisenet.safetensors"
# Names of files a payload would create if a hostile pickle were ever unpickled (checked after each load).
PAYLOAD_MARKERS: list[Path] = []


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file exists afterwards only if the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_pickle(path: Path, marker: Path) -> None:
    PAYLOAD_MARKERS.append(marker)
    buffer = std_io.BytesIO()
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def bad(comfy_server, tiny_ldm, fixtures_dir):
    """Inputs of the matrix in the server's folders; returns the server."""
    server = comfy_server
    inp = server.input_dir
    body_photo, body_labels = astronaut()
    head_photo, head_labels = grace_hopper()
    small = (64, 64)

    def save_layout(labels: np.ndarray, name: str) -> None:
        Image.fromarray(palette_png(labels)).resize(small, Image.Resampling.NEAREST).save(inp / name)

    Image.fromarray(body_photo).resize(small).save(inp / "bad_body.png")
    Image.fromarray(head_photo).resize(small).save(inp / "bad_head.png")
    save_layout(body_labels, "bad_body_layout.png")
    save_layout(head_labels, "bad_head_layout.png")
    save_layout(np.zeros_like(head_labels), "bad_faceless_layout.png")  # background only: no face, no neck
    no_neck = np.where(head_labels == 3, 4, head_labels)  # neck painted as clothes (canonical8: 3 neck, 4 clothes)
    save_layout(no_neck, "bad_neckless_layout.png")
    Image.fromarray(np.full((4, 4), 9, dtype=np.uint8), mode="L").save(inp / "bad_nine.png")  # id 9: no such class
    Image.fromarray(np.zeros((1, 1), dtype=np.uint8), mode="L").save(inp / "bad_1x1.png")
    Image.fromarray(np.zeros((13, 7, 3), dtype=np.uint8)).save(inp / "bad_7x13.png")
    png = (inp / "bad_body_layout.png").read_bytes()
    (inp / "bad_truncated.png").write_bytes(png[: len(png) // 2])
    (inp / "bad_text.png").write_text("this is not an image\n")
    (inp / "bad_folder.png").mkdir()
    (server.base_dir / "outside.png").write_bytes(png)  # a real layout next to the input folder
    (inp / "bad_link.png").symlink_to(server.base_dir / "outside.png")
    (server.output_dir / "bad_out_layout.png").write_bytes(png)
    # models
    ldm_dir, parse_dir = server.models_dir("headswap_diffusion"), server.models_dir("headswap_parsing")
    shutil.copy(tiny_ldm["ema"], ldm_dir / LDM)
    shutil.copy(fixtures_dir / FIXTURE_BISENET, parse_dir / PARSER)
    data = tiny_ldm["ema"].read_bytes()
    for folder, full in ((ldm_dir, data), (parse_dir, (fixtures_dir / FIXTURE_BISENET).read_bytes())):
        (folder / "bad_empty.safetensors").write_bytes(b"")
        (folder / "bad_empty.ckpt").write_bytes(b"")
        (folder / "bad_cut.safetensors").write_bytes(full[: len(full) // 2])
        _hostile_pickle(folder / "bad_hostile.ckpt", server.base_dir / f"pwned_{folder.name}")
    write_foreign_checkpoint(ldm_dir / "bad_sd15.safetensors", "sd15")
    save_file(fake_sd_checkpoint(), str(parse_dir / "bad_sd15.safetensors"))
    (server.base_dir / "models" / "outside.safetensors").write_bytes(data)
    return server


# --------------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------------

LAYOUT = {"label_set": "canonical8", "decode": "auto"}
ALIGN = {"mode": "auto", "scale_min": 0.5, "scale_max": 2.0, "max_rotation": 0.0, "scale_nudge": 1.0, "offset_x": 0, "offset_y": 0}  # fmt: skip
BLEND = {"keep_body_background": True, "head_erosion": 0.004, "body_erosion": 0.004, "seam_band": 0.01}
MIX = {"noise_mode": "shared", "fusion_start": 0.0, "fusion_end": 1.0, "mask_dilation": "", "soft_masks": "blend", "final_fusion": True}  # fmt: skip
PASTE = {"blend": "feathered", "feather": 2, "skin_tone": 0.0}


def _set(prompt: dict, path: str, value) -> dict:
    node, name = path.split(".")
    prompt[node]["inputs"][name] = value
    return prompt


def load_layout(name: str = "bad_body_layout.png", **over) -> dict:
    return {
        "1": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": name, **LAYOUT, **over}},
        "2": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["1", 0], "opacity": 1.0}},
    }


def layout_tools(**over) -> dict:
    prompt = load_layout()
    prompt["3"] = {"class_type": "HeadSwapLayoutToMask", "inputs": {"layout": ["1", 0], "classes": "head"}}
    prompt["4"] = {"class_type": "HeadSwapConvertLayout", "inputs": {"layout": ["1", 0], "label_set": "paper5"}}
    prompt["5"] = {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["4", 0], "opacity": 1.0}}
    prompt["6"] = {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}}
    prompt["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return prompt


def stages(head_layout: str = "bad_head_layout.png", head: str = "bad_head.png") -> dict:
    """Neck Align → Layout Blend → Layout Inpaint → Semantic Calibration at 64²."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": head}},
        "3": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": head_layout, **LAYOUT}},
        "4": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "bad_body_layout.png", **LAYOUT}},
        "5": {"class_type": "HeadSwapNeckAlign", "inputs": {"head_image": ["1", 0], "head_layout": ["3", 0], "body_layout": ["4", 0], **ALIGN}},
        "6": {"class_type": "HeadSwapLayoutBlend", "inputs": {"head_layout": ["5", 1], "body_layout": ["4", 0], **BLEND}},
        "7": {"class_type": "HeadSwapLayoutInpaint", "inputs": {"layout": ["6", 0], "backend": "auto"}},
        "8": {"class_type": "HeadSwapSemanticCalibration", "inputs": {"layout": ["7", 0], "body_layout": ["4", 0], "head_mask": ["6", 1], "body_mask": ["6", 2], "latent_cell": 4, "min_region": 0.0005}},
        "9": {"class_type": "MaskToImage", "inputs": {"mask": ["8", 2]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }  # fmt: skip


def parse(model: str = PARSER, image: str = "bad_body.png", **over) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "HeadSwapParsingModelLoader", "inputs": {"model_name": model, "precision": "auto"}},
        "3": {"class_type": "HeadSwapFaceParse", "inputs": {"parser": ["2", 0], "image": ["1", 0], "mode": "whole image", "min_region_percent": 0.0, "crop_scale": 1.6, **over}},
        "4": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["3", 0], "opacity": 1.0}},
    }  # fmt: skip


def ldm(ckpt: str = LDM, head: str = "bad_head.png", body: str = "bad_body.png", sampler: str = "ksampler",
        steps: int = 2, head_keep: float | None = None, body_keep: float = 0.0) -> dict:  # fmt: skip
    """Tiny LDM: Encode Sources → Semantic-Mixing KSampler (or Guider + SamplerCustomAdvanced) → decode → Paste
    Back. Masks: Semantic Calibration of the 64² layouts, or solid masks when ``head_keep``/``body_keep``."""
    prompt = {
        "20": {"class_type": "HeadSwapDiffusionLoader", "inputs": {"ckpt_name": ckpt, "weights": "auto", "weight_dtype": "default", "quantize_on_decode": True}},
        "21": {"class_type": "LoadImage", "inputs": {"image": head}},
        "22": {"class_type": "LoadImage", "inputs": {"image": body}},
        "23": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "bad_body_layout.png", **LAYOUT}},
        "24": {"class_type": "HeadSwapConvertLayout", "inputs": {"layout": ["23", 0], "label_set": "paper5"}},
        "25": {"class_type": "HeadSwapLayoutConditioning", "inputs": {"layout": ["24", 0], "unknown_labels": "error"}},
        "26": {"class_type": "HeadSwapEncodeSources", "inputs": {"vae": ["20", 1], "head_image": ["21", 0], "head_mask": ["31", 0], "body_image": ["22", 0], "body_mask": ["32", 0]}},
        "29": {"class_type": "VAEDecode", "inputs": {"samples": ["27", 0], "vae": ["20", 1]}},
        "30": {"class_type": "HeadSwapPasteBack", "inputs": {"result": ["29", 0], "body_image": ["22", 0], "body_mask": ["32", 0], **PASTE}},
        "33": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}},
    }  # fmt: skip
    if head_keep is None:  # the layout stages' calibrated masks
        prompt.update(stages())
        prompt["26"]["inputs"].update(head_mask=["8", 0], body_mask=["8", 1])
        prompt["30"]["inputs"]["body_mask"] = ["8", 1]
    else:
        prompt["31"] = {"class_type": "SolidMask", "inputs": {"value": head_keep, "width": 64, "height": 64}}
        prompt["32"] = {"class_type": "SolidMask", "inputs": {"value": body_keep, "width": 64, "height": 64}}
    mix = {"head_latent": ["26", 0], "head_mask": ["26", 1], "body_latent": ["26", 2], "body_mask": ["26", 3], **MIX}
    if sampler == "ksampler":
        prompt["27"] = {"class_type": "HeadSwapSemanticMixingKSampler", "inputs": {
            "model": ["20", 0], "positive": ["25", 0], "negative": ["25", 1], **mix, "seed": 1, "steps": steps,
            "cfg": 1.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}}  # fmt: skip
    else:
        prompt["34"] = {"class_type": "HeadSwapSemanticMixGuider", "inputs": {"model": ["20", 0], "positive": ["25", 0], "negative": ["25", 1], **mix, "cfg": 1.0}}  # fmt: skip
        prompt["35"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        prompt["36"] = {"class_type": "BasicScheduler", "inputs": {"model": ["20", 0], "scheduler": "normal", "steps": steps, "denoise": 1.0}}  # fmt: skip
        prompt["37"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}}
        prompt["27"] = {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["37", 0], "guider": ["34", 0], "sampler": ["35", 0], "sigmas": ["36", 0], "latent_image": ["26", 2]}}  # fmt: skip
    return prompt


def generator_inpaint(model_name: str) -> dict:
    prompt = stages()
    prompt["30"] = {"class_type": "HeadSwapLayoutGeneratorLoader", "inputs": {"model_name": model_name}}
    prompt["7"]["inputs"]["generator"] = ["30", 0]
    return prompt


def save_ldm() -> dict:
    prompt = ldm()
    prompt["40"] = {"class_type": "HeadSwapSaveDiffusion", "inputs": {"model": ["20", 0], "vae": ["20", 1], "filename_prefix": "bad/ldm"}}  # fmt: skip
    return prompt


def mix_source() -> dict:
    prompt = ldm()
    prompt["41"] = {"class_type": "HeadSwapMixSource", "inputs": {"latent": ["26", 0], "mask": ["26", 1]}}
    prompt["27"]["inputs"]["sources"] = ["41", 0]
    return prompt


def resized(prompt: dict, node: str, width: int, height: int) -> str:
    """Insert an ImageScale of ``node``'s image; returns the new node id."""
    new = f"{node}9"
    prompt[new] = {"class_type": "ImageScale", "inputs": {"image": [node, 0], "upscale_method": "nearest-exact", "width": width, "height": height, "crop": "disabled"}}  # fmt: skip
    return new


def batched(prompt: dict, node: str, amount: int) -> str:
    new = f"{node}8"
    prompt[new] = {"class_type": "RepeatImageBatch", "inputs": {"image": [node, 0], "amount": amount}}
    return new


# --------------------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    prompt: dict
    expected: list[str]  # substrings of the error
    stage: str = "run"  # "validate": POST /prompt answers 400; "run": the prompt fails while it runs
    not_expected: list[str] = field(default_factory=list)


def _ldm_with(**changes) -> dict:
    prompt = ldm()
    for path, value in changes.items():
        _set(prompt, path.replace("__", "."), value)
    return prompt


def _case_list() -> list[Case]:
    cases = [
        # every combo with a bad value, refused before anything runs
        Case(
            "load_layout.label_set",
            load_layout(label_set="paper7"),
            ["label_set: 'paper7' is not one of the choices", "'canonical8'"],
            "validate",
        ),
        Case("load_layout.decode", load_layout(decode="rgb"), ["decode: 'rgb' is not one of the choices"], "validate"),
        Case(
            "convert_layout.label_set",
            _set(layout_tools(), "4.label_set", "paper6"),
            ["label_set: 'paper6'"],
            "validate",
        ),
        Case(
            "neck_align.mode",
            _set(stages(), "5.mode", "magic"),
            ["mode: 'magic' is not one of the choices of Neck Align"],
            "validate",
        ),
        Case(
            "layout_inpaint.backend",
            _set(stages(), "7.backend", "gan"),
            ["backend: 'gan' is not one of the choices"],
            "validate",
        ),
        Case(
            "parser_loader.precision",
            _set(parse(), "2.precision", "fp8"),
            ["precision: 'fp8' is not one of the choices"],
            "validate",
        ),
        Case(
            "face_parse.mode",
            _set(parse(), "3.mode", "tiles"),
            ["mode: 'tiles' is not one of the choices of Face Parse"],
            "validate",
        ),
        Case(
            "ldm_loader.weights",
            _ldm_with(**{"20__weights": "best"}),
            ["weights: 'best' is not one of the choices"],
            "validate",
        ),
        Case(
            "ldm_loader.weight_dtype", _ldm_with(**{"20__weight_dtype": "fp64"}), ["weight_dtype: 'fp64'"], "validate"
        ),
        Case(
            "layout_conditioning.unknown_labels",
            _ldm_with(**{"25__unknown_labels": "ignore"}),
            ["unknown_labels: 'ignore'"],
            "validate",
        ),
        Case(
            "ksampler.sampler_name",
            _ldm_with(**{"27__sampler_name": "bogus"}),
            ["sampler_name: 'bogus' is not one of the choices", "'euler'"],
            "validate",
        ),
        Case(
            "ksampler.scheduler",
            _ldm_with(**{"27__scheduler": "bogus"}),
            ["scheduler: 'bogus' is not one of the choices"],
            "validate",
        ),
        Case("ksampler.noise_mode", _ldm_with(**{"27__noise_mode": "pink"}), ["noise_mode: 'pink'"], "validate"),
        Case("ksampler.soft_masks", _ldm_with(**{"27__soft_masks": "smooth"}), ["soft_masks: 'smooth'"], "validate"),
        Case(
            "guider.noise_mode",
            _set(ldm(sampler="guider"), "34.noise_mode", "pink"),
            ["noise_mode: 'pink' is not one of the choices of Semantic-Mix Guider"],
            "validate",
        ),
        Case("guider.soft_masks", _set(ldm(sampler="guider"), "34.soft_masks", "x"), ["soft_masks: 'x'"], "validate"),
        Case(
            "paste_back.blend",
            _ldm_with(**{"30__blend": "laplace"}),
            ["blend: 'laplace' is not one of the choices of Paste Back"],
            "validate",
        ),
        # numbers out of range and text where a number belongs (core's own min/max check is replaced by ours)
        Case(
            "neck_align.scale_min",
            _set(stages(), "5.scale_min", 0.0),
            ["scale_min: 0.0 is smaller than the minimum 0.05"],
            "validate",
        ),
        Case("ksampler.steps", _ldm_with(**{"27__steps": 0}), ["steps: 0 is smaller than the minimum 1"], "validate"),
        Case(
            "calibration.latent_cell",
            _set(stages(), "8.latent_cell", 65),
            ["latent_cell: 65 is larger than the maximum 64"],
            "validate",
        ),
        Case(
            "ksampler.mask_dilation",
            _ldm_with(**{"27__mask_dilation": "3, x"}),
            ["'x' is not a whole number"],
            "validate",
        ),
        # a value typed in where a link belongs (a non-layout value through the API)
        Case(
            "layout_preview.layout",
            {"1": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": "a layout", "opacity": 1.0}}},
            ["layout: got the value 'a layout' typed in", "HEADSWAP_LAYOUT"],
            "validate",
        ),
        Case(
            "layout_to_mask.layout",
            {
                "1": {"class_type": "HeadSwapLayoutToMask", "inputs": {"layout": 5, "classes": "head"}},
                "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 0]}},
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            },
            ["layout: got the value '5' typed in", "HEADSWAP_LAYOUT"],
            "validate",
        ),
        # malformed POSE_KEYPOINT
        Case(
            "neck_align.head_pose.strings",
            _set(stages(), "5.head_pose", {"people": [{"pose_keypoints_2d": ["a", "b", "c"]}]}),
            ["head_pose: frame 0, person 0 has the keypoint value 'a'", "POSE_KEYPOINT"],
            "validate",
        ),
        Case(
            "neck_align.body_pose.people",
            _set(stages(), "5.body_pose", {"people": 5}),
            ["body_pose: frame 0 has 'people' of type int"],
            "validate",
        ),
        Case(
            "neck_align.head_pose.canvas",
            _set(stages(), "5.head_pose", {"people": [], "canvas_width": "wide"}),
            ["head_pose: frame 0 has canvas_width 'wide'"],
            "validate",
        ),
        # files: missing, outside the folders, not files, damaged
        Case(
            "load_layout.missing",
            load_layout("nothing_here.png"),
            ["image: 'nothing_here.png' is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.dotdot",
            load_layout("../outside.png"),
            ["image: '../outside.png' is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.absolute",
            load_layout("/etc/passwd"),
            ["image: '/etc/passwd' is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.absolute_missing",
            load_layout("/etc/no_such_file_here"),
            ["image: '/etc/no_such_file_here' is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.symlink_out",
            load_layout("bad_link.png"),
            ["image: 'bad_link.png' is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.annotated_escape",
            load_layout("../../outside.png [output]"),
            ["is not in the input folder"],
            "validate",
        ),
        Case(
            "load_layout.folder",
            load_layout("bad_folder.png"),
            ["image: 'bad_folder.png' is not in the input folder (or is not a file)"],
            "validate",
        ),
        Case(
            "load_layout.truncated",
            load_layout("bad_truncated.png"),
            ["image: 'bad_truncated.png' could not be read as an image", "Save the layout again"],
        ),
        Case(
            "load_layout.not_an_image",
            load_layout("bad_text.png"),
            ["image: 'bad_text.png' could not be read as an image"],
        ),
        Case(
            "load_layout.wrong_label_set",
            load_layout("bad_nine.png", label_set="paper5"),
            ["label values 9 are outside label set 'paper5'"],
        ),
        Case(
            "ldm_loader.missing",
            _ldm_with(**{"20__ckpt_name": "nothing.safetensors"}),
            [
                "ckpt_name: 'nothing.safetensors' is not in the headswap_diffusion model folder",
                "README section 'Models'",
            ],
            "validate",
        ),
        Case(
            "ldm_loader.dotdot",
            _ldm_with(**{"20__ckpt_name": "../outside.safetensors"}),
            ["ckpt_name: '../outside.safetensors' is not in the headswap_diffusion model folder"],
            "validate",
        ),
        Case(
            "ldm_loader.absolute",
            _ldm_with(**{"20__ckpt_name": "/etc/passwd"}),
            ["ckpt_name: '/etc/passwd' is not in the headswap_diffusion model folder"],
            "validate",
        ),
        Case(
            "parser_loader.missing",
            parse("nothing.pth"),
            ["model_name: 'nothing.pth' is not in the headswap_parsing model folder", "Face parsing models"],
            "validate",
        ),
        Case(
            "parser_loader.dotdot",
            parse("../headswap_diffusion/" + LDM),
            ["is not in the headswap_parsing model folder"],
            "validate",
        ),
        Case(
            "parser_loader.absolute", parse("/etc/passwd"), ["is not in the headswap_parsing model folder"], "validate"
        ),
        # model files: empty, truncated, another architecture, a hostile pickle
        Case(
            "ldm_loader.empty_safetensors",
            ldm("bad_empty.safetensors"),
            ["cannot read 'bad_empty.safetensors': the file is truncated or corrupted"],
            not_expected=["Traceback"],
        ),
        Case("ldm_loader.empty_ckpt", ldm("bad_empty.ckpt"), ["cannot read 'bad_empty.ckpt': the file is truncated"]),
        Case(
            "ldm_loader.truncated",
            ldm("bad_cut.safetensors"),
            ["cannot read 'bad_cut.safetensors'", "download it again"],
        ),
        Case(
            "ldm_loader.sd15",
            ldm("bad_sd15.safetensors"),
            ["'bad_sd15.safetensors' is a Stable Diffusion 1.x checkpoint"],
        ),
        Case(
            "ldm_loader.hostile_pickle",
            ldm("bad_hostile.ckpt"),
            ["'bad_hostile.ckpt' contains Python objects besides tensors", "never unpickles"],
        ),
        Case("parser_loader.empty", parse("bad_empty.safetensors"), ["could not be read as a weights file"]),
        Case("parser_loader.empty_ckpt", parse("bad_empty.ckpt"), ["could not be read as a weights file"]),
        Case("parser_loader.truncated", parse("bad_cut.safetensors"), ["could not be read as a weights file"]),
        Case("parser_loader.sd15", parse("bad_sd15.safetensors"), ["is not a face parsing model"]),
        Case("parser_loader.hostile_pickle", parse("bad_hostile.ckpt"), ["weights_only=True"]),
        # sizes: 1×1, odd, tiny faces, batch mismatches
        Case("neck_align.1x1_layout", stages(head_layout="bad_1x1.png", head="bad_1x1.png"), ["has no face"]),
        Case(
            "neck_align.faceless",
            _set(stages(head_layout="bad_faceless_layout.png"), "5.mode", "layout"),
            ["head_layout: image 0 has no face"],
        ),
        Case(
            "neck_align.image_layout_size", stages(head="bad_7x13.png"), ["head_image is 7×13 but head_layout is 64×64"]
        ),
        Case(
            "encode_sources.7x13",
            _ldm_with(
                **{
                    "26__head_image": ["219", 0],
                    "26__body_image": ["229", 0],
                    "26__head_mask": ["311", 0],
                    "26__body_mask": ["321", 0],
                }
            ),
            ["are 7×13 px", "cropped to 4×12 px", "multiple of 4 px"],
        ),
        Case(
            "encode_sources.1x1",
            _ldm_with(
                **{
                    "26__head_image": ["219", 0],
                    "26__body_image": ["229", 0],
                    "26__head_mask": ["311", 0],
                    "26__body_mask": ["321", 0],
                }
            ),
            ["are 1×1 px, smaller than one latent cell"],
        ),
        Case(
            "encode_sources.batch",
            _ldm_with(**{"26__head_image": ["218", 0], "26__body_image": ["228", 0]}),
            ["head_image", "body_image", "batch"],
        ),
        Case(
            "encode_sources.mask_size",
            _ldm_with(**{"26__head_mask": ["311", 0]}),
            ["head_mask is 7×13 but the images are 64×64"],
        ),
        Case(
            "paste_back.result_32px_smaller",
            _ldm_with(**{"30__result": ["299", 0]}),
            ["result is 32×32 but body_image is 64×64"],
        ),
        Case(
            "layout_preview.image_size", _set(parse(), "4.image", ["19", 0]), ["image is 32×32 but the layout is 64×64"]
        ),
        Case(
            "layout_conditioning.unknown", _ldm_with(**{"24__layout": ["6", 0]}), ["UNKNOWN pixels", "unknown_labels"]
        ),
        Case("mix_source.mask_size", _set(mix_source(), "41.mask", ["311", 0]), ["source 1 mask is 7×13"]),
        Case(
            "save_ldm.filename_prefix",
            _set(save_ldm(), "40.filename_prefix", "../../escape/ldm"),
            ["outside the output folder"],
        ),
        Case("layout_to_mask.classes", _set(layout_tools(), "3.classes", "wings"), ["wings"]),
        Case("layout_generator_loader.missing", generator_inpaint("nothing.safetensors"), ["model_name: 'nothing.safetensors' is not in the headswap_layout model folder"], "validate"),
        Case("layout_generator_loader.dotdot", generator_inpaint("../headswap_diffusion/" + LDM), ["is not in the headswap_layout model folder"], "validate"),
    ]  # fmt: skip
    return cases


def _wire(case: Case) -> Case:
    """Add the helper nodes some cases refer to (resized, batched and tiny images)."""
    prompt = case.prompt
    if case.id == "encode_sources.7x13":
        for node in ("21", "22"):
            resized(prompt, node, 7, 13)
        prompt["311"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 7, "height": 13}}
        prompt["321"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 7, "height": 13}}
    elif case.id == "encode_sources.1x1":
        for node in ("21", "22"):
            resized(prompt, node, 1, 1)
        prompt["311"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 1, "height": 1}}
        prompt["321"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 1, "height": 1}}
    elif case.id == "encode_sources.batch":
        batched(prompt, "21", 2)
        batched(prompt, "22", 3)
    elif case.id == "encode_sources.mask_size":
        prompt["311"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 7, "height": 13}}
    elif case.id == "paste_back.result_32px_smaller":
        resized(prompt, "29", 32, 32)
    elif case.id == "layout_preview.image_size":
        resized(prompt, "1", 32, 32)
        prompt["4"]["inputs"]["image"] = ["19", 0]
    elif case.id == "mix_source.mask_size":
        prompt["311"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 7, "height": 13}}
    return case


CASES = [_wire(c) for c in _case_list()]


def _valid_prompt(seed: int) -> dict:
    """A cheap valid prompt whose preview re-runs every time (its opacity changes)."""
    prompt = load_layout()
    prompt["2"]["inputs"]["opacity"] = round(random.Random(seed).uniform(0.05, 0.95), 4)
    return prompt


def test_the_matrix_covers_every_node(pack_nodes):
    used = {node["class_type"] for case in CASES for node in case.prompt.values()}
    missing = set(pack_nodes) - used
    assert not missing, f"nodes without a bad-input case: {sorted(missing)}"
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error_and_the_next_prompt_runs(bad, case):
    server = bad
    response = server.queue(case.prompt)
    if case.stage == "validate":
        # refused before anything runs: the whole prompt (400), or only the outputs that depend on the bad node
        # while the valid outputs of the same prompt still run (ComfyUI's partial execution)
        body = response.json()
        assert body.get("node_errors"), f"accepted: {response.text[:500]}"
        message = json.dumps(body["node_errors"], ensure_ascii=False)
        if response.status_code == 200:
            server.wait(body["prompt_id"], timeout=120)
    else:
        assert response.status_code == 200, f"refused at validation: {response.text[:2000]}"
        entry = server.wait(response.json()["prompt_id"], timeout=120)
        assert entry["status"]["status_str"] == "error", f"{case.id} ran without an error"
        message = error_message(entry)
    for text in case.expected:
        assert text in message, f"{text!r} not in {message[:3000]}"
    for text in case.not_expected:
        assert text not in message, message
    assert "/etc/passwd" not in message or "is not in" in message  # the path is only echoed, never its content
    assert "root:" not in message  # nothing of an outside file is shown
    for marker in PAYLOAD_MARKERS:
        assert not marker.exists(), f"a pickle payload ran: {marker}"
    entry = server.run(_valid_prompt(hash(case.id)), timeout=60)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert server.alive()


def test_outside_paths_are_refused_alike_whether_they_exist_or_not(bad):
    """The answer for an outside path never tells whether it exists."""

    def message(name: str) -> str:
        body = bad.queue(load_layout(name)).json()
        return json.dumps(body["node_errors"], ensure_ascii=False).replace(name, "NAME")

    assert message("/etc/passwd") == message("/etc/no_such_file_here") == message("../outside.png")
    assert message("../outside.png") == message("../no_such_file.png")


def test_valid_edge_inputs_run(bad):
    """Accepted edge cases: annotated names, a layout without a neck, empty and full keep masks, the guider,
    a further Mix Source, saving the model, and the LDM's info output."""
    server = bad
    for prompt in (
        load_layout("bad_body_layout.png [input]"),
        load_layout("bad_out_layout.png [output]"),
        stages(head_layout="bad_neckless_layout.png"),
        ldm(head_keep=0.0, body_keep=0.0),  # nothing kept: the whole image is generated
        ldm(head_keep=1.0, body_keep=1.0),  # everything kept: the sources come back
        ldm(sampler="guider"),
        mix_source(),
        save_ldm(),
    ):
        entry = server.run(prompt, timeout=180)
        assert entry["status"]["status_str"] == "success", error_message(entry)
    assert server.alive()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_soak_memory_stays_bounded(bad):
    """50 prompts through the layout stages and previews; after warm-up the server's resident memory may
    not keep growing (a leak of one 64² layout per prompt would add up)."""
    server = bad
    readings = []
    for i in range(50):
        prompt = stages()
        prompt["6"]["inputs"]["seam_band"] = round(0.005 + 0.0005 * i, 4)  # every stage after Blend re-runs
        entry = server.run(prompt, timeout=60)
        assert entry["status"]["status_str"] == "success", error_message(entry)
        readings.append(_rss_kib(server.process.pid))
    warm = readings[9]
    growth_mib = (max(readings[10:]) - warm) / 1024
    assert growth_mib < 64, f"resident memory grew by {growth_mib:.0f} MiB over 40 prompts: {readings}"


def test_interrupt_then_the_next_prompt_runs(bad):
    server = bad
    long_run = ldm(steps=5000)
    long_run["27"]["inputs"]["seed"] = random.randint(2, 10**6)
    response = server.queue(long_run)
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the sampler node is executing
        running = server.get("/queue").json()["queue_running"]
        if running and running[0][1] == prompt_id:
            time.sleep(1.0)
            break
        time.sleep(0.1)
    started = time.monotonic()
    assert requests.post(server.url + "/interrupt", timeout=10).status_code == 200
    entry = server.wait(prompt_id, timeout=60)
    assert time.monotonic() - started < 30
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    entry = server.run(ldm(steps=2), timeout=120)
    assert entry["status"]["status_str"] == "success", error_message(entry)


def test_pickle_payload_would_have_run(tmp_path):
    """The payload is real: plain unpickling creates the marker (so its absence above means something)."""
    marker = tmp_path / "ran"
    data = pickle.dumps(_Payload(marker))
    pickle.loads(data)  # noqa: S301 (the point of the test)
    assert marker.exists()
