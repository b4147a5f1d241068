"""The layout stages on real photos through a real ComfyUI server: Grace Hopper's head on the astronaut.

The photos ship inside registry packages (scikit-image, matplotlib); their layouts are drawn by hand in
``hs_testing.layouts`` since no parser is involved here.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, UNKNOWN_COLOR
from comfyui_hs_diffusion.hs_models.layout import labels_from_rgb
from hs_testing import PACK_DIR
from hs_testing.layouts import ID, astronaut, grace_hopper, palette_png
from hs_testing.server import error_message

ALIGN = {"mode": "auto", "scale_min": 0.5, "scale_max": 2.0, "max_rotation": 0.0, "scale_nudge": 1.0, "offset_x": 0, "offset_y": 0}  # fmt: skip


TEMPLATE_INPUTS = {
    "head": "head.png",
    "body": "body.png",
    "head_layout": "head_layout.png",
    "body_layout": "body_layout.png",
}


def write_inputs(server, prefix: str = "e2e_", names: dict | None = None) -> dict:
    """Save both photos and their palette layouts into the server's input folder."""
    body_photo, body_labels = astronaut()
    head_photo, head_labels = grace_hopper()
    names = names or {
        "head": f"{prefix}grace.png",
        "body": f"{prefix}astronaut.png",
        "head_layout": f"{prefix}grace_layout.png",
        "body_layout": f"{prefix}astronaut_layout.png",
    }
    Image.fromarray(head_photo).save(server.input_dir / names["head"])
    Image.fromarray(body_photo).save(server.input_dir / names["body"])
    Image.fromarray(palette_png(head_labels)).save(server.input_dir / names["head_layout"])
    Image.fromarray(palette_png(body_labels)).save(server.input_dir / names["body_layout"])
    return {**names, "body_labels": body_labels, "head_labels": head_labels}


def stages_prompt(names: dict) -> dict:
    load_layout = {"label_set": "canonical8", "decode": "auto"}
    blend = {"keep_body_background": True, "head_erosion": 0.004, "body_erosion": 0.004, "seam_band": 0.01}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": names["head"]}},
        "3": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": names["head_layout"], **load_layout}},
        "4": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": names["body_layout"], **load_layout}},
        "5": {"class_type": "HeadSwapNeckAlign", "inputs": {"head_image": ["1", 0], "head_layout": ["3", 0], "body_layout": ["4", 0], **ALIGN}},
        "6": {"class_type": "HeadSwapLayoutBlend", "inputs": {"head_layout": ["5", 1], "body_layout": ["4", 0], **blend}},
        "7": {"class_type": "HeadSwapLayoutInpaint", "inputs": {"layout": ["6", 0], "backend": "auto"}},
        "8": {"class_type": "HeadSwapSemanticCalibration", "inputs": {"layout": ["7", 0], "body_layout": ["4", 0], "head_mask": ["6", 1], "body_mask": ["6", 2], "latent_cell": 8, "min_region": 0.0005}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "e2e_aligned"}},
        "10": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["5", 1], "opacity": 1.0}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "e2e_aligned_layout"}},
        "12": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["7", 0], "opacity": 1.0}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "e2e_completed"}},
        "20": {"class_type": "PreviewAny", "inputs": {"source": ["5", 4]}},
    }  # fmt: skip
    for node, (source, slot) in {"14": ("8", 0), "16": ("8", 1), "18": ("8", 2)}.items():
        prompt[node] = {"class_type": "MaskToImage", "inputs": {"mask": [source, slot]}}
        prompt[str(int(node) + 1)] = {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": f"e2e_mask{node}"}}  # fmt: skip
    return prompt


def read_labels(path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return labels_from_rgb(rgb, CANONICAL, str(path)).numpy()


def read_mask(path) -> np.ndarray:
    values = np.asarray(Image.open(path).convert("L"))
    assert set(np.unique(values).tolist()) <= {0, 255}, "masks must be binary"
    return values == 255


def touches(a: np.ndarray, b: np.ndarray) -> bool:
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def test_grace_hoppers_head_on_the_astronaut_through_the_server(comfy_server):
    names = write_inputs(comfy_server)
    entry = comfy_server.run(stages_prompt(names))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    report = entry["outputs"]["20"]["text"][0]
    assert report.startswith("image 0: layout (face widths)"), report  # the astronaut's neck is hidden
    assert "head 512×600 → body 512×512" in report

    aligned = np.asarray(Image.open(comfy_server.output_files(entry, "9")[0]).convert("RGB"))
    assert aligned.shape == (512, 512, 3)
    # the aligned layout: Grace's chin sits on the astronaut's chin, and her face has the astronaut's face width
    aligned_rgb = np.asarray(Image.open(comfy_server.output_files(entry, "11")[0]).convert("RGB"))
    warped = labels_from_rgb(aligned_rgb, CANONICAL, "aligned").numpy()
    face = warped == ID["face"]
    body_face = names["body_labels"] == ID["face"]
    assert abs(int(np.nonzero(face.any(1))[0].max()) - int(np.nonzero(body_face.any(1))[0].max())) <= 1
    assert abs(int(face.any(0).sum()) - int(body_face.any(0).sum())) <= 3
    assert (warped == 255).any() and (aligned_rgb[warped == 255] == UNKNOWN_COLOR).all()  # outside the photo
    assert aligned[face].mean() > 60  # real pixels of her face, not the black outside

    completed = read_labels(comfy_server.output_files(entry, "13")[0])
    assert not (completed == 255).any()
    neck = completed == ID["neck"]
    assert neck.any() and touches(neck, completed == ID["face"]) and touches(neck, completed == ID["clothes"])

    head, body, transition = (read_mask(comfy_server.output_files(entry, n)[0]) for n in ("15", "17", "19"))
    assert not (head & body).any() and (head | body | transition).all()
    assert not (head & transition).any() and not (body & transition).any()
    assert np.isin(warped[head], CANONICAL.group_ids("head")).all()
    assert np.isin(names["body_labels"][body], CANONICAL.group_ids("body") + [ID["background"]]).all()
    assert transition[neck].all()
    # the astronaut's own hair outside the new head is regenerated, never kept
    old_hair = (names["body_labels"] == ID["hair"]) & ~np.isin(warped, CANONICAL.group_ids("head"))
    assert old_hair.any() and not body[old_hair].any() and not head[old_hair].any()


def test_a_faceless_head_layout_is_a_clear_error_and_the_server_keeps_serving(comfy_server):
    names = write_inputs(comfy_server, prefix="e2e_bad_")
    labels = names["head_labels"].copy()
    labels[labels == ID["face"]] = ID["hair"]
    Image.fromarray(palette_png(labels)).save(comfy_server.input_dir / names["head_layout"])
    entry = comfy_server.run(stages_prompt(names))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "head_layout: image 0 has no face" in message, message
    assert comfy_server.alive()
    good = write_inputs(comfy_server, prefix="e2e_good_")
    entry = comfy_server.run(stages_prompt(good))
    assert entry["status"]["status_str"] == "success", error_message(entry)


def test_mismatched_layout_and_image_is_named(comfy_server):
    names = write_inputs(comfy_server, prefix="e2e_size_")
    prompt = stages_prompt(names)
    prompt["1"]["inputs"]["image"] = names["body"]  # 512×512 photo with Grace's 512×600 layout
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert "head_image is 512×512 but head_layout is 512×600" in error_message(entry)
    assert comfy_server.alive()


def test_layout_stages_template_runs_on_the_photos(comfy_server):
    """workflows/headswap_layout_stages.json (through its API twin) on Grace Hopper and the astronaut."""
    write_inputs(comfy_server, names=TEMPLATE_INPUTS)  # the file names the template's loaders show
    twin = json.loads((PACK_DIR / "tests" / "e2e" / "prompts" / "headswap_layout_stages.api.json").read_text())
    entry = comfy_server.run(twin)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert entry["outputs"]["6"]["text"][0].startswith("image 0: layout")
    composite = np.asarray(Image.open(comfy_server.output_files(entry, "13")[0]).convert("RGB"))
    transition = read_mask(comfy_server.output_files(entry, "14")[0])
    body_photo, _ = astronaut()
    # the preview pastes only the kept head: the body photo is untouched wherever pixels are generated
    assert (composite[transition] == body_photo[transition]).all()
    assert (composite != body_photo).any(axis=-1).sum() > 5000  # and the head did land
    for node in ("8", "10"):
        assert entry["outputs"][node]["images"]
